"""The reference backend: the paper's Algorithm 1, literally, one row at a time.

The policy runs each row alone, unpadded, with its ordinary Hugging Face KV cache. Every candidate's
reward is a full forward of the whole candidate sequence (prompt + generated + candidate) through the
reward model, with no cache at all. Slow on purpose; it is the oracle every other backend is tested
against.
"""
from __future__ import annotations

import torch

from ...hf import cache_kwarg, output_cache, reward_of_hidden


def _rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    return [ids[mask.bool()] for ids, mask in zip(input_ids, attention_mask)]


class ReferencePolicy:
    def __init__(self, policy):
        self.model = policy
        self.device = policy.device

    @torch.no_grad()
    def prefill(self, input_ids, attention_mask, max_new_tokens):
        self.caches, logits = [], []
        for row in _rows(input_ids.to(self.device), attention_mask.to(self.device)):
            out = self.model(input_ids=row[None], use_cache=True)
            self.caches.append(output_cache(out))
            logits.append(out.logits[0, -1].float())
        return torch.stack(logits)

    @torch.no_grad()
    def step(self, tokens):
        logits = []
        for b, token in enumerate(tokens.to(self.device)):
            out = self.model(input_ids=token.view(1, 1), use_cache=True, **{cache_kwarg(self.model): self.caches[b]})
            self.caches[b] = output_cache(out)
            logits.append(out.logits[0, -1].float())
        return torch.stack(logits)


class ReferenceReward:
    """Reward of a candidate = score head on the last hidden state of the full, unpadded sequence.

    ``reward`` is a scalar ``*ForSequenceClassification`` model, or a
    :class:`~args_fast.rewards.head.RewardHead` (then the backbone is the policy's own)."""

    def __init__(self, reward):
        from ...rewards.head import RewardHead
        # head(hidden) -> (the reward ranked by, each head's reward when several heads are mixed, else None)
        if isinstance(reward, RewardHead):
            self.backbone, self.head = reward.policy.base_model, reward.score
        else:
            self.backbone, self.head = reward.base_model, lambda hidden: (reward_of_hidden(reward, hidden), None)
        self.device = next(self.backbone.parameters()).device
        self.forward_calls = 0

    def prefill(self, input_ids, attention_mask, max_new_tokens):
        self.contexts = _rows(input_ids.to(self.device), attention_mask.to(self.device))

    @torch.no_grad()
    def score(self, candidate_ids):
        rewards, objectives = [], []
        for context, candidates in zip(self.contexts, candidate_ids.to(self.device)):
            k = candidates.shape[0]
            sequences = torch.cat([context.expand(k, -1), candidates[:, None]], dim=1)
            hidden = self.backbone(input_ids=sequences, use_cache=False).last_hidden_state[:, -1]
            self.forward_calls += 1
            reward, per_head = self.head(hidden)
            rewards.append(reward)
            objectives.append(per_head)
        if objectives[0] is not None:
            self.objectives = torch.stack(objectives)        # (B, k, n): the composed engine reports them
        return torch.stack(rewards)

    def commit(self, choice, tokens):
        tokens = tokens.to(self.device)
        self.contexts = [torch.cat([c, t.view(1)]) for c, t in zip(self.contexts, tokens)]
