"""The context-parallel bench counts what it says: EA's bytes do not grow with T, ring attention's are its
K, V and gradients passed W - 1 hops, and the loopback saw at least the logical bytes."""

from __future__ import annotations

import json

from schedules.bench import context_parallel


def test_the_counts_of_a_small_run(tmp_path, capsys):
    argv = ["--lengths", "512,2048", "--bytes-shape", "1,2,8", "--time-shape", "1,2,8", "--time-length", "256",
            "--steps", "1", "--warmup", "0", "--backend", "torch", "--limit-s", "240", "--out", str(tmp_path)]
    assert context_parallel.main(argv) == 0
    rows = json.loads((tmp_path / "context_parallel.json").read_text())["rows"]
    by = {(r["kind"], r["T"], r["rank"]): r for r in rows if r["what"] == "bytes"}
    W, H, D, order = 2, 2, 8, 6
    for rank in range(W):
        ea_small, ea_big = by[("ea_cp", 512, rank)], by[("ea_cp", 2048, rank)]
        assert ea_small["logical_bytes"] == ea_big["logical_bytes"] > 0
        # the states: (2(t+1) + 1) D floats per head, all-gathered forward and backward, plus the metadata
        assert ea_small["logical_bytes"] < 4 * W * H * (2 * (order + 1) + 1) * D * 4 + 1024
        for T in (512, 2048):
            ring = by[("ring", T, rank)]
            assert ring["logical_bytes"] == (W - 1) * 6 * (T // W) * H * D * 4
            assert ring["loopback_bytes_all_ranks"] >= W * ring["logical_bytes"]
    assert "ring / EA" in capsys.readouterr().out
    assert any(r["kind"] == "one_process" for r in rows)
