"""The torch reference of every per-step ARGS contract: the one definition each is tested against.

Each function here is the obviously-correct version of one contract. Fast implementations plug the
same contract into the engine: the Triton kernels in ``args_fast/engine/kernels`` (``candidate_attention``,
``select_commit``), the csrc extension ops in ``args_fast/engine/csrc_ops.py`` (``select_commit``,
``topk_logits``) and SDPA (``candidate_attention`` with :func:`candidate_visibility` as its mask).
Each has a test holding it to the function here on random inputs. The mask and position helpers at
the end are shared by every model runner, so a left-padded row means the same thing everywhere.

Contracts:

* :func:`topk_logits`: the policy's k candidates per row.
* :func:`select_candidates`: score = logit + w * reward, greedy or Gumbel-max choice, EOS bookkeeping.
* :func:`commit_slots_`: the winner's K/V becomes the next prefix slot, every layer at once.
* :func:`select_commit`: the fused step tail, ``select_candidates`` + ``commit_slots_`` in place.
* :func:`candidate_attention`: k candidate queries over a shared prefix plus each one's own slot.
"""
from __future__ import annotations

import torch


def topk_logits(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest logits per row: ``(values float32 (B, k) descending, ids int64 (B, k))``.

    Order, defined so that every backend hands the same candidates in the same order to the same
    uniforms: larger logit first; equal logits (common in bf16 / fp16) by LOWER token id first, also
    at the k-th place (the lowest ids among those tied there are taken); NaN above +inf; -0.0 == +0.0.
    That is ``torch.sort(logits.float(), descending=True, stable=True)[:, :k]``, computed without a
    sort over the vocabulary: torch.topk (whose order of ties is unspecified), and where ties could
    matter an exact select on order-preserving integer keys. On CPU the tie check is a host read
    (free there); elsewhere the exact select always runs, with no host sync (CUDA-graph safe)."""
    x = logits.float()
    if x.device.type == "cpu":
        values, ids = x.topk(k, dim=-1)
        last = values[:, -1:]
        internal = bool((values[:, 1:] == values[:, :-1]).any()) or bool(values.isnan().any())
        if not internal and not bool(((x == last).sum(-1) > (values == last).sum(-1)).any()):
            return values, ids
    return _topk_by_key(x, k)


def topk_logits_sync_free(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`topk_logits` with no host read on any device: always the exact select on integer keys,
    so a compiled step traces it as one graph (the CPU tie check of ``topk_logits`` reads the host)."""
    return _topk_by_key(logits.float(), k)


def _topk_by_key(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact :func:`topk_logits` order: each float32 logit becomes an int64 key, its order-preserving
    int32 image in the high half and ``V - 1 - id`` in the low half, so one integer top-k orders by
    value, then by lower id."""
    vocab = x.shape[-1]
    canon = torch.where(x.isnan(), torch.full_like(x, float("nan")), x) + 0.0   # one NaN pattern; -0.0 -> +0.0
    bits = canon.view(torch.int32)
    key = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)       # monotone in the float order
    key = (key << 32) | (vocab - 1 - torch.arange(vocab, device=x.device, dtype=torch.int64))
    ids = key.topk(k, dim=-1).indices
    return x.gather(-1, ids), ids


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


def select_commit(top_logits, top_ids, rewards, uniforms, w, temperature, finished, eos_ids, pad_id,
                  k_cache, v_cache, prefix_end):
    """The fused step tail: :func:`select_candidates` then :func:`commit_slots_`, with the in-place
    effects of the fast versions: ``finished`` gains this step's EOS rows, the winner's K/V moves to
    slot ``prefix_end`` in every layer of the ``(layers, B, Hkv, S, D)`` caches, and ``prefix_end``
    advances by one. Returns ``(choice int64 (B,), token (B,), reward float32 (B,))``."""
    choice, token, reward, new_finished = select_candidates(
        top_logits, top_ids, rewards, w, uniforms, temperature, finished, eos_ids, pad_id)
    finished.copy_(new_finished)
    commit_slots_(k_cache, v_cache, prefix_end, choice)
    prefix_end.add_(1)
    return choice, token, reward


def candidate_visibility(prefix_start: torch.Tensor, prefix_end: torch.Tensor, k: int, slots: int) -> torch.Tensor:
    """``(B, k, slots)`` bool: candidate j of row b sees the row's prefix ``[prefix_start, prefix_end)``
    and its own slot ``prefix_end + j``, nothing else. With k = 1 this is a plain decode step's mask."""
    pos = torch.arange(slots, device=prefix_end.device)
    start = prefix_start.long().view(-1, 1, 1)
    end = prefix_end.long().view(-1, 1, 1)
    j = torch.arange(k, device=prefix_end.device).view(1, k, 1)
    return ((pos >= start) & (pos < end)) | (pos == end + j)


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
    visible = candidate_visibility(prefix_start, prefix_end, k, slots)   # (B, k, S)
    att = att.masked_fill(~visible[:, None], float("-inf"))
    return torch.einsum("bhqs,bhsd->bhqd", att.softmax(-1), values).to(q.dtype)


# ------------------------------------------------------------------------ left-padded prompts
def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position id of each slot of a left-padded batch, counting real tokens only (what the row would
    have unpadded); padding slots get 0 (their outputs are never used)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prefix_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, 1, P, P)`` bool causal mask over a left-padded prompt: real tokens see the real tokens
    up to themselves; padding queries see only themselves, so no softmax row is empty (no NaN)."""
    valid = attention_mask.bool()
    p = valid.shape[1]
    causal = torch.ones(p, p, dtype=torch.bool, device=valid.device).tril()
    visible = causal[None] & valid[:, None, :]
    visible |= torch.eye(p, dtype=torch.bool, device=valid.device)[None]
    return visible[:, None]
