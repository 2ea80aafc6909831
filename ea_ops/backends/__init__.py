"""The backends, one subpackage each with one shape (docs/design.md): ``backend.py`` (the dispatch
protocol of ``ea_ops.dispatch``), ``ops.py`` (autograd / custom ops), kernels in files named for the target."""
