"""Layers: ``ElementwiseAttention`` (projections, q/k normalisation, padding, GQA, prefill and decode), its
pure-torch reference, and the accuracy tracking that says how exact each layer's EA-t is (docs/models.md)."""

from .accuracy import (
    AccuracyReport,
    EAAccuracyWarning,
    LayerAccuracy,
    auto_scale,
    predicted_error,
    worst_case_bound,
)
from .layer import ElementwiseAttention, ElementwiseAttentionReference, padding_segments, rotary
from .report import accuracy_report

__all__ = [
    "AccuracyReport",
    "EAAccuracyWarning",
    "ElementwiseAttention",
    "ElementwiseAttentionReference",
    "LayerAccuracy",
    "accuracy_report",
    "auto_scale",
    "padding_segments",
    "predicted_error",
    "rotary",
    "worst_case_bound",
]
