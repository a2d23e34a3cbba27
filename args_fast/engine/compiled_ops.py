"""The compiled step's ops (backend ``static-compiled``): the torch references' contracts, written in the
form Inductor compiles well. Each is held to its reference in ``args_fast.engine.ops`` on random inputs
by ``tests/test_compiled_ops.py``.

* :func:`grouped_candidate_attention` (``ops.candidate_attention``): the query heads that share a K/V
  head are stacked as extra query rows, so grouped-query attention needs no copy of the K/V cache, and
  the scores are two batched matmuls and one fused masked softmax. Measured in the compiled fused step
  (default 135M models, bfloat16, P 256, 2-core AMD EPYC): torch SDPA over the cache took 5.2 ms per
  token (30 calls of 177 us: its CPU flash kernel is built for long query blocks), these two matmuls
  3.1 ms. Computed in float32 like the reference. The compiled step uses it for float32 models: in
  bfloat16 Inductor feeds it queries computed in float32 and never rounded to bfloat16 (eager and the
  reference round them), and a tiny test model's tokens then left the dtype's error, also with the
  queries rounded by bit operations or stored through an opaque copy first (then by a score gap of 6.4
  on another prompt: more than rounding, not understood yet). Inductor's ``emulate_precision_casts``
  fixes it at 20 % of the step's time. SDPA takes its inputs stored and keeps the dtype's error.
* :func:`select_commit_in_place` (``ops.select_commit``): the winner's K/V moved with ``index_put_``
  on the whole cache tensors, which Inductor lowers to an in-place write of the moved rows. The
  reference's ``scatter_`` made the compiled graph copy both caches twice per step (float32 default
  models, P 256: 5.8 ms per token, as much as a third of the step's time outside the matmuls).
"""
from __future__ import annotations

import torch

from . import ops


def grouped_candidate_attention(q, k_cache, v_cache, prefix_start, prefix_end, scale=None):
    """``ops.candidate_attention``: q (B, Hq, k, D) over one layer's (B, Hkv, S, D) caches -> (B, Hq, k, D)."""
    batch, hq, k, dim = q.shape
    hkv, slots = k_cache.shape[1], k_cache.shape[2]
    group = hq // hkv
    scale = dim ** -0.5 if scale is None else scale
    # query head h uses K/V head h // group (what repeat_interleave gives the reference): the group's
    # heads are consecutive, so (B, Hq, k, D) -> (B, Hkv, group * k, D) is a view
    rows = q.float().reshape(batch, hkv, group * k, dim)
    att = (rows @ k_cache.float().transpose(-1, -2)) * scale                   # (B, Hkv, group * k, S)
    visible = ops.candidate_visibility(prefix_start, prefix_end, k, slots)    # (B, k, S)
    att = att.view(batch, hkv, group, k, slots).masked_fill(~visible[:, None, None], float("-inf"))
    out = att.softmax(-1).view(batch, hkv, group * k, slots) @ v_cache.float()
    return out.view(batch, hq, k, dim).to(q.dtype)


def commit_slots_in_place(k_cache, v_cache, prefix_end, choice) -> None:
    """``ops.commit_slots_``: row b's candidate ``choice[b]`` (slot ``prefix_end[b] + choice[b]``) moves
    to slot ``prefix_end[b]`` in every layer of the ``(layers, B, H_kv, S, D)`` caches."""
    n_layers, batch = k_cache.shape[:2]
    layers = torch.arange(n_layers, device=k_cache.device)[:, None]          # (L, 1)
    rows = torch.arange(batch, device=k_cache.device)                          # (B,)
    dst = prefix_end.long()
    src = dst + choice.long()
    for cache in (k_cache, v_cache):
        # (L, B) index pairs with the head dim between them: both sides are (L, B, H_kv, D); the read is
        # materialised before the write, so a winner at its own slot (choice 0) copies onto itself
        cache[layers, rows, :, dst] = cache[layers, rows, :, src]


def select_commit_in_place(top_logits, top_ids, rewards, uniforms, w, temperature, finished, eos_ids, pad_id,
                           k_cache, v_cache, prefix_end):
    """``ops.select_commit`` with :func:`commit_slots_in_place`."""
    choice, token, reward, new_finished = ops.select_candidates(
        top_logits, top_ids, rewards, w, uniforms, temperature, finished, eos_ids, pad_id)
    finished.copy_(new_finished)
    commit_slots_in_place(k_cache, v_cache, prefix_end, choice)
    prefix_end.add_(1)
    return choice, token, reward
