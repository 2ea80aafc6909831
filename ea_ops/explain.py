"""``explain_backend``: which backend and schedule a call gets, and why (``ea-ops info --explain``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import checks, dispatch


@dataclass
class Explanation:
    """The answer of ``explain_backend``; ``str()`` gives it as text, ``as_dict()`` as JSON-ready data."""

    backend: str
    via: str  # "argument", "EA_OPS_BACKEND" or "auto"
    call: dict
    passed: dict[str, str] = field(default_factory=dict)  # backend -> why auto did not take it
    schedule: dict = field(default_factory=dict)  # the backend's own account (``explain`` of its module)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "via": self.via, "call": self.call, "passed": self.passed,
                "schedule": self.schedule}

    def __str__(self) -> str:
        c = self.call
        shape = "x".join(str(s) for s in c["shape"])
        lines = [f"{c['kind']} {shape} {c['dtype']} on {c['device']}, order {c['order']}, "
                 f"{'causal' if c['causal'] else 'non-causal'}{', with gradients' if c['needs_grad'] else ''}",
                 f"  backend: {self.backend} (chosen by {self.via})"]
        for name, why in self.passed.items():
            lines.append(f"  not {name}: {why}")
        kernels = self.schedule.get("kernels", {})
        for kernel, entry in kernels.items():
            cfg = " ".join(f"{k}={v}" for k, v in entry.get("config", {}).items())
            line = f"  {kernel}: {entry.get('source', '?')} schedule [{cfg}]"
            rec = entry.get("record")
            if rec:
                line += f" from {rec['fingerprint']} (T bucket {rec['T_bucket']})"
            lines.append(line)
        for key, val in self.schedule.items():
            if key != "kernels":
                lines.append(f"  {key}: {val}")
        return "\n".join(lines)


def explain_backend(q: torch.Tensor, *, order: int = 6, causal: bool = True, needs_grad: bool = False,
                    backend: str = "auto") -> Explanation:
    """Which backend ``ea_attention(q, ...)`` (``q [B, T, H, D]``) or ``ea_recurrent_step(q_t, ...)``
    (``q_t [B, H, D]``) would run on with these arguments, and with which schedule; nothing is computed.

    Raises like the operators do: ``ValueError``/``TypeError`` for bad arguments, ``BackendUnavailableError``
    when the backend asked for (argument or ``EA_OPS_BACKEND``) cannot run the call.
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.dim() not in (3, 4):
        raise ValueError(f"q must have shape [B, T, H, D] (attention) or [B, H, D] (a step), got {tuple(q.shape)}")
    if q.dtype not in checks.FLOAT_DTYPES:
        raise TypeError(f"q must be float16, bfloat16, float32 or float64, got {q.dtype}")
    order = checks.check_order(order)
    causal = checks.check_flag(causal, "causal")
    needs_grad = checks.check_flag(needs_grad, "needs_grad")
    backend = checks.check_backend(backend)
    step = q.dim() == 3
    if step and not causal:
        raise ValueError("a step (q of shape [B, H, D]) is causal: pass causal=True")
    if q.dtype == torch.float64 and backend not in ("auto", "torch"):
        raise TypeError(f"float64 inputs run on the torch backend only, got backend={backend!r}")
    choice = dispatch.choose(backend, q, causal=causal, order=order, needs_grad=needs_grad)
    mod = dispatch.load(choice.backend)
    account = getattr(mod, "explain", None)
    schedule = account(q, order=order, causal=causal, needs_grad=needs_grad) if account else {}
    call = {"kind": "step" if step else "attention", "shape": list(q.shape),
            "dtype": str(q.dtype).removeprefix("torch."), "device": str(q.device), "order": order,
            "causal": causal, "needs_grad": needs_grad, "backend": backend}
    return Explanation(choice.backend, choice.via, call, choice.passed, schedule)
