"""Context parallelism, measured: bytes each rank sends for one forward and backward against ring attention's,
and the time of a training step on W gloo ranks against one process on the same cores.

``python -m schedules.bench.context_parallel --out DIR`` starts the ranks itself (on 127.0.0.1, each with a
time limit) and writes ``DIR/context_parallel.json`` and a table on stdout.

- *Bytes*: every rank runs ``ea_ops.distributed.ea_attention_cp`` forward and backward on its slice, and,
  beside it, the exchange ring attention makes: the forward passes each rank's ``K, V`` around the ring
  (``W - 1`` hops), the backward ``K, V`` and their gradients again (the attention math itself is left out:
  only the traffic is measured). Two counts each: what the calls handed to the collectives (logical bytes,
  ``ea_ops.distributed.bytes_sent`` and the sends' sizes), and what crossed the loopback interface
  (``tx_bytes`` of ``lo`` in ``/proc/net/dev``, over all ranks, divided by W: TCP headers and the barriers
  included).
- *Time*: the median of the steps (forward and backward of ``ea_attention_cp``, ``backend`` as given) on W
  ranks of one thread each against ``ea_attention`` on the whole sequence in one process with W threads.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

LENGTHS = (4096, 16384, 65536, 262144, 1048576)


def _lo_tx() -> int:
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[8])
    return 0


def _ring(t: torch.Tensor, dist, rank: int, world: int) -> int:
    """Pass ``t`` around the ring ``W - 1`` times (what ring attention sends for it); bytes this rank sent."""
    buf, sent = t.clone(), 0
    for _ in range(world - 1):
        recv = torch.empty_like(buf)
        ops = [dist.P2POp(dist.isend, buf, (rank + 1) % world), dist.P2POp(dist.irecv, recv, (rank - 1) % world)]
        for req in dist.batch_isend_irecv(ops):
            req.wait()
        sent += buf.numel() * buf.element_size()
        buf = recv
    return sent


def _rank_main(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    import ea_ops
    from ea_ops import distributed

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = []
    try:
        B, H, D = args.bytes_shape
        for T in args.lengths:
            n = T // world
            q, k, v = (torch.randn(B, n, H, D) * 0.5 for _ in range(3))
            leaves = [t.requires_grad_() for t in (q, k, v)]
            for kind in ("ea_cp", "ring"):
                dist.barrier()
                lo0 = _lo_tx()
                distributed.reset_bytes_sent()
                if kind == "ea_cp":
                    o, _ = distributed.ea_attention_cp(*leaves, order=6, backend=args.backend)
                    o.sum().backward()
                    logical = sum(distributed.bytes_sent().values())
                else:  # forward: K, V around the ring; backward: K, V and dK, dV
                    logical = sum(_ring(t, dist, rank, world) for t in (k, v, k, v, k, v))
                dist.barrier()
                lo = _lo_tx() - lo0
                rows.append({"what": "bytes", "kind": kind, "T": T, "B": B, "H": H, "D": D, "rank": rank,
                             "logical_bytes": logical, "loopback_bytes_all_ranks": lo})
        B, H, D = args.time_shape
        T = args.time_length
        n = T // world
        q, k, v = (torch.randn(B, n, H, D) * 0.5 for _ in range(3))
        leaves = [t.requires_grad_() for t in (q, k, v)]
        times = []
        for i in range(args.warmup + args.steps):
            dist.barrier()
            t0 = time.perf_counter()
            o, _ = distributed.ea_attention_cp(*leaves, order=6, backend=args.backend)
            o.sum().backward()
            dist.barrier()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        rows.append({"what": "time", "kind": "ea_cp", "T": T, "B": B, "H": H, "D": D, "rank": rank,
                     "world": world, "median_s": statistics.median(times), "samples": len(times)})
        del ea_ops
    finally:
        dist.destroy_process_group()
    print(json.dumps(rows))


def _single(args: argparse.Namespace) -> dict:
    """``ea_attention`` on the whole sequence in this process, with W threads."""
    import ea_ops

    torch.set_num_threads(args.world)
    B, H, D = args.time_shape
    T = args.time_length
    q, k, v = (torch.randn(B, T, H, D).mul_(0.5).requires_grad_() for _ in range(3))
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        o, _ = ea_ops.ea_attention(q, k, v, order=6, backend=args.backend)
        o.sum().backward()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return {"what": "time", "kind": "one_process", "T": T, "B": B, "H": H, "D": D, "threads": args.world,
            "median_s": statistics.median(times), "samples": len(times)}


def _spawn(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(args.world),
           "OMP_NUM_THREADS": "1", "TVM_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    procs = [subprocess.Popen([sys.executable, "-m", "schedules.bench.context_parallel", "--rank-main", *argv],
                              env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(args.world)]
    deadline = time.monotonic() + args.limit_s
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            raise RuntimeError(f"a rank exited {p.returncode}:\n{err[-3000:]}")
    return [row for out, _ in outs for row in json.loads(out.strip().splitlines()[-1])]


def _table(rows: list[dict], world: int) -> str:
    lines = [f"bytes sent per rank, forward + backward, {world} ranks (logical / over loopback)", "",
             "| T | EA context parallel | ring attention | ring / EA |", "|---|---|---|---|"]
    by = {}
    for r in rows:
        if r["what"] == "bytes" and r["rank"] == 0:
            by.setdefault(r["T"], {})[r["kind"]] = r
    for T, kinds in sorted(by.items()):
        ea, ring = kinds["ea_cp"], kinds["ring"]
        fmt = lambda r: f"{r['logical_bytes'] / 1e6:.3f} MB / {r['loopback_bytes_all_ranks'] / world / 1e6:.3f} MB"  # noqa: E731
        lines.append(f"| {T} | {fmt(ea)} | {fmt(ring)} | {ring['logical_bytes'] / ea['logical_bytes']:.0f}x |")
    cp = max((r for r in rows if r["what"] == "time" and r["kind"] == "ea_cp"), key=lambda r: r["median_s"])
    one = next(r for r in rows if r["kind"] == "one_process")
    lines += ["", f"step time (forward + backward), B{one['B']} T{one['T']} H{one['H']} D{one['D']} order 6: "
              f"{world} ranks x 1 thread {cp['median_s'] * 1e3:.1f} ms (slowest rank's median), one process x "
              f"{world} threads {one['median_s'] * 1e3:.1f} ms: ratio {cp['median_s'] / one['median_s']:.2f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m schedules.bench.context_parallel", description=__doc__.split("\n")[0])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=list(LENGTHS))
    p.add_argument("--bytes-shape", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 32],
                   help="B,H,D of the byte counts (the states' size does not depend on T)")
    p.add_argument("--time-shape", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64])
    p.add_argument("--time-length", type=int, default=16384)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--backend", default="auto")
    p.add_argument("--limit-s", type=float, default=900.0, help="time limit of the ranks")
    p.add_argument("--out", default=None, help="folder for context_parallel.json")
    p.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rank_main:
        _rank_main(args)
        return 0
    rows = _spawn(args, [a for a in argv if a != "--rank-main"])
    rows.append(_single(args))
    text = _table(rows, args.world)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "context_parallel.json.tmp"
        tmp.write_text(json.dumps({"rows": rows, "table": text}, indent=1))
        os.replace(tmp, out / "context_parallel.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
