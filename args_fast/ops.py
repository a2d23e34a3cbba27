"""Torch reference implementations of the per-step ARGS ops.

These are the obviously-correct definitions that every backend shares or is tested against:
the Triton kernels in ``args_fast/kernels`` and the compiled ops in ``csrc/`` each have a test
holding them to the functions here.
"""
from __future__ import annotations

import torch


def args_scores(top_logits: torch.Tensor, rewards: torch.Tensor, w: float) -> torch.Tensor:
    """score = logit + w * reward, in float32 (paper eq. 2 with the raw logit, as the official code)."""
    return top_logits.float() + w * rewards.float()


def select_candidates(
    top_logits: torch.Tensor,   # (B, k) policy logits of the top-k tokens, descending
    top_ids: torch.Tensor,      # (B, k) their token ids
    rewards: torch.Tensor,      # (B, k) reward of context + candidate
    w: float,
    uniforms: torch.Tensor | None,  # (B, k) U(0,1) draws for stochastic mode; None = greedy
    temperature: float,
    finished: torch.Tensor,     # (B,) bool, rows that already emitted EOS
    eos_ids: torch.Tensor | None,   # (E,) long, tokens that end a row; None = never stop
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick one of the k candidates per row.

    Greedy: argmax of the score. Stochastic: Gumbel-max, argmax(score / T - log(-log u)), which is
    an exact draw from softmax(score / T) over the k candidates.

    Returns ``(choice, token, chosen_reward, new_finished)``: ``choice`` indexes the k candidates,
    ``token`` is the emitted token (``pad_id`` for rows finished before this step), the reward is nan
    for those rows, and ``new_finished`` adds the rows whose token is an EOS.
    """
    scores = args_scores(top_logits, rewards, w)
    if uniforms is not None:
        u = uniforms.to(scores.device, torch.float32)
        # u is in [0, 1): clamp away 0 so the Gumbel noise is finite; 1 - eps keeps log(-log u) finite too.
        u = u.clamp(min=torch.finfo(torch.float32).tiny, max=1.0 - torch.finfo(torch.float32).eps)
        scores = scores / temperature - torch.log(-torch.log(u))
    choice = scores.argmax(dim=-1)
    token = top_ids.gather(1, choice[:, None]).squeeze(1)
    reward = rewards.float().gather(1, choice[:, None]).squeeze(1)
    token = torch.where(finished, torch.full_like(token, pad_id), token)
    reward = torch.where(finished, torch.full_like(reward, float("nan")), reward)
    if eos_ids is None:
        new_finished = finished
    else:
        # an elementwise compare, not torch.isin: isin switches to a sort + unique path for longer
        # EOS lists, which syncs the host and cannot be captured in a CUDA graph
        new_finished = finished | (token[:, None] == eos_ids.to(token.device)[None, :]).any(-1)
    return choice, token, reward, new_finished


def commit_slots_(k_cache: torch.Tensor, v_cache: torch.Tensor, prefix_end: torch.Tensor,
                  choice: torch.Tensor) -> None:
    """Copy each row's winning candidate K/V into its next prefix slot, for every layer at once.

    Caches are ``(layers, B, H_kv, S, D)``; row ``b``'s candidates sit at slots
    ``prefix_end[b] + j`` and the winner ``choice[b]`` moves to slot ``prefix_end[b]``.
    The caller advances ``prefix_end`` afterwards.
    """
    n_layers, batch, heads, _, dim = k_cache.shape
    src = (prefix_end.long() + choice.long()).view(1, batch, 1, 1, 1).expand(n_layers, batch, heads, 1, dim)
    dst = prefix_end.long().view(1, batch, 1, 1, 1).expand(n_layers, batch, heads, 1, dim)
    for cache in (k_cache, v_cache):
        cache.scatter_(3, dst, cache.gather(3, src))


def candidate_attention(
    q: torch.Tensor,            # (B, Hq, k, D) queries of the k candidates
    k_cache: torch.Tensor,      # (B, Hkv, S, D) one layer's keys: prefix, then the k candidate slots
    v_cache: torch.Tensor,      # (B, Hkv, S, D)
    prefix_start: torch.Tensor,  # (B,) int, first valid prefix slot (left padding before it)
    prefix_end: torch.Tensor,    # (B,) int, one past the last prefix slot; candidate j at prefix_end + j
    scale: float | None = None,
) -> torch.Tensor:
    """Shared-prefix candidate attention, the plain way: every candidate query attends over its row's
    prefix [prefix_start, prefix_end) plus its own slot prefix_end + j, computed in float32."""
    batch, hq, k, dim = q.shape
    hkv, slots = k_cache.shape[1], k_cache.shape[2]
    group = hq // hkv
    scale = dim ** -0.5 if scale is None else scale
    keys = k_cache.float().repeat_interleave(group, dim=1)   # (B, Hq, S, D)
    values = v_cache.float().repeat_interleave(group, dim=1)
    att = torch.einsum("bhqd,bhsd->bhqs", q.float(), keys) * scale
    pos = torch.arange(slots, device=q.device)
    start = prefix_start.long().view(batch, 1, 1)
    end = prefix_end.long().view(batch, 1, 1)
    j = torch.arange(k, device=q.device).view(1, k, 1)
    visible = ((pos >= start) & (pos < end)) | (pos == end + j)   # (B, k, S)
    att = att.masked_fill(~visible[:, None], float("-inf"))
    return torch.einsum("bhqs,bhsd->bhqd", att.softmax(-1), values).to(q.dtype)
