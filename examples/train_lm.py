"""Train a tiny EA language model on the CPU, generate text from its state, and compare decoding speed with the
same model using softmax attention and a KV cache (transformers' Llama at the same sizes).

Data: the repository's own Markdown (README.md, docs/*.md, CONTRIBUTING.md), character by character.

    python examples/train_lm.py            # about 3 minutes on 2 cores
    python examples/train_lm.py --quick    # under a minute (make demo)

Needs the hf extra (transformers). Prints the loss, the layers' accuracy report (ea_ops.nn.accuracy_report), a
sample generated with the EACache, and tokens/s of greedy decoding for EA and for softmax + KV cache.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import ea_ops
from ea_ops.hf import EAConfig, EAForCausalLM
from ea_ops.nn import accuracy_report

ROOT = Path(__file__).resolve().parents[1]


def corpus() -> str:
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n\n".join(p.read_text(encoding="utf-8") for p in files if p.is_file())


class Chars:
    """A character vocabulary (id 0 is padding)."""

    def __init__(self, text: str) -> None:
        self.itos = ["<pad>", *sorted(set(text))]
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    def encode(self, s: str) -> torch.Tensor:
        return torch.tensor([self.stoi.get(c, self.stoi[" "]) for c in s], dtype=torch.long)

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.itos[i] for i in ids.tolist() if i > 0)


def batches(data: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    while True:
        start = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        yield torch.stack([data[s:s + seq] for s in start.tolist()])


def softmax_twin(cfg: EAConfig):
    """The same sizes with softmax attention (SDPA), RoPE and a KV cache: transformers' Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    lcfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
                       num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
                       max_position_embeddings=8192, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    lcfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(lcfg).eval()


@torch.no_grad()
def decode_speed(model, prompt: torch.Tensor, new: int) -> float:
    """Greedy tokens/s of ``generate`` after the prompt (prefill timed apart and subtracted)."""
    kw = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    model.generate(prompt, max_new_tokens=2, **kw)  # warm-up (kernels, allocations)
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=1, **kw)
    t1 = time.perf_counter()
    model.generate(prompt, max_new_tokens=new + 1, **kw)
    t2 = time.perf_counter()
    return new / max((t2 - t1) - (t1 - t0), 1e-9)


def train(model, data: torch.Tensor, steps: int, batch: int, seq: int, seed: int, name: str) -> float:
    """AdamW with warm-up and cosine decay on random windows of ``data``; the mean loss of the last 10% of steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(
        math.pi * min(s, steps) / steps)))
    it = batches(data, batch, seq, torch.Generator().manual_seed(seed))
    model.train()
    t0, tail = time.perf_counter(), []
    for step in range(1, steps + 1):
        ids = next(it)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step > steps - max(1, steps // 10):
            tail.append(loss.item())
        if step == 1 or step % max(1, steps // 8) == 0 or step == steps:
            el = time.perf_counter() - t0
            print(f"{name}: step {step:4d}  loss {loss.item():.3f}  ({el:.0f} s, "
                  f"{step * batch * seq / el:.0f} tokens/s)")
    model.eval()
    return sum(tail) / len(tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short run (make demo)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--backend", default="auto", help="ea_ops backend (auto: TVM on CPU when installed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--order", type=int, default=6, help="EA order")
    p.add_argument("--qk-norm", default="rms", choices=["rms", "rms_unbounded", "none"])
    p.add_argument("--error-budget", type=float, default=1e-3, help="what scale='auto' and the tracker aim at")
    p.add_argument("--train-softmax", action="store_true", help="also train the softmax twin on the same batches "
                   "and compare the losses")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per speed measurement "
                   "(default 64, --quick 32)")
    p.add_argument("--contexts", default=None, help="prompt lengths of the speed comparison (default 128,1024,4096; "
                   "--quick 128,1024)")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    steps = args.steps or (60 if args.quick else 400)
    batch, seq = (8, 64) if args.quick else (16, 128)

    text = corpus()
    vocab = Chars(text)
    data = vocab.encode(text)
    cfg = EAConfig(vocab_size=len(vocab.itos), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, ea_order=args.order, ea_backend=args.backend, pad_token_id=0,
                   ea_qk_norm=None if args.qk_norm == "none" else args.qk_norm, ea_error_budget=args.error_budget)
    model = EAForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"corpus: {len(text)} characters, vocab {len(vocab.itos)}; model: {n_params / 1e3:.0f}k parameters, "
          f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, heads {cfg.num_attention_heads} "
          f"(kv {cfg.num_key_value_heads}), EA-{cfg.ea_order}, qk_norm {cfg.ea_qk_norm!r}, scale "
          f"{model.model.layers[0].attn.scale:.3g} (auto, error budget {cfg.ea_error_budget:g}), "
          f"backend {args.backend!r}")

    ea_loss = train(model, data, steps, batch, seq, args.seed, "EA")
    print("\naccuracy of each EA layer over training (ea_ops.nn.accuracy_report):")
    print(accuracy_report(model))

    prompt = vocab.encode("Element-wise attention ")[None]
    out = model.generate(prompt, max_new_tokens=60 if args.quick else 160, do_sample=False, pad_token_id=0,
                         eos_token_id=None)
    print(f"\ngreedy sample from the EACache:\n{vocab.decode(out[0])!r}\n")

    # decoding speed: EA from its O(t D) state against softmax with a KV cache, same sizes, same prompt lengths
    twin = softmax_twin(cfg)
    if args.train_softmax:
        sm_loss = train(twin, data, steps, batch, seq, args.seed, "softmax + RoPE")
        print(f"\nmean loss of the last 10% of steps, same batches: EA (no positional encoding) {ea_loss:.3f}, "
              f"softmax + RoPE {sm_loss:.3f}\n")
    new = args.new_tokens or (32 if args.quick else 64)
    print(f"greedy decoding, {new} new tokens after the prompt, batch 1 (tokens/s; prefill excluded):")
    print(f"{'context':>8} {'EA (EACache)':>14} {'softmax (KV cache)':>20} {'EA / softmax':>13}")
    contexts = args.contexts or ("128,1024" if args.quick else "128,1024,4096")
    for ctx in (int(c) for c in contexts.split(",")):
        prompt = data[:ctx][None]
        ea_tps, sm_tps = decode_speed(model, prompt, new), decode_speed(twin, prompt, new)
        print(f"{ctx:>8} {ea_tps:>14.0f} {sm_tps:>20.0f} {ea_tps / sm_tps:>12.2f}x")
    print(f"(ea_ops {ea_ops.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
