/* Peak AVX-512 fused multiply-add throughput of one core: the arithmetic ceiling of the TVM CPU kernels.
 *
 *   cc -O3 -funroll-loops -mavx512f -o /tmp/cpu_fma_peak scripts/cpu_fma_peak.c && /tmp/cpu_fma_peak
 *
 * Twelve independent chains hide the FMA latency; the result prints zmm FMAs per second per core (each
 * is 16 float32 lanes). README ("CPU speed") compares it with the forward kernel's instruction count.
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

int main(void) {
    __m512 a[12];
    const __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(0.001f);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    const long n = 200000000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long it = 0; it < n; it++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    float sink = 0.0f;
    for (int i = 0; i < 12; i++) sink += _mm512_reduce_add_ps(a[i]);
    printf("zmm FMA per second per core: %.3g (float32 lanes: %.3g)  [checksum %g]\n",
           (double)n * 12 / s, (double)n * 12 * 16 / s, (double)sink);
    return 0;
}
