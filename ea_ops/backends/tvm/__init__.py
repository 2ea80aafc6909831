"""The TVM backend: EA-t kernels written as TIR, scheduled per target, compiled with LLVM (CPU) or CUDA.

Submodules import ``tvm`` when used; ``import ea_ops`` never does. The dispatch entry point is
``ea_ops.backends.tvm.backend``.
"""
