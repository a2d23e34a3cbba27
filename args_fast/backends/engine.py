"""The engine contract the decoding loop drives, and the engine built from separate runners.

An engine owns all per-request state (caches, finished flags) and exposes two calls:

* ``prefill(input_ids, attention_mask)``: left-padded prompts in.
* ``step(uniforms, last) -> (tokens (B,), chosen_rewards (B,), finished (B,) bool)``: one ARGS step:
  policy top-k, reward of every candidate, select (greedy if ``uniforms`` is None, else Gumbel-max
  on them), and, unless ``last``, commit the chosen token to both models' contexts.

``ComposedEngine`` builds a step from a policy runner, a reward runner and the select op (reference,
torch and text backends). Compiled backends provide their own engine whose step can be one fused,
graph-captured call; the loop does not change.
"""
from __future__ import annotations

import torch

from ..ops import select_candidates


class ComposedEngine:
    def __init__(self, policy, reward, *, k: int, w: float, temperature: float, eos_ids, pad_id: int,
                 select=select_candidates):
        self.policy, self.reward, self.select = policy, reward, select
        self.k, self.w, self.temperature, self.pad_id = k, w, temperature, pad_id
        self.eos_ids = eos_ids

    def prefill(self, input_ids, attention_mask):
        self.logits = self.policy.prefill(input_ids, attention_mask)
        self.reward.prefill(input_ids, attention_mask)
        device = self.logits.device
        self.finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
        self.eos = torch.tensor(self.eos_ids, device=device) if self.eos_ids else None

    def step(self, uniforms, last: bool = False):
        top_logits, top_ids = self.logits.topk(self.k, dim=-1)
        rewards = self.reward.score(top_ids).to(top_logits.device)
        choice, token, chosen_reward, self.finished = self.select(
            top_logits, top_ids, rewards, self.w, uniforms, self.temperature, self.finished, self.eos, self.pad_id)
        if not last:
            self.reward.commit(choice, token)
            self.logits = self.policy.step(token)
        return token, chosen_reward, self.finished
