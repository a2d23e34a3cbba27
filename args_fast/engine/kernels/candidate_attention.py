"""Shared-prefix candidate attention in Triton (flash-decoding over the prefix, one extra slot per query).

Contract (the torch reference is :func:`args_fast.engine.ops.candidate_attention`): ``q`` is
``(B, Hq, k, D)``, the k candidate queries of each row; ``k_cache``/``v_cache`` are one layer's
``(B, Hkv, S, D)`` (any strides: usually views into the ``(layers, B, Hkv, S, D)`` cache); row ``b``'s
prefix is slots ``[prefix_start[b], prefix_end[b])`` and candidate ``j``'s own K/V sits at slot
``prefix_end[b] + j``. Each candidate query attends to the prefix plus its own slot only.

Why a kernel: the k candidates of a row share the whole prefix, so for each (row, kv head) the k
candidates x ``group`` query heads are stacked as the M dimension of one tile and every prefix K/V
tile is read from memory once for all of them (once per 128 stacked queries when k * group > 128).
The prefix is split along its length (flash-decoding) so short batches still fill the GPU:

1. ``_prefix_split_kernel``, grid (B * Hkv, splits, M blocks): online softmax (fp32, base 2) over one
   chunk of the prefix, writing partial (max, sum, acc).
2. ``_combine_kernel``, grid (B * Hkv, M blocks): merges the partials with each query's own slot
   (a different key per candidate, so it is a row-wise dot here, not a tile) and normalises.

The launcher does no host sync (no ``.item()``): slot indices stay on device, split counts come from
shapes only, so the op can be captured in a CUDA graph. Index values are therefore NOT validated on
device; call :func:`check_slot_ranges` (which syncs) where you need that. Loads are masked to
``[0, S)``, so bad indices give wrong numbers, never out-of-bounds reads.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


LOG2E = 1.4426950408889634
BLOCK_M_MAX = 128   # stacked (candidate, head) queries per tile; above this the prefix is read per block


@triton.jit
def _prefix_split_kernel(
    Q, K, V, Start, End, Mpart, Lpart, Apart,
    sq_b, sq_h, sq_k, sq_d, sk_b, sk_h, sk_s, sk_d, sv_b, sv_h, sv_s, sv_d,
    n_kv_heads, n_cand, group, n_slots, num_splits, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_bh, split, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = (pid_bh // n_kv_heads).to(tl.int64)
    kvh = pid_bh % n_kv_heads
    n_rows = n_cand * group
    # stacked query m = g * k + j (head kvh * group + g, candidate j): for a contiguous q these rows
    # are one contiguous block.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < n_rows
    head = kvh * group + offs_m // n_cand
    cand = offs_m % n_cand
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * sq_b + head[:, None] * sq_h + cand[:, None] * sq_k + offs_d[None, :] * sq_d,
                mask=row_ok[:, None], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    # This split's chunk of the row's prefix: chunks are whole tiles, sized from the row's own length.
    start = tl.maximum(tl.load(Start + b).to(tl.int32), 0)
    end = tl.minimum(tl.load(End + b).to(tl.int32), n_slots)
    length = tl.maximum(end - start, 0)
    chunk = tl.cdiv(tl.cdiv(length, num_splits), BLOCK_N) * BLOCK_N
    lo = start + split * chunk
    hi = tl.minimum(lo + chunk, end)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    k_base = K + b * sk_b + kvh * sk_h
    v_base = V + b * sv_b + kvh * sv_h
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        col_ok = offs_n < hi
        k = tl.load(k_base + offs_n[:, None] * sk_s + offs_d[None, :] * sk_d, mask=col_ok[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * sv_s + offs_d[None, :] * sv_d, mask=col_ok[:, None], other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))   # finite: every tile has >= 1 valid column
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    # An empty chunk leaves (-inf, 0, 0), which the combine weighs by exp2(-inf) = 0.
    part = (pid_bh * n_rows + offs_m).to(tl.int64) * num_splits + split
    tl.store(Mpart + part, m_i, mask=row_ok)
    tl.store(Lpart + part, l_i, mask=row_ok)
    tl.store(Apart + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=row_ok[:, None])


@triton.jit
def _combine_kernel(
    Q, K, V, End, Mpart, Lpart, Apart, Out,
    sq_b, sq_h, sq_k, sq_d, sk_b, sk_h, sk_s, sk_d, sv_b, sv_h, sv_s, sv_d, so_b, so_h, so_k, so_d,
    n_kv_heads, n_cand, group, n_slots, num_splits, qk_scale,
    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    pid_bh, pid_m = tl.program_id(0), tl.program_id(1)
    b = (pid_bh // n_kv_heads).to(tl.int64)
    kvh = pid_bh % n_kv_heads
    n_rows = n_cand * group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < n_rows
    head = kvh * group + offs_m // n_cand
    cand = offs_m % n_cand
    offs_d = tl.arange(0, HEAD_DIM)

    # The query's own slot starts the merge, so the running max is finite from the beginning.
    q = tl.load(Q + b * sq_b + head[:, None] * sq_h + cand[:, None] * sq_k + offs_d[None, :] * sq_d,
                mask=row_ok[:, None], other=0.0).to(tl.float32)
    slot = tl.load(End + b).to(tl.int32) + cand
    own_ok = row_ok & (slot >= 0) & (slot < n_slots)
    k_own = tl.load(K + b * sk_b + kvh * sk_h + slot[:, None] * sk_s + offs_d[None, :] * sk_d,
                    mask=own_ok[:, None], other=0.0).to(tl.float32)
    acc = tl.load(V + b * sv_b + kvh * sv_h + slot[:, None] * sv_s + offs_d[None, :] * sv_d,
                  mask=own_ok[:, None], other=0.0).to(tl.float32)
    m_i = tl.sum(q * k_own, 1) * qk_scale
    l_i = tl.full([BLOCK_M], 1.0, tl.float32)

    part = (pid_bh * n_rows + offs_m).to(tl.int64) * num_splits
    for split in range(0, num_splits):
        m_s = tl.load(Mpart + part + split, mask=row_ok, other=float("-inf"))
        l_s = tl.load(Lpart + part + split, mask=row_ok, other=0.0)
        a_s = tl.load(Apart + (part + split)[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        m_new = tl.maximum(m_i, m_s)
        alpha = tl.exp2(m_i - m_new)
        beta = tl.exp2(m_s - m_new)
        l_i = l_i * alpha + l_s * beta
        acc = acc * alpha[:, None] + a_s * beta[:, None]
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(Out + b * so_b + head[:, None] * so_h + cand[:, None] * so_k + offs_d[None, :] * so_d,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None])


# Imported explicitly: Triton loads triton.runtime.interpreter only when TRITON_INTERPRET=1, so
# the attribute path fails on GPU machines.
INTERPRETED = isinstance(_combine_kernel, InterpretedFunction)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)   # the cache dtypes the kernels take


_SM_COUNTS: dict[torch.device, int] = {}


def _sm_count(device: torch.device) -> int:
    if device not in _SM_COUNTS:   # a plain dict, not lru_cache, so torch.compile traces through it
        cuda = device.type == "cuda"
        # the interpreter runs programs one by one; 4 "SMs" still give a few splits to combine
        _SM_COUNTS[device] = torch.cuda.get_device_properties(device).multi_processor_count if cuda else 4
    return _SM_COUNTS[device]


def default_num_splits(batch: int, kv_heads: int, m_blocks: int, max_prefix: int, device: torch.device) -> int:
    """Splits along the prefix so that about two waves of programs cover the SMs, with >= 256 keys per
    split. The true prefix lengths live on device; ``max_prefix`` (from the cache shape) bounds them,
    and each row divides its own length by the split count, so short rows just leave splits empty."""
    programs = batch * kv_heads * m_blocks
    want = triton.cdiv(2 * _sm_count(device), programs)
    return max(1, min(want, triton.cdiv(max_prefix, 256), 64))


def supports_head_dim(dim: int) -> bool:
    """The kernels tile the head dim with ``tl.dot``: a power of two in [16, 256]. The one place this
    rule lives: the static-triton backend asks it before choosing these kernels."""
    return 16 <= dim <= 256 and dim & (dim - 1) == 0


def _assert_shapes(q, k_cache, v_cache, prefix_start, prefix_end):
    """Cheap shape asserts only (no host sync, no per-argument messages): arguments are validated once
    at the public API and when an engine allocates, not per layer per step."""
    batch, hq, k, dim = q.shape
    assert k_cache.dim() == 4 and k_cache.shape == v_cache.shape, "k_cache, v_cache: (B, Hkv, S, D), equal"
    assert k_cache.shape[0] == batch and k_cache.shape[3] == dim, "caches must be (B, Hkv, S, D) of q's B and D"
    assert hq % k_cache.shape[1] == 0 and supports_head_dim(dim), "Hq % Hkv == 0, D a power of two in [16, 256]"
    assert prefix_start.shape == prefix_end.shape == (batch,), "prefix_start, prefix_end: (B,)"


def check_slot_ranges(prefix_start: torch.Tensor, prefix_end: torch.Tensor, k: int, n_slots: int) -> None:
    """Validate the slot indices on the host (SYNCS: call once per request, not inside a captured step):
    0 <= prefix_start <= prefix_end and prefix_end + k <= n_slots for every row."""
    start, end = prefix_start.long().cpu(), prefix_end.long().cpu()
    bad = (start < 0) | (end < start) | (end + k > n_slots)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        raise ValueError(f"slot ranges out of bounds for rows {rows}: need 0 <= prefix_start <= prefix_end and "
                         f"prefix_end + k ({k}) <= S ({n_slots}); got prefix_start {start[rows].tolist()}, "
                         f"prefix_end {end[rows].tolist()}")


def tile_config(n_rows: int, dim: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_stages) of the prefix kernel. Shared memory holds the Q tile plus
    ``num_stages`` pipelined K/V tiles, so wide rows (head dim 256, or fp32 at 128) take shorter K/V
    tiles, fewer stages and at most 64 stacked queries: with BLOCK_N = 64 and 3 stages those configs
    need 172-426 KB, over sm_80's 163 KB and sm_90's 227 KB per block (tests/test_triton_compile.py
    compiles every config for both). Chosen from shapes only, the same under the interpreter."""
    row_bytes = dim * (4 if dtype == torch.float32 else 2)
    block_m = min(BLOCK_M_MAX if row_bytes <= 512 else 64, max(16, triton.next_power_of_2(n_rows)))
    block_n = 64 if row_bytes <= 256 else 32
    num_stages = 3 if row_bytes <= 512 else 2
    return block_m, block_n, num_stages


def _launch(q, k_cache, v_cache, prefix_start, prefix_end, scale: float, num_splits: int) -> torch.Tensor:
    batch, hq, k, dim = q.shape
    hkv, slots = k_cache.shape[1], k_cache.shape[2]
    group = hq // hkv
    n_rows = k * group
    block_m, block_n, num_stages = tile_config(n_rows, dim, q.dtype)
    m_blocks = triton.cdiv(n_rows, block_m)
    out = torch.empty_like(q)
    m_part = torch.empty(batch * hkv * n_rows * num_splits, dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m_part)
    a_part = torch.empty(batch * hkv * n_rows * num_splits * dim, dtype=torch.float32, device=q.device)
    # fp32 inputs: exact fp32 dots ("ieee", not tf32) to hold the 1e-5 contract; 16-bit inputs use the
    # tensor cores directly (products exact, fp32 accumulation). The interpreter's 16-bit dot is broken,
    # so it upcasts tiles first.
    dot_fp32 = INTERPRETED or q.dtype == torch.float32
    qk_scale = scale * LOG2E
    num_warps = 8 if block_m * dim >= 128 * 128 else 4
    _prefix_split_kernel[(batch * hkv, num_splits, m_blocks)](
        q, k_cache, v_cache, prefix_start, prefix_end, m_part, l_part, a_part,
        *q.stride(), *k_cache.stride(), *v_cache.stride(),
        hkv, k, group, slots, num_splits, qk_scale,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=dim, DOT_FP32=dot_fp32, PRECISION="ieee" if dot_fp32 else "tf32",
        num_warps=num_warps, num_stages=num_stages,
    )
    _combine_kernel[(batch * hkv, m_blocks)](
        q, k_cache, v_cache, prefix_end, m_part, l_part, a_part, out,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *out.stride(),
        hkv, k, group, slots, num_splits, qk_scale,
        BLOCK_M=block_m, HEAD_DIM=dim, num_warps=num_warps,
    )
    return out


@torch.library.custom_op("args_fast::candidate_attention", mutates_args=())
def _candidate_attention_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            prefix_start: torch.Tensor, prefix_end: torch.Tensor,
                            scale: float, num_splits: int) -> torch.Tensor:
    return _launch(q, k_cache, v_cache, prefix_start, prefix_end, scale, num_splits)


@_candidate_attention_op.register_fake
def _(q, k_cache, v_cache, prefix_start, prefix_end, scale, num_splits):
    return torch.empty_like(q)


def candidate_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        prefix_start: torch.Tensor, prefix_end: torch.Tensor,
                        scale: float | None = None, num_splits: int | None = None) -> torch.Tensor:
    """Triton shared-prefix candidate attention; output ``(B, Hq, k, D)`` in q's dtype (and strides).

    ``scale`` defaults to ``D ** -0.5``; ``num_splits`` (prefix chunks per row) defaults to
    :func:`default_num_splits`. Only cheap shape asserts run here; slot values are not checked (that
    would sync), see :func:`check_slot_ranges`."""
    _assert_shapes(q, k_cache, v_cache, prefix_start, prefix_end)
    batch, hq, k, dim = q.shape
    hkv, slots = k_cache.shape[1], k_cache.shape[2]
    scale = dim ** -0.5 if scale is None else float(scale)
    if num_splits is None:
        m_blocks = triton.cdiv(k * (hq // hkv), tile_config(k * (hq // hkv), dim, q.dtype)[0])
        num_splits = default_num_splits(batch, hkv, m_blocks, slots - k, q.device)
    return torch.ops.args_fast.candidate_attention(q, k_cache, v_cache, prefix_start, prefix_end, scale, num_splits)


__all__ = ["candidate_attention", "check_slot_ranges", "default_num_splits", "supports_head_dim"]
