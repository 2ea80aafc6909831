"""analysis.study.tasks: the targets checked by brute force, row by row."""

import pytest
import torch

from analysis.study.tasks import IGNORE, NOISE, SEP, make_batch, mqar, selective_copy


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("T,n", [(12, 4), (40, 8), (24, 1)])
def test_mqar_targets_by_brute_force(T, n):
    K = V = 10
    x, y = mqar(16, T, n, K, V, _gen())
    assert x.shape == y.shape == (16, T)
    for row, tgt in zip(x.tolist(), y.tolist()):
        pairs = {row[2 * i]: row[2 * i + 1] for i in range(n)}
        assert len(pairs) == n  # distinct keys
        assert all(2 <= k < 2 + K and 2 + K <= v < 2 + K + V for k, v in pairs.items())
        scored = [i for i, t in enumerate(tgt) if t != IGNORE]
        assert scored == list(range(T - n, T))
        assert sorted(row[i] for i in scored) == sorted(pairs)  # every key asked once
        for i in scored:  # the value that followed the query's key in the context
            j = row.index(row[i])
            assert j < 2 * n and tgt[i] == row[j + 1]
        assert all(t == NOISE for t in row[2 * n:T - n])


@pytest.mark.parametrize("T,n", [(17, 8), (40, 5), (3, 1)])
def test_copy_targets_by_brute_force(T, n):
    K = V = 8
    x, y = selective_copy(16, T, n, K, V, _gen(1))
    C = T - n
    for row, tgt in zip(x.tolist(), y.tolist()):
        assert row[C - 1] == SEP and SEP not in row[:C - 1] + row[C:]
        data = [t for t in row[:C - 1] if t != NOISE]
        assert len(data) == n == len(set(data)) and all(2 + K <= t < 2 + K + V for t in data)
        assert row[C:] == data
        want = [IGNORE] * (C - 1) + data + [IGNORE]
        assert tgt == want


def test_same_generator_seed_same_batch_and_different_seeds_differ():
    a = make_batch("mqar", 8, 30, 5, 10, 10, _gen(3))
    b = make_batch("mqar", 8, 30, 5, 10, 10, _gen(3))
    c = make_batch("mqar", 8, 30, 5, 10, 10, _gen(4))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("call,word", [
    (lambda: mqar(2, 11, 4, 10, 10, _gen()), "seq_len"),
    (lambda: mqar(2, 30, 5, 4, 10, _gen()), "pairs"),
    (lambda: selective_copy(2, 8, 4, 10, 10, _gen()), "seq_len"),
    (lambda: selective_copy(2, 30, 5, 10, 4, _gen()), "pairs"),
    (lambda: make_batch("sort", 2, 30, 5, 10, 10, _gen()), "task"),
])
def test_bad_settings_name_the_argument(call, word):
    with pytest.raises(ValueError, match=word):
        call()
