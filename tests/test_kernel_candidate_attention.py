"""The Triton candidate attention against the torch reference (args_fast.ops.candidate_attention).

Runs through the Triton interpreter on CPU (conftest sets TRITON_INTERPRET=1).

Tolerances are per input dtype, in :data:`TOLERANCES`. The truth is always the reference on the
fp32-upcast inputs. float32 is held to it elementwise, tightly. bfloat16 / float16 are held, as
flash-attention's tests do, to a multiple of torch's own error at that precision (SDPA run in that
dtype with the same boolean mask) plus a small floor, and elementwise to a couple of output ulps.

Inputs are random draws from ``tiny_models.seeds`` (fixed by default; ``ARGS_FAST_TEST_SEED=<int>``
or ``=random`` for fresh ones); the seed is in every failure message.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from args_fast.engine.kernels import candidate_attention, check_slot_ranges, default_num_splits, supports_head_dim
from args_fast.engine.kernels.candidate_attention import INTERPRETED
from args_fast.engine.ops import candidate_attention as reference
from args_fast.engine.ops import candidate_visibility
from tiny_models import seeds

# dtype: (atol, rtol) against the reference on the fp32-upcast inputs.
# float32: elementwise assert_close. The kernel's dots are exact fp32 ("ieee", no tf32), so only the
#   summation order (online softmax, splits) differs from the reference: a few fp32 ulps.
# bfloat16 / float16, as flash-attention's tests: (1) max |kernel - truth| <= LOWP_FACTOR *
#   max |torch SDPA in that dtype - truth| + atol, a small floor; (2) elementwise assert_close(atol,
#   rtol), rtol = 2 ulps of the dtype (2^-6, 2^-9 relative at worst). Compiled for a GPU, the kernel's
#   16-bit tensor-core dots add error of their own, which (1) holds to torch's. The interpreter
#   upcasts 16-bit tiles to fp32, so on CPU the kernel is as accurate as torch or more (measured:
#   fp16 at most 0.9x torch's max error over 25 seeds), except for INTERPRETER_BF16_ULP below.
TOLERANCES = {
    torch.float32: (2e-6, 1e-5),
    torch.bfloat16: (1e-3, 1.6e-2),
    torch.float16: (1.25e-4, 2e-3),
}
LOWP_FACTOR = 2.0
# The Triton interpreter's fp32 -> bfloat16 cast truncates (triton.runtime.interpreter's cast_impl
# converts with no rounding mode) where torch and compiled Triton round to nearest: its bf16 outputs
# are up to one ulp off where torch's are half of one. Bound (1) allows that one ulp (at the largest
# output) on top, only there.
INTERPRETER_BF16_ULP = INTERPRETED
LOW_PRECISION = [d for d in TOLERANCES if d != torch.float32]


def make_case(gen, batch, kv_heads, group, k, dim, max_prefix, dtype=torch.float32, layout="contiguous",
              min_prefix=1, layers=3):
    """Ragged rows: each row gets a random prefix length in [min_prefix, max_prefix] after random left
    padding; the cache is one layer of a (layers, B, Hkv, S, D) tensor, laid out per ``layout`` (in
    ``dtype`` before the view is taken, so 16-bit caches keep the layout's strides)."""
    lengths = torch.randint(min_prefix, max_prefix + 1, (batch,), generator=gen)
    lengths[torch.randint(0, batch, (1,), generator=gen)] = max_prefix   # the longest length always occurs
    start = torch.randint(0, 6, (batch,), generator=gen)
    end = start + lengths
    slots = int(end.max()) + k + int(torch.randint(0, 4, (1,), generator=gen))
    shape = (layers, batch, kv_heads, slots, dim)

    def cache():
        if layout == "contiguous":
            full = torch.randn(shape, generator=gen).to(dtype)
        elif layout == "slot_major":     # (layers, B, S, Hkv, D) storage seen as (layers, B, Hkv, S, D)
            full = torch.randn(layers, batch, slots, kv_heads, dim, generator=gen).to(dtype).transpose(2, 3)
        elif layout == "padded_dim":     # rows padded past D: non-unit stride between slots' rows
            full = torch.randn(shape[:-1] + (dim + 8,), generator=gen).to(dtype)[..., :dim]
        return full[1]                   # one layer: a view with the big tensor's strides

    k_cache, v_cache = cache(), cache()
    # q as a model produces it: (B, k, Hq, D) transposed to (B, Hq, k, D)
    q = torch.randn(batch, k, kv_heads * group, dim, generator=gen).to(dtype).transpose(1, 2)
    idx_dtype = torch.int32 if int(torch.randint(0, 2, (1,), generator=gen)) else torch.int64
    return q, k_cache, v_cache, start.to(idx_dtype), end.to(idx_dtype)


def torch_attention(q, k_cache, v_cache, start, end, scale=None):
    """Torch's own answer in q's dtype: SDPA with the reference's visibility mask."""
    mask = candidate_visibility(start, end, q.shape[2], k_cache.shape[2])[:, None]   # (B, 1, k, S)
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=scale,
                                          enable_gqa=q.shape[1] != k_cache.shape[1])


def ulp(dtype, x):
    """The spacing of ``dtype``'s values at magnitude ``x``."""
    return torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(x)) if x > 0 else 0.0


def assert_close_to_reference(out, q, kc, vc, start, end, seed, scale=None, what=""):
    """``out`` (the kernel's) against the truth, per :data:`TOLERANCES` for q's dtype."""
    where = f"seed {seed}{what}, {q.dtype}"
    assert out.dtype == q.dtype and out.shape == q.shape, where
    atol, rtol = TOLERANCES[q.dtype]
    truth = reference(q.float(), kc.float(), vc.float(), start, end, scale=scale)
    if q.dtype != torch.float32:
        err = (out.float() - truth).abs().max().item()
        torch_err = (torch_attention(q, kc, vc, start, end, scale).float() - truth).abs().max().item()
        floor = atol
        if q.dtype == torch.bfloat16 and INTERPRETER_BF16_ULP:
            floor += ulp(q.dtype, truth.abs().max().item())
        assert err <= LOWP_FACTOR * torch_err + floor, \
            f"{where}: max error {err:.3g} > {LOWP_FACTOR} x torch's own {torch_err:.3g} + {floor:.3g}"
    torch.testing.assert_close(out.float(), truth, atol=atol, rtol=rtol, msg=lambda m: f"{where}: {m}")


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
# The cases also run in bfloat16 and float16: one per layout, GQA and MHA, several M blocks, D 32..256,
# a many-split prefix. (All of them would triple the interpreter time for little more coverage.)
LOW_PRECISION_CASES = [CASES[i] for i in (1, 3, 5, 6, 8, 12)]


@pytest.mark.parametrize("seed", seeds(1))
@pytest.mark.parametrize("batch,kv_heads,group,k,dim,max_prefix,layout,num_splits,dtype",
                         [(*case, torch.float32) for case in CASES]
                         + [(*case, dtype) for case in LOW_PRECISION_CASES for dtype in LOW_PRECISION])
def test_matches_reference(seed, batch, kv_heads, group, k, dim, max_prefix, layout, num_splits, dtype):
    gen = torch.Generator().manual_seed(seed)
    q, kc, vc, start, end = make_case(gen, batch, kv_heads, group, k, dim, max_prefix, dtype=dtype, layout=layout)
    out = candidate_attention(q, kc, vc, start, end, num_splits=num_splits)
    assert_close_to_reference(out, q, kc, vc, start, end, seed)


@pytest.mark.parametrize("seed", seeds(1))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_count_does_not_change_result(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    q, kc, vc, start, end = make_case(gen, 2, 1, 2, 10, 64, 400, dtype=dtype)
    for splits in (1, 2, 7):
        out = candidate_attention(q, kc, vc, start, end, num_splits=splits)
        assert_close_to_reference(out, q, kc, vc, start, end, seed, what=f", {splits} splits")


@pytest.mark.parametrize("seed", seeds(2))
@pytest.mark.parametrize("dtype", list(TOLERANCES))
def test_empty_prefix_rows_attend_to_own_slot_only(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    q, kc, vc, start, end = make_case(gen, 3, 2, 2, 3, 64, 5, dtype=dtype, min_prefix=0)
    start[0] = end[0]      # row 0: no prefix at all, so its output is its own value row exactly
    out = candidate_attention(q, kc, vc, start, end, num_splits=2)
    assert_close_to_reference(out, q, kc, vc, start, end, seed)
    own = vc[0, :, int(end[0]):int(end[0]) + 3].repeat_interleave(2, dim=0)
    torch.testing.assert_close(out[0], own, rtol=0, atol=0, msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.parametrize("seed", seeds(2))
@pytest.mark.parametrize("dtype", list(TOLERANCES))
def test_custom_scale(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    q, kc, vc, start, end = make_case(gen, 2, 2, 1, 3, 64, 50, dtype=dtype)
    out = candidate_attention(q, kc, vc, start, end, scale=0.3)
    assert_close_to_reference(out, q, kc, vc, start, end, seed, scale=0.3)


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


def test_supports_head_dim():
    assert [d for d in range(1, 600) if supports_head_dim(d)] == [16, 32, 64, 128, 256]


def _good():
    q = torch.randn(2, 4, 3, 64)
    kc, vc = torch.randn(2, 2, 20, 64), torch.randn(2, 2, 20, 64)
    return dict(q=q, k_cache=kc, v_cache=vc, prefix_start=torch.tensor([0, 1]), prefix_end=torch.tensor([9, 9]))


@pytest.mark.parametrize("change", [
    dict(v_cache=torch.randn(2, 2, 21, 64)),                               # K and V shapes differ
    dict(k_cache=torch.randn(3, 2, 20, 64), v_cache=torch.randn(3, 2, 20, 64)),   # another batch
    dict(q=torch.randn(2, 3, 3, 64)),                                      # Hq not a multiple of Hkv
    dict(q=torch.randn(2, 4, 3, 80), k_cache=torch.randn(2, 2, 20, 80), v_cache=torch.randn(2, 2, 20, 80)),
    dict(prefix_start=torch.tensor([0, 1, 2])),
], ids=["kv-shapes", "batch", "heads", "head-dim-80", "prefix-start"])
def test_shape_mismatches_trip_the_asserts(change):
    """Arguments are validated once at the public API / engine allocation; per call the kernel keeps only
    cheap shape asserts (``_assert_shapes``), which these trip."""
    args = {**_good(), **change}
    with pytest.raises(AssertionError):
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
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(compiled(q, kc, vc, start, end), reference(q, kc, vc, start, end) + 1.0,
                               atol=atol, rtol=rtol)
