"""Speed of the tiny model of examples/train_lm.py: EA (backend auto) against softmax attention (SDPA, the same
sizes as transformers' Llama), on this CPU.

    python examples/model_speed.py [--lengths 256,1024,4096] [--contexts 128,4096] [--repeats 3] [--threads N]

- a training step (forward, backward, AdamW step) at batch 1 and T tokens, median of ``--repeats`` after a warm-up;
- greedy decoding tokens/s after a prompt of ``context`` tokens (prefill excluded; median of ``--repeats``), EA from
  its EACache, softmax from its KV cache: EA's should not depend on the context, the KV cache's does.

EA and softmax runs alternate, so that load from other processes falls on both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_lm import decode_speed, softmax_twin  # noqa: E402

from ea_ops.hf import EAConfig, EAForCausalLM  # noqa: E402


def step_times(models, T: int, repeats: int, vocab: int) -> list[float]:
    """Median training-step time of each model, the models' steps interleaved (a busy machine slows both alike)."""
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in models]
    ids = torch.randint(1, vocab, (1, T))
    times: list[list[float]] = [[] for _ in models]
    for i in range(repeats + 1):
        for m, opt, ts in zip(models, opts, times):
            m.train()
            t0 = time.perf_counter()
            loss = m(input_ids=ids, labels=ids, use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i:
                ts.append(time.perf_counter() - t0)
            m.eval()
    return [statistics.median(ts) for ts in times]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="256,1024,4096")
    p.add_argument("--contexts", default="128,4096")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 keeps a busy machine's other "
                   "processes from stalling every parallel region)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    V = 97
    cfg = EAConfig(vocab_size=V, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   ea_order=6, ea_backend=args.backend, pad_token_id=0)
    ea, sm = EAForCausalLM(cfg), softmax_twin(cfg)
    print(f"tiny model: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, 4 heads (kv 2), EA-6 backend "
          f"{args.backend!r} vs softmax SDPA; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"\ntraining step, batch 1 (median of {args.repeats}):")
    print(f"{'T':>6} {'EA':>10} {'softmax':>10} {'softmax / EA':>13}")
    for T in (int(t) for t in args.lengths.split(",")):
        a, b = step_times([ea, sm], T, args.repeats, V)
        print(f"{T:>6} {a * 1e3:>8.1f}ms {b * 1e3:>8.1f}ms {b / a:>12.2f}x")
    print(f"\ngreedy decoding, batch 1, {args.new_tokens} new tokens (tokens/s, prefill excluded):")
    print(f"{'context':>8} {'EA (EACache)':>14} {'softmax (KV cache)':>20} {'EA / softmax':>13}")
    for ctx in (int(c) for c in args.contexts.split(",")):
        prompt = torch.randint(1, V, (1, ctx))
        runs = [(decode_speed(ea, prompt, args.new_tokens), decode_speed(sm, prompt, args.new_tokens))
                for _ in range(args.repeats)]
        a, b = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"{ctx:>8} {a:>14.0f} {b:>20.0f} {a / b:>12.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
