"""The reward runner of several rewards that are not all heads: each keeps its own runner and their
normalised rewards are mixed by the preference weights (see ``args_fast/rewards/kinds.py``)."""
from __future__ import annotations

import torch

from ...rewards.kinds import MultiObjective


class MultiRewardRunner:
    """RewardRunner mixing several: ``score`` gives ``sum_i w_i (r_i - mean_i) / std_i`` and keeps the
    normalised rewards ``(B, k, n)`` in ``objectives`` (the engine reads the chosen candidate's)."""

    def __init__(self, runners, multi: MultiObjective, device):
        self.runners, self.device = runners, device
        self.means = torch.tensor([o.mean for o in multi.objectives], dtype=torch.float32, device=device)
        self.stds = torch.tensor([o.std for o in multi.objectives], dtype=torch.float32, device=device)
        self.weights = torch.tensor(multi.weights, dtype=torch.float32, device=device)
        self.objectives = None

    def prefill(self, input_ids, attention_mask, max_new_tokens):
        for runner in self.runners:
            runner.prefill(input_ids, attention_mask, max_new_tokens)

    @torch.no_grad()
    def score(self, candidate_ids):
        raw = torch.stack([r.score(candidate_ids).to(self.device).float() for r in self.runners], -1)
        self.objectives = (raw - self.means) / self.stds
        # a zero weight must not turn another objective's inf into NaN: it contributes nothing
        terms = torch.where(self.weights == 0, torch.zeros_like(self.objectives), self.objectives * self.weights)
        return terms.sum(-1)

    def commit(self, choice, tokens):
        for runner in self.runners:
            runner.commit(choice, tokens)
