"""How far to trust EA-t: mpmath references, proven and measured error bounds, order selection by error
budget, and the stability / spikiness report (``ea-ops report``, ``ea-ops select-order``).

Needs the ``analysis`` extra (mpmath, scipy, matplotlib) only for the references and the report's plots;
the bounds and ``select_order`` need torch alone.
"""

from .bounds import posterior_bound, realised_error, two_key_construction, worst_case_error
from .dense import dense_attention
from .select import BudgetUnreachable, OrderChoice, load_sample, select_order
from .taylor import cancellation, log_r, min_taylor_even, r_ratio, taylor_poly
from .unstabilised import unstabilised_attention

__all__ = [
    "BudgetUnreachable",
    "OrderChoice",
    "cancellation",
    "dense_attention",
    "load_sample",
    "log_r",
    "min_taylor_even",
    "posterior_bound",
    "r_ratio",
    "realised_error",
    "select_order",
    "taylor_poly",
    "two_key_construction",
    "unstabilised_attention",
    "worst_case_error",
]
