"""Fused ARGS select + slot commit in Triton: one step's decision and cache bookkeeping, no host sync.

Per row b (the torch reference is :func:`args_fast.engine.ops.select_commit`):

* score = logit + w * reward (fp32); greedy argmax, or Gumbel-max argmax(score / T - log(-log u)) on
  the passed uniforms, u clamped to [tiny, 1 - eps] as ``ops.select_candidates``; ties and NaNs
  resolve like ``torch.argmax`` (first NaN, else first maximum);
* token = top_ids[choice] (``pad_id`` for rows finished before this step), reward = rewards[choice]
  (nan for those rows); ``finished |= token in eos_ids`` (in place);
* the winner's K/V moves from slot ``prefix_end[b] + choice[b]`` to slot ``prefix_end[b]`` in every
  layer of the ``(layers, B, Hkv, S, D)`` caches, and ``prefix_end += 1`` (both in place).

Two launches: ``_select_kernel`` (one program per row) writes the outputs and bumps ``prefix_end``;
``_commit_kernel`` (one program per layer x row x kv head) then copies one K row and one V row,
reading the already-bumped ``prefix_end - 1``. A single launch would race: the program advancing
``prefix_end[b]`` cannot know that every copy program of row b has read it.

Bit-exactness with the torch reference on CUDA: the select kernel is compiled without FMA contraction
(``enable_fp_fusion=False``: ``logit + w * r`` rounds twice, like torch's two ops) and takes logs
with libdevice's ``logf``, which torch's CUDA ``log`` computes too. ``score / T`` follows torch per
device: on CUDA torch multiplies by the reciprocal of a Python-scalar divisor, taken in fp32 of the
fp32-rounded divisor (ATen's ``div_true_kernel_cuda``: ``opmath_t(1.0) / iter.scalar_value<opmath_t>(2)``,
i.e. ``fp32(1 / fp32(T))``; 1/T in double differs by an ulp for T = 0.55, 0.85, ...), on CPU it divides exactly
(``div_rn``; Triton's plain ``/`` is approximate on GPUs). In the CPU interpreter the log is numpy's,
which differs from torch's CPU log in the last bit for some inputs; that can only flip a choice whose
Gumbel-perturbed scores tie to within an ulp.

``w`` and ``temperature`` are Python floats, passed as kernel scalars: a captured CUDA graph replays
the values it was captured with, which is right for ARGS (both are fixed for a whole ``generate``);
capture a new graph to change them.
"""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.language.extra import libdevice


FP32_TINY = torch.finfo(torch.float32).tiny
FP32_ONE_MINUS_EPS = 1.0 - torch.finfo(torch.float32).eps   # exactly representable in fp32


@triton.jit
def _select_kernel(
    Logits, Ids, Rewards, U, Finished, Eos, End, Choice, Token, Reward,
    sl_b, sl_k, si_b, si_k, sr_b, sr_k, su_b, su_k,
    n_cand, n_eos, w, temperature, inv_temperature, pad_id,
    BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr, STOCHASTIC: tl.constexpr, HAS_EOS: tl.constexpr,
    LIBDEVICE: tl.constexpr, DIV_BY_MUL: tl.constexpr, TINY: tl.constexpr, ONE_MINUS_EPS: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    ok = offs < n_cand
    logit = tl.load(Logits + b * sl_b + offs * sl_k, mask=ok, other=0.0).to(tl.float32)
    reward = tl.load(Rewards + b * sr_b + offs * sr_k, mask=ok, other=0.0).to(tl.float32)
    score = logit + w * reward
    if STOCHASTIC:
        u = tl.load(U + b * su_b + offs * su_k, mask=ok, other=0.5).to(tl.float32)
        u = tl.minimum(tl.maximum(u, TINY, propagate_nan=tl.PropagateNan.ALL), ONE_MINUS_EPS,
                       propagate_nan=tl.PropagateNan.ALL)
        if LIBDEVICE:
            gumbel = libdevice.log(-libdevice.log(u))
        else:
            gumbel = tl.log(-tl.log(u))
        if DIV_BY_MUL:
            score = score * inv_temperature - gumbel
        else:
            score = tl.math.div_rn(score, temperature) - gumbel
    # torch.argmax: the first NaN if any, else the first index of the maximum.
    big = BLOCK_K
    is_nan = (score != score) & ok
    first_nan = tl.min(tl.where(is_nan, offs, big), 0)
    clean = tl.where(ok & ~is_nan, score, float("-inf"))
    best = tl.max(clean, 0)
    first_max = tl.min(tl.where(ok & (clean == best), offs, big), 0)
    choice = tl.where(first_nan < big, first_nan, first_max)

    token = tl.load(Ids + b * si_b + choice * si_k)
    chosen = tl.load(Rewards + b * sr_b + choice * sr_k).to(tl.float32)
    done = tl.load(Finished + b) != 0
    token = tl.where(done, pad_id, token).to(Token.dtype.element_ty)
    chosen = tl.where(done, float("nan"), chosen)
    if HAS_EOS:
        offs_e = tl.arange(0, BLOCK_E)
        eos = tl.load(Eos + offs_e, mask=offs_e < n_eos, other=0)
        hit = tl.sum(((eos == token) & (offs_e < n_eos)).to(tl.int32), 0) > 0
        done = done | hit
    tl.store(Choice + b, choice.to(tl.int64))
    tl.store(Token + b, token)
    tl.store(Reward + b, chosen)
    tl.store(Finished + b, done.to(tl.uint8))
    tl.store(End + b, tl.load(End + b) + 1)


@triton.jit
def _commit_kernel(
    Kc, Vc, End, Choice,
    sk_l, sk_b, sk_h, sk_s, sk_d, sv_l, sv_b, sv_h, sv_s, sv_d,
    n_batch, n_heads, n_slots, dim_k, dim_v,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid = tl.program_id(0)
    layer = (pid // (n_batch * n_heads)).to(tl.int64)
    b = ((pid // n_heads) % n_batch).to(tl.int64)
    h = (pid % n_heads).to(tl.int64)
    dst = tl.load(End + b).to(tl.int64) - 1    # the select kernel already advanced prefix_end
    src = dst + tl.load(Choice + b)
    ok = (dst >= 0) & (src >= 0) & (src < n_slots)   # memory safety only: indices are not validated
    offs = tl.arange(0, BLOCK_DK)
    mask = offs < tl.where(ok, dim_k, 0)   # (block & scalar mask is mistyped by the interpreter)
    base = Kc + layer * sk_l + b * sk_b + h * sk_h
    row = tl.load(base + src * sk_s + offs * sk_d, mask=mask)
    tl.store(base + dst * sk_s + offs * sk_d, row, mask=mask)
    offs = tl.arange(0, BLOCK_DV)
    mask = offs < tl.where(ok, dim_v, 0)
    base = Vc + layer * sv_l + b * sv_b + h * sv_h
    row = tl.load(base + src * sv_s + offs * sv_d, mask=mask)
    tl.store(base + dst * sv_s + offs * sv_d, row, mask=mask)


# Imported explicitly: Triton loads triton.runtime.interpreter only when TRITON_INTERPRET=1, so
# the attribute path fails on GPU machines.
INTERPRETED = isinstance(_select_kernel, InterpretedFunction)


def _assert_shapes(top_logits, top_ids, rewards, uniforms, finished, k_cache, v_cache, prefix_end):
    """Cheap shape asserts only (no host sync): arguments are validated once at the public API and
    when an engine allocates, not per step."""
    batch, k = top_logits.shape
    assert top_ids.shape == rewards.shape == (batch, k), "top_ids, rewards: (B, k) like top_logits"
    assert uniforms is None or uniforms.shape == (batch, k), "uniforms: (B, k) like top_logits"
    assert finished.shape == prefix_end.shape == (batch,) and finished.dtype == torch.bool, "finished bool (B,)"
    assert k_cache.dim() == 5 and k_cache.shape[:4] == v_cache.shape[:4] and k_cache.shape[1] == batch, \
        "k_cache, v_cache: (layers, B, Hkv, S, D)"


def _fp32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def _launch(top_logits, top_ids, rewards, uniforms, w, temperature, finished, eos_ids, pad_id,
            k_cache, v_cache, prefix_end):
    batch, k = top_logits.shape
    device = top_logits.device
    choice = torch.empty(batch, dtype=torch.int64, device=device)
    token = torch.empty(batch, dtype=top_ids.dtype, device=device)
    reward = torch.empty(batch, dtype=torch.float32, device=device)
    stochastic = uniforms is not None
    temperature = float(temperature) if stochastic else 1.0   # unused when greedy (may be 0 there)
    n_eos = 0 if eos_ids is None else eos_ids.numel()
    u = uniforms if stochastic else rewards                 # never read when greedy
    eos = eos_ids if n_eos else prefix_end                  # never read without eos ids
    _select_kernel[(batch,)](
        top_logits, top_ids, rewards, u, finished.view(torch.uint8), eos, prefix_end, choice, token, reward,
        *top_logits.stride(), *top_ids.stride(), *rewards.stride(), *u.stride(),
        k, n_eos, float(w), temperature, _fp32(1.0 / _fp32(temperature)), pad_id,
        BLOCK_K=triton.next_power_of_2(k), BLOCK_E=triton.next_power_of_2(max(n_eos, 1)),
        STOCHASTIC=stochastic, HAS_EOS=n_eos > 0, LIBDEVICE=not INTERPRETED, DIV_BY_MUL=device.type == "cuda",
        TINY=FP32_TINY, ONE_MINUS_EPS=FP32_ONE_MINUS_EPS,
        enable_fp_fusion=False, num_warps=1,
    )
    layers, _, heads, slots, dim_k = k_cache.shape
    if k_cache.numel():
        _commit_kernel[(layers * batch * heads,)](
            k_cache, v_cache, prefix_end, choice, *k_cache.stride(), *v_cache.stride(),
            batch, heads, slots, dim_k, v_cache.shape[4],
            BLOCK_DK=triton.next_power_of_2(dim_k), BLOCK_DV=triton.next_power_of_2(v_cache.shape[4]),
            num_warps=1 if max(dim_k, v_cache.shape[4]) <= 128 else 2,
        )
    return choice, token, reward


@torch.library.custom_op("args_fast::select_commit", mutates_args=("finished", "k_cache", "v_cache", "prefix_end"))
def _select_commit_op(top_logits: torch.Tensor, top_ids: torch.Tensor, rewards: torch.Tensor,
                      uniforms: torch.Tensor | None, w: float, temperature: float, finished: torch.Tensor,
                      eos_ids: torch.Tensor | None, pad_id: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      prefix_end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch(top_logits, top_ids, rewards, uniforms, w, temperature, finished, eos_ids, pad_id,
                   k_cache, v_cache, prefix_end)


@_select_commit_op.register_fake
def _(top_logits, top_ids, rewards, uniforms, w, temperature, finished, eos_ids, pad_id, k_cache, v_cache, prefix_end):
    batch = top_logits.shape[0]
    return (top_logits.new_empty(batch, dtype=torch.int64), top_ids.new_empty(batch),
            top_logits.new_empty(batch, dtype=torch.float32))


def select_commit(top_logits: torch.Tensor, top_ids: torch.Tensor, rewards: torch.Tensor,
                  uniforms: torch.Tensor | None, w: float, temperature: float, finished: torch.Tensor,
                  eos_ids: torch.Tensor | None, pad_id: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  prefix_end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fused ARGS step tail; returns ``(choice int64, token (top_ids' dtype), reward fp32)`` and
    updates ``finished``, both caches and ``prefix_end`` in place. Slot values are not validated (no
    sync): ``prefix_end + k <= S`` is the caller's invariant."""
    _assert_shapes(top_logits, top_ids, rewards, uniforms, finished, k_cache, v_cache, prefix_end)
    return torch.ops.args_fast.select_commit(top_logits, top_ids, rewards, uniforms, float(w),
                                             float(temperature), finished, eos_ids, pad_id,
                                             k_cache, v_cache, prefix_end)


__all__ = ["select_commit"]
