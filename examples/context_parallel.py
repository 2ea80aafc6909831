"""Causal EA over a sequence split across processes: ``torchrun --nproc-per-node 2 examples/context_parallel.py``.

Each rank holds its slice of one long sequence; ``ea_attention_cp`` exchanges only the EA states (a few KiB per
head, whatever the length). Rank 0 then checks the gathered output against one process on the whole sequence.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import ea_ops
from ea_ops.distributed import bytes_sent, ea_attention_cp


def main() -> None:
    dist.init_process_group("gloo")  # NCCL on GPUs
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # every rank builds the same sequence, then keeps its slice
    T, H, D = 4096, 4, 32
    q, k, v = (torch.randn(1, T, H, D) * 0.5 for _ in range(3))
    bounds = [T * r // world for r in range(world + 1)]
    mine = [t[:, bounds[rank]:bounds[rank + 1]].clone().requires_grad_() for t in (q, k, v)]
    o, final = ea_attention_cp(*mine, order=6, output_final_state=True)
    o.sum().backward()  # every rank runs its backward
    pieces = [torch.empty(1, bounds[r + 1] - bounds[r], H, D) for r in range(world)]
    dist.all_gather(pieces, o.detach().contiguous())
    if rank == 0:
        whole, state = ea_ops.ea_attention(q, k, v, order=6, output_final_state=True)
        err = (torch.cat(pieces, 1) - whole).abs().max().item()
        print(f"{world} ranks, T = {T}: max |o - one process| = {err:.2e}; final state "
              f"rel. error {((final.S - state.S).norm() / state.S.norm()).item():.1e}; "
              f"rank 0 sent {sum(bytes_sent().values())} bytes")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
