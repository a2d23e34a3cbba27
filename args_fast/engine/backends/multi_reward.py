"""The reward runner of several rewards that are not all heads: each keeps its own runner and their
raw rewards are mixed by the one rule of ``args_fast/rewards/kinds.py`` (:class:`~args_fast.rewards.kinds.Mixing`)."""
from __future__ import annotations

import torch

from ...rewards.kinds import MultiObjective


class MultiRewardRunner:
    """RewardRunner mixing several: ``score`` gives what ARGS ranks by, ``sum_i (w_i / std_i) r_i`` (the
    means shift every candidate of a row alike), and keeps the normalised rewards
    ``(r_i - mean_i) / std_i`` ``(B, k, n)`` in ``objectives`` (the engine reads the chosen candidate's)."""

    def __init__(self, runners, multi: MultiObjective, device):
        self.runners, self.device, self.mixing = runners, device, multi.mixing
        self.objectives = None

    def prefill(self, input_ids, attention_mask, max_new_tokens):
        for runner in self.runners:
            runner.prefill(input_ids, attention_mask, max_new_tokens)

    @torch.no_grad()
    def score(self, candidate_ids):
        raw = torch.stack([r.score(candidate_ids).to(self.device).float() for r in self.runners], -1)
        ranked, self.objectives = self.mixing.apply(raw)
        return ranked

    def commit(self, choice, tokens):
        for runner in self.runners:
            runner.commit(choice, tokens)
