"""The Triton backend of ea-ops: GPU kernels (``kernels``), their launch code (``launch``, ``plan``), the
configuration chosen per call (``configs``, tuned records keyed by ``target.fingerprint``), the PyTorch custom
ops (``ops``) and the dispatch interface (``backend``). Importing this package imports nothing heavy; Triton is
imported with ``kernels``. CPU tensors run the same kernels under ``TRITON_INTERPRET=1`` (set before Triton is
imported)."""
