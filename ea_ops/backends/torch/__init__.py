"""The torch backend: pure PyTorch on any device, the reference of every kernel."""
