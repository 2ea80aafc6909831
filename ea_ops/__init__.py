"""ea-ops: element-wise attention (G. Feng, arXiv:2501.05730) with torch, TVM and Triton backends."""

from .api import ea_attention, ea_attention_exact, ea_recurrent_step
from .decode import EADecoder
from .domain import finite_radius
from .errors import BackendUnavailableError, KernelPackError
from .explain import Explanation, explain_backend
from .kernel_packs import load_kernels
from .state import EAState

__version__ = "0.1.0"
__all__ = [
    "BackendUnavailableError",
    "EADecoder",
    "EAState",
    "Explanation",
    "KernelPackError",
    "__version__",
    "ea_attention",
    "ea_attention_exact",
    "ea_recurrent_step",
    "explain_backend",
    "finite_radius",
    "load_kernels",
]
