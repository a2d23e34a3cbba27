"""The Triton candidate attention against the torch reference (args_fast.ops.candidate_attention).

Runs through the Triton interpreter on CPU (conftest sets TRITON_INTERPRET=1), float32 unless stated.
Inputs are fresh random draws each run; the seed is in every failure message (ARGS_FAST_SEED=<n>
replays one).
"""
import os

import pytest
import torch

from args_fast.kernels import candidate_attention, candidate_attention_reference, check_slot_ranges
from args_fast.kernels.candidate_attention import default_num_splits


@pytest.fixture
def seed():
    return int(os.environ.get("ARGS_FAST_SEED", int.from_bytes(os.urandom(4), "little")))


def make_case(gen, batch, kv_heads, group, k, dim, max_prefix, dtype=torch.float32, layout="contiguous",
              min_prefix=1, layers=3):
    """Ragged rows: each row gets a random prefix length in [min_prefix, max_prefix] after random left
    padding; the cache is one layer of a (layers, B, Hkv, S, D) tensor, laid out per ``layout``."""
    lengths = torch.randint(min_prefix, max_prefix + 1, (batch,), generator=gen)
    lengths[torch.randint(0, batch, (1,), generator=gen)] = max_prefix   # the longest length always occurs
    start = torch.randint(0, 6, (batch,), generator=gen)
    end = start + lengths
    slots = int(end.max()) + k + int(torch.randint(0, 4, (1,), generator=gen))
    shape = (layers, batch, kv_heads, slots, dim)

    def cache():
        if layout == "contiguous":
            full = torch.randn(shape, generator=gen)
        elif layout == "slot_major":     # (layers, B, S, Hkv, D) storage seen as (layers, B, Hkv, S, D)
            full = torch.randn(layers, batch, slots, kv_heads, dim, generator=gen).transpose(2, 3)
        elif layout == "padded_dim":     # rows padded past D: non-unit stride between slots' rows
            full = torch.randn(shape[:-1] + (dim + 8,), generator=gen)[..., :dim]
        return full.to(dtype)[1]         # one layer: a view with the big tensor's strides

    k_cache, v_cache = cache(), cache()
    # q as a model produces it: (B, k, Hq, D) transposed to (B, Hq, k, D)
    q = torch.randn(batch, k, kv_heads * group, dim, generator=gen).to(dtype).transpose(1, 2)
    idx_dtype = torch.int32 if int(torch.randint(0, 2, (1,), generator=gen)) else torch.int64
    return q, k_cache, v_cache, start.to(idx_dtype), end.to(idx_dtype)


# (batch, kv_heads, group, k, dim, max_prefix, layout, num_splits): k in {1,3,10,40,64}, groups 1/2/4/8,
# D 32/64/128/256, prefixes 1..2048, every stacked-M regime (<16, one block, several 128-row blocks).
CASES = [
    (2, 2, 1, 1, 64, 1, "contiguous", None),
    (3, 1, 4, 10, 128, 700, "slot_major", None),
    (1, 2, 8, 40, 64, 2048, "padded_dim", 3),
    (2, 1, 2, 64, 64, 300, "contiguous", 5),
    (2, 2, 2, 3, 128, 1500, "slot_major", None),
    (1, 1, 8, 64, 64, 129, "contiguous", 2),
    (4, 1, 1, 40, 32, 65, "padded_dim", 1),
    (2, 1, 4, 3, 64, 20, "contiguous", 16),      # more splits than tiles: most splits are empty
    (1, 4, 1, 10, 128, 1024, "contiguous", None),
    (2, 1, 8, 10, 128, 2048, "slot_major", None),
    (1, 2, 4, 64, 128, 900, "padded_dim", 2),
    (3, 2, 2, 40, 64, 1, "contiguous", None),
    (1, 2, 2, 40, 256, 300, "contiguous", None),  # D 256: the wide-row tiles (<= 64 queries, two M blocks)
]


@pytest.mark.parametrize("batch,kv_heads,group,k,dim,max_prefix,layout,num_splits", CASES)
def test_matches_reference(seed, batch, kv_heads, group, k, dim, max_prefix, layout, num_splits):
    gen = torch.Generator().manual_seed(seed)
    q, kc, vc, start, end = make_case(gen, batch, kv_heads, group, k, dim, max_prefix, layout=layout)
    out = candidate_attention(q, kc, vc, start, end, num_splits=num_splits)
    ref = candidate_attention_reference(q, kc, vc, start, end)
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6, msg=lambda m: f"seed {seed}: {m}")


def test_split_count_does_not_change_result(seed):
    gen = torch.Generator().manual_seed(seed)
    q, kc, vc, start, end = make_case(gen, 2, 1, 2, 10, 64, 400)
    ref = candidate_attention_reference(q, kc, vc, start, end)
    for splits in (1, 2, 7):
        torch.testing.assert_close(candidate_attention(q, kc, vc, start, end, num_splits=splits), ref,
                                   rtol=1e-5, atol=2e-6, msg=lambda m: f"seed {seed}, {splits} splits: {m}")


def test_empty_prefix_rows_attend_to_own_slot_only(seed):
    gen = torch.Generator().manual_seed(seed)
    q, kc, vc, start, end = make_case(gen, 3, 2, 2, 3, 64, 5, min_prefix=0)
    start[0] = end[0]      # row 0: no prefix at all, so its output is its own value row exactly
    out = candidate_attention(q, kc, vc, start, end, num_splits=2)
    ref = candidate_attention_reference(q, kc, vc, start, end)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6, msg=lambda m: f"seed {seed}: {m}")
    own = vc[0, :, int(end[0]):int(end[0]) + 3].repeat_interleave(2, dim=0)
    torch.testing.assert_close(out[0], own, rtol=0, atol=0)


def test_custom_scale(seed):
    gen = torch.Generator().manual_seed(seed)
    q, kc, vc, start, end = make_case(gen, 2, 2, 1, 3, 64, 50)
    torch.testing.assert_close(candidate_attention(q, kc, vc, start, end, scale=0.3),
                               candidate_attention_reference(q, kc, vc, start, end, scale=0.3),
                               rtol=1e-5, atol=2e-6, msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_inputs(seed, dtype, tol):
    """16-bit q/K/V: output in q's dtype; the reference computes from the same 16-bit values in fp32,
    so the only error is the final rounding (the interpreter upcasts tiles before tl.dot)."""
    gen = torch.Generator().manual_seed(seed)
    q, kc, vc, start, end = make_case(gen, 2, 2, 2, 10, 64, 300, dtype=dtype, layout="slot_major")
    out = candidate_attention(q, kc, vc, start, end)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), candidate_attention_reference(q, kc, vc, start, end).float(),
                               rtol=tol, atol=tol / 4, msg=lambda m: f"seed {seed}: {m}")


def test_default_num_splits():
    cpu = torch.device("cpu")
    assert default_num_splits(1, 8, 1, 100, cpu) == 1          # short prefix: one split
    assert default_num_splits(1, 1, 1, 4096, cpu) == 8         # 2 * 4 "SMs" on CPU / 1 program
    assert default_num_splits(64, 32, 1, 4096, cpu) == 1       # plenty of programs already


def test_check_slot_ranges():
    check_slot_ranges(torch.tensor([0, 2]), torch.tensor([5, 5]), k=3, n_slots=8)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        check_slot_ranges(torch.tensor([0, 2]), torch.tensor([5, 6]), k=3, n_slots=8)
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        check_slot_ranges(torch.tensor([3, 0]), torch.tensor([2, 1]), k=1, n_slots=8)


def _good():
    q = torch.randn(2, 4, 3, 64)
    kc, vc = torch.randn(2, 2, 20, 64), torch.randn(2, 2, 20, 64)
    return dict(q=q, k_cache=kc, v_cache=vc, prefix_start=torch.tensor([0, 1]), prefix_end=torch.tensor([9, 9]))


@pytest.mark.parametrize("change,error,match", [
    (dict(q=torch.randn(4, 3, 64)), ValueError, "q must be"),
    (dict(q=torch.randn(2, 4, 3, 80), k_cache=torch.randn(2, 2, 20, 80), v_cache=torch.randn(2, 2, 20, 80)),
     ValueError, "power of two"),
    (dict(q=torch.randn(2, 3, 3, 64)), ValueError, "multiple of the cache's kv heads"),
    (dict(k_cache=torch.randn(2, 2, 20, 64, dtype=torch.float64)), TypeError, "k_cache dtype"),
    (dict(v_cache=torch.randn(2, 2, 21, 64)), ValueError, "v_cache shape"),
    (dict(k_cache=torch.randn(3, 2, 20, 64)), ValueError, "k_cache must be"),
    (dict(prefix_end=torch.tensor([9.0, 9.0])), ValueError, "prefix_end must be"),
    (dict(prefix_start=torch.tensor([0, 1, 2])), ValueError, "prefix_start must be"),
    (dict(q=torch.randn(2, 4, 3, 64).to(torch.int32)), TypeError, "q dtype"),
    (dict(num_splits=0), ValueError, "num_splits"),
    (dict(prefix_end=torch.tensor([9, 0, 9])[::2]), ValueError, "prefix_end must be contiguous"),
    (dict(prefix_end=[9, 9]), TypeError, "prefix_end must be a torch.Tensor"),
])
def test_bad_inputs_name_the_argument(change, error, match):
    args = {**_good(), **change}
    with pytest.raises(error, match=match):
        candidate_attention(**args)


def test_custom_op_registration_and_compile():
    """The op has a schema and fake impl (opcheck), and torch.compile traces a step around it in one
    graph (fullgraph: the wrapper does nothing data-dependent on the host)."""
    gen = torch.Generator().manual_seed(0)
    q, kc, vc, start, end = make_case(gen, 2, 1, 2, 3, 32, 20)
    torch.library.opcheck(torch.ops.args_fast.candidate_attention.default, (q, kc, vc, start, end, 0.2, 2),
                          test_utils=("test_schema", "test_faketensor"))

    def step(q, kc, vc, start, end):
        return candidate_attention(q * 1.0, kc, vc, start, end) + 1.0

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, kc, vc, start, end),
                               candidate_attention_reference(q, kc, vc, start, end) + 1.0, rtol=1e-5, atol=2e-6)
