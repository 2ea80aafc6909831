"""Context parallelism (issue 16): ``ea_attention_cp`` on 2, 3 and 4 gloo processes on 127.0.0.1 equals
``ea_attention`` on the whole sequence in one process: outputs, gradients and final states (float64 on the
torch backend to 1e-10, float32 on TVM), with uneven slices, ranks without tokens, sequences crossing ranks,
initial and final states, far keys on one rank only, grouped kv heads, and non-causal EA. The test starts the
processes, limits their time and ends them (tests/ea_ops/cp/worker.py is one rank)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ea_ops
from ea_ops import distributed

ROOT = Path(__file__).resolve().parents[2]
WORKER = ["-m", "tests.ea_ops.cp.worker"]
ALL = "even,uneven_and_empty,states,far_keys_on_one_rank,packed,gqa,non_causal"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, backend: str, cases: str, limit_s: float = 240.0) -> list[dict]:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(world),
           "OMP_NUM_THREADS": "1", "TVM_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    procs = [subprocess.Popen([sys.executable, *WORKER, backend, cases], cwd=ROOT, env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    deadline = time.monotonic() + limit_s
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for p in procs:  # every process ends here, whatever happened
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, f"rank exited {p.returncode}:\n{err[-4000:]}"
    return [json.loads(line) for out, _ in outs for line in out.splitlines() if line.startswith("{")]


def _check(rows: list[dict], world: int, tol: float, cases: str) -> None:
    assert len(rows) == world * len(cases.split(",")), rows
    for row in rows:
        assert row["finite"], row
        for key in ("o", "dq", "dk", "dv", "S", "Z"):
            if key in row:
                # float32: within 2x of the same backend in one process (keys near 12 cost dq digits there)
                bound = max(tol, 2 * row.get("base_" + key, 0.0))
                assert row[key] < bound, (row["case"], row["rank"], key, row[key], row.get("base_" + key))
        if "m" in row:
            assert row["m"] < tol, row


@pytest.mark.parametrize("world", [2, 3, 4])
def test_context_parallel_equals_one_process_float64(world):
    _check(_run(world, "torch", ALL), world, 1e-10, ALL)


def test_context_parallel_on_tvm_float32():
    pytest.importorskip("tvm")
    cases = "even,uneven_and_empty,states,far_keys_on_one_rank,packed,gqa"
    _check(_run(3, "tvm", cases), 3, 2e-5, cases)


def test_without_a_process_group_the_error_says_so():
    q = torch.randn(1, 4, 2, 4)
    with pytest.raises(RuntimeError, match="needs torch.distributed initialised"):
        distributed.ea_attention_cp(q, q, q)


def test_the_plan_of_packed_sequences():
    plan = distributed._plan([4, 0, 5, 3], [0, 2, 2, 9, 12], batch=1)
    assert plan.pieces == (((0, 0, 2), (2, 2, 4)), (), ((2, 0, 5),), ((3, 0, 3),))
    assert plan.carry == (2, -1, -1, -1) and plan.first == (-1, -1, 2, -1)
    assert plan.sources(2) == [0] and plan.ends == ((0, 1), (), (2,), (3,))


def test_merged_piece_states_equal_the_scan():
    from ea_ops.state_sums import merge, piece_sums

    g = torch.Generator().manual_seed(3)
    k = torch.randn(2, 40, 3, 4, generator=g, dtype=torch.float64) * 3
    v = torch.randn(2, 40, 3, 4, generator=g, dtype=torch.float64)
    _, st = ea_ops.ea_attention(k, k, v, order=4, output_final_state=True, backend="torch")
    parts = [piece_sums(k[:, a:b], v[:, a:b], 4) for a, b in ((0, 7), (7, 7), (7, 31), (31, 40))]
    got = merge(parts)
    assert torch.allclose(got.S, st.S, rtol=1e-12, atol=1e-14) and torch.equal(got.m, st.m)


def test_the_example_runs_under_torchrun():
    """README's way to run it: torchrun starts 2 ranks of examples/context_parallel.py (127.0.0.1, time-limited)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not beside this python")
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
           str(_free_port()), "examples/context_parallel.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TVM_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # torchrun and its ranks share a session: end them all
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    line = next(x for x in out.splitlines() if x.startswith("2 ranks"))
    err_o = float(line.split("one process| = ")[1].split(";")[0])
    assert err_o < 1e-5, line
