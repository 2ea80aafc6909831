"""The Taylor feature maps shared by every backend (docs/math.md, symmetric form).

``f_n(x) = (sqrt(2) x)^n / sqrt(n!)`` so that ``f_n(x) f_n(y) = (2xy)^n / n!``: sum over ``n <= t`` is the
Taylor polynomial ``P_t(2xy)``. Built by the recurrence ``f_n = f_{n-1} * sqrt(2) x / sqrt(n)`` so no
factorial or power is ever formed (no overflow before the value itself overflows).
"""

from __future__ import annotations

import math

import torch

SQRT2 = math.sqrt(2.0)


def features(x: torch.Tensor, order: int) -> torch.Tensor:
    """``[..., ] -> [..., t+1]``: ``f_n(x)`` for ``n = 0..t``."""
    out = [torch.ones_like(x)]
    for n in range(1, order + 1):
        out.append(out[-1] * x * (SQRT2 / math.sqrt(n)))
    return torch.stack(out, dim=-1)


def features_grad(f: torch.Tensor) -> torch.Tensor:
    """``d f_n / dx = sqrt(2 n) f_{n-1}(x)``, from the features ``f`` of ``x``: ``[..., t+1] -> [..., t+1]``."""
    order = f.shape[-1] - 1
    coef = torch.sqrt(2.0 * torch.arange(1, order + 1, dtype=f.dtype, device=f.device))
    return torch.cat([torch.zeros_like(f[..., :1]), f[..., :-1] * coef], dim=-1)


def taylor_exp(z: torch.Tensor, order: int) -> torch.Tensor:
    """``P_t(z) = sum_{n<=t} z^n / n!`` by the nested form ``1 + z(1 + z/2(1 + ... (1 + z/t)))``.

    ``order = -1`` gives 0 (the derivative of ``P_0``).
    """
    if order < 0:
        return torch.zeros_like(z)
    p = torch.ones_like(z)
    for n in range(order, 0, -1):
        p = 1 + p * z / n
    return p
