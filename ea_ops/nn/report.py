"""``accuracy_report(model)``: what every ``ElementwiseAttention`` of a model has tracked, and its predicted error."""

from __future__ import annotations

import torch

from .accuracy import AccuracyReport
from .layer import ElementwiseAttention


def accuracy_report(model: torch.nn.Module) -> AccuracyReport:
    """One :class:`~ea_ops.nn.LayerAccuracy` per ``ElementwiseAttention`` in ``model`` (itself included), in module
    order, named by their module path. Layers that have not tracked anything (``updates == 0``; tracking runs in
    training mode) report ``nan`` ranges and errors. ``print(report)`` gives a table."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return AccuracyReport(m.accuracy(name or type(m).__name__) for name, m in model.named_modules()
                          if isinstance(m, ElementwiseAttention))
