"""The compiled step's ops against their torch references, on random inputs of several shapes (grouped and
plain heads, odd sizes, left padding, every candidate position), float32 on CPU:

* ``compiled_ops.grouped_candidate_attention`` vs ``ops.candidate_attention`` (atol 1e-5: the same float32
  math summed in another order);
* ``compiled_ops.commit_slots_in_place`` / ``select_commit_in_place`` vs ``ops.commit_slots_`` /
  ``ops.select_commit`` (exact: a selection and copies);
* ``packed_linear.PackedLinear`` vs ``F.linear`` on the layers it packs (tolerances per dtype in
  :data:`LINEAR_TOLERANCES`), eagerly and inside ``torch.compile(fullgraph=True)``.
"""
import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from args_fast.engine import compiled_ops, ops, packed_linear
from tiny_models import seed_of

# dtype -> (atol, rtol) of PackedLinear against F.linear computed in float32 from the same (rounded)
# inputs: float32 differs only in summation order; 16-bit outputs are rounded once to their dtype
# (relative 2^-8 for bfloat16, 2^-11 for float16), so the tolerance is that rounding plus float32 sums.
LINEAR_TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 8e-3), torch.float16: (2e-3, 1e-3)}


def _generator(tag: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed_of(tag))


# ------------------------------------------------------------------------------------------ attention
@pytest.mark.parametrize("batch, hq, hkv, k, slots, dim", [(3, 4, 4, 1, 17, 8), (2, 6, 2, 5, 23, 16),
                                                          (4, 8, 1, 3, 40, 8), (1, 9, 3, 10, 61, 64)])
def test_grouped_attention_matches_the_reference(batch, hq, hkv, k, slots, dim):
    g = _generator(batch * 1000 + hq * 100 + k)
    q = torch.randn(batch, hq, k, dim, generator=g)
    kc, vc = torch.randn(2, batch, hkv, slots, dim, generator=g)
    end = torch.randint(1, slots - k + 1, (batch,), generator=g)          # candidates fit after the prefix
    start = (torch.rand(batch, generator=g) * end).long()                  # left padding before start
    start[0] = 0
    for scale in (None, 0.3):
        torch.testing.assert_close(compiled_ops.grouped_candidate_attention(q, kc, vc, start, end, scale),
                                   ops.candidate_attention(q, kc, vc, start, end, scale), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------ select + commit
def _caches(g, layers, batch, heads, slots, dim):
    return (torch.randn(layers, batch, heads, slots, dim, generator=g),
            torch.randn(layers, batch, heads, slots, dim, generator=g))


@pytest.mark.parametrize("layers, batch, heads, k, dim", [(1, 1, 1, 1, 4), (2, 5, 3, 4, 8), (3, 7, 2, 10, 5)])
def test_commit_in_place_matches_the_reference(layers, batch, heads, k, dim):
    g = _generator(layers * 100 + batch * 10 + k)
    end = torch.randint(0, 9, (batch,), generator=g)
    slots = int(end.max()) + k + 3
    choice = torch.randint(0, k, (batch,), generator=g)
    choice[0] = 0                           # the winner already at its slot
    choice[-1] = k - 1
    kc, vc = _caches(g, layers, batch, heads, slots, dim)
    want_k, want_v = kc.clone(), vc.clone()
    ops.commit_slots_(want_k, want_v, end, choice)
    compiled_ops.commit_slots_in_place(kc, vc, end, choice)
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)


@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
def test_select_commit_in_place_matches_the_reference(mode):
    g = _generator(7 if mode == "greedy" else 8)
    batch, k, layers, heads, dim = 6, 5, 2, 3, 4
    logits = torch.randn(batch, k, generator=g).sort(-1, descending=True).values
    rewards, u = torch.randn(batch, k, generator=g), torch.rand(batch, k, generator=g)
    ids = torch.randint(0, 50, (batch, k), generator=g)
    end = torch.randint(0, 6, (batch,), generator=g)
    finished = torch.tensor([False, True, False, False, True, False])
    eos = torch.tensor([int(ids[2, 0]), 3])
    kc, vc = _caches(g, layers, batch, heads, int(end.max()) + k + 1, dim)
    state = [finished, kc, vc, end]
    mine, ref = [t.clone() for t in state], [t.clone() for t in state]
    uniforms = None if mode == "greedy" else u
    got = compiled_ops.select_commit_in_place(logits, ids, rewards, uniforms, 0.7, 0.5, mine[0], eos, 0, *mine[1:])
    want = ops.select_commit(logits, ids, rewards, uniforms, 0.7, 0.5, ref[0], eos, 0, *ref[1:])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    for a, b in zip(mine, ref):
        assert torch.equal(a, b)


def test_the_compiled_commit_writes_in_place():
    """Inside torch.compile the commit must still move exactly the winners' rows (and nothing else)."""
    g = _generator(9)
    kc, vc = _caches(g, 3, 4, 2, 12, 8)
    end, choice = torch.tensor([0, 3, 5, 2]), torch.tensor([0, 2, 1, 3])
    want_k, want_v = kc.clone(), vc.clone()
    ops.commit_slots_(want_k, want_v, end, choice)
    compiled = torch.compile(compiled_ops.commit_slots_in_place, fullgraph=True, dynamic=False)
    compiled(kc, vc, end, choice)
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)


# ------------------------------------------------------------------------------------ packed linear
def _layers(kind: str, dtype, g):
    def linear(i, o, bias):
        layer = nn.Linear(i, o, bias=bias)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(o, i, generator=g) / i ** 0.5)
            if bias:
                layer.bias.copy_(torch.randn(o, generator=g))
        return layer.to(dtype)
    if kind == "one":
        return [linear(24, 40, True)], None
    if kind == "one-no-bias-odd":
        return [linear(33, 7, False)], None
    if kind == "qkv-mixed-bias":        # Q, K, V of a grouped-query layer; only K has a bias
        return [linear(32, 32, False), linear(32, 8, True), linear(32, 8, False)], None
    conv = Conv1D(48, 16)                   # GPT-2's c_attn: weight (in, out), split into three
    with torch.no_grad():
        conv.weight.copy_(torch.randn(16, 48, generator=g) / 4)
        conv.bias.copy_(torch.randn(48, generator=g))
    return [conv.to(dtype)], [16, 16, 16]


def _reference(layers, x):
    outs = []
    for layer in layers:
        w = layer.weight if isinstance(layer, nn.Linear) else layer.weight.t()
        b = None if layer.bias is None else layer.bias.float()
        outs.append(F.linear(x.float(), w.float(), b))
    return torch.cat(outs, dim=-1)


@pytest.mark.parametrize("dtype", list(LINEAR_TOLERANCES))
@pytest.mark.parametrize("kind", ["one", "one-no-bias-odd", "qkv-mixed-bias", "conv1d-split"])
def test_packed_linear_matches_f_linear(kind, dtype):
    if packed_linear.unavailable_reason(dtype):
        pytest.skip(packed_linear.unavailable_reason(dtype))
    g = _generator(len(kind) * 10 + list(LINEAR_TOLERANCES).index(dtype))
    layers, split = _layers(kind, dtype, g)
    atol, rtol = LINEAR_TOLERANCES[dtype]
    packed = packed_linear.PackedLinear(layers, rows=10, split=split)
    width = layers[0].weight.shape[1] if isinstance(layers[0], nn.Linear) else layers[0].weight.shape[0]
    assert packed.out_features == _reference(layers, torch.zeros(1, width)).shape[-1]
    compiled = torch.compile(lambda x: packed(x), fullgraph=True, dynamic=False)
    for shape in [(1, width), (10, width), (3, 7, width), (37, width)]:   # rows other than the hint too
        x = torch.randn(*shape, generator=g).to(dtype)
        want = _reference(layers, x)
        for fn in (packed, compiled) if shape == (3, 7, width) else (packed,):
            with torch.no_grad():
                got = fn(x)
            got = torch.cat(got, dim=-1) if isinstance(got, tuple) else got
            assert got.dtype == dtype and got.shape == want.shape
            torch.testing.assert_close(got.float(), want, atol=atol, rtol=rtol)


def test_packed_linear_repacks_and_releases_its_copy():
    if packed_linear.unavailable_reason(torch.float32):
        pytest.skip(packed_linear.unavailable_reason(torch.float32))
    g = _generator(11)
    layer = nn.Linear(16, 8)
    packed = packed_linear.PackedLinear([layer], rows=4)
    x = torch.randn(5, 16, generator=g)
    with torch.no_grad():
        layer.weight.mul_(-2)
        stale = packed(x)
        assert packed.repack_if_changed(), "an in-place change of the weight must be seen"
        assert not packed.repack_if_changed(), "unchanged weights must not be packed again"
        fresh = packed(x)
        want = layer(x)
    assert not torch.allclose(stale, want), "the packed copy is a copy: it must not see the change before repack"
    torch.testing.assert_close(fresh, want, atol=1e-5, rtol=1e-5)
    key = packed.key
    assert key in packed_linear._PACKED
    del packed
    gc.collect()
    assert key not in packed_linear._PACKED


def test_packing_refuses_other_layers():
    with pytest.raises(TypeError, match="cannot pack a Embedding"):
        packed_linear.PackedLinear([nn.Embedding(4, 4)], rows=1)
    assert "float64" in packed_linear.unavailable_reason(torch.float64)
