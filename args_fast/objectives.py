"""Several rewards at once: ARGS with a preference vector over objectives.

    score(v) = logit(v) + sum_i w_i * r_i([x, v])      (r_i normalised where a reward carries statistics)

``args_fast.generate(policy, [rm_1, ..., rm_n], ..., w=[w_1, ..., w_n])``. Any reward the decoder
takes may be in the list. How a step runs:

* every reward is a head on the policy's own backbone (a :class:`~args_fast.reward_head.RewardHead`,
  or a ``*ForSequenceClassification`` sharing the policy's backbone tensors): the heads become one
  ``(n, hidden)`` head with the normalisation folded into its rows and ``mix = w``, and the fused
  step runs it on every backend: one policy pass per token for all n rewards;
* otherwise each reward keeps its own runner (a prefix-cached pass per separate reward model, one
  decode per extra LM of a vocabulary reward, a text call) and :class:`MultiRewardRunner` mixes them;
  the ``reference`` and ``hf`` backends run this.

Normalisation (as Rewards-in-Context does): ``r_i' = (r_i - mean_i) / std_i``, the statistics of the
reward on the policy's own replies to calibration prompts (:func:`calibrate`), kept with the reward:
:class:`NormalizedReward` wraps it, and :func:`store_normalization` writes them into a Hugging Face
reward model's config (``args_fast_normalization``) so a saved model carries them. A preference
vector then weighs objectives on one scale. ``.rewards`` of a multi-reward run is ``(B, T, n)``: each
objective's (normalised) reward of the chosen continuation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CONFIG_KEY = "args_fast_normalization"


class NormalizedReward:
    """``reward`` (any kind the decoder takes) with the statistics ARGS normalises it by:
    ``(r - mean) / std``. ``std`` must be > 0."""

    def __init__(self, reward, mean: float, std: float):
        from .decoder import as_float
        if isinstance(reward, NormalizedReward):
            raise TypeError("reward is already a NormalizedReward")
        self.reward = reward
        self.mean = as_float("mean", mean, -1e30, 1e30)
        self.std = as_float("std", std, 0.0, 1e30, open_low=True)

    def __repr__(self) -> str:
        return f"NormalizedReward({type(self.reward).__name__}, mean={self.mean:g}, std={self.std:g})"


def normalization_of(reward) -> tuple[object, float, float]:
    """(the reward itself, mean, std): from a :class:`NormalizedReward`, from statistics stored in a
    Hugging Face model's config, or (reward, 0, 1)."""
    if isinstance(reward, NormalizedReward):
        return reward.reward, reward.mean, reward.std
    stats = getattr(getattr(reward, "config", None), CONFIG_KEY, None)
    if stats is None:
        return reward, 0.0, 1.0
    if not isinstance(stats, dict) or set(stats) != {"mean", "std"}:
        raise ValueError(f"the reward model's config.{CONFIG_KEY} must be {{'mean': float, 'std': float > 0}}, "
                         f"got {stats!r}")
    checked = NormalizedReward(reward, stats["mean"], stats["std"])
    return reward, checked.mean, checked.std


def is_normalized(reward) -> bool:
    return normalization_of(reward)[1:] != (0.0, 1.0)


def store_normalization(model, mean: float, std: float) -> None:
    """Keep the statistics in ``model.config`` (saved by ``save_pretrained``, read back by the decoder)."""
    checked = NormalizedReward(model, mean, std)
    setattr(model.config, CONFIG_KEY, {"mean": checked.mean, "std": checked.std})


@torch.no_grad()
def calibrate(policy, reward, prompts_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int = 48,
              tokenizer=None, reward_tokenizer=None, eos_token_id=None, pad_token_id=None,
              batch_size: int = 16) -> NormalizedReward:
    """``reward`` normalised by its mean and std over the policy's greedy replies to the calibration
    prompts (left-padded ``prompts_ids``): the reward of each whole reply as ARGS reports it (the last
    step's reward at ``w = 0``, where ARGS is greedy decoding)."""
    from .decoder import ARGSDecoder
    decoder = ARGSDecoder(policy, reward, k=1, w=0.0, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                          pad_token_id=pad_token_id, tokenizer=tokenizer, reward_tokenizer=reward_tokenizer)
    values = []
    for i in range(0, prompts_ids.shape[0], batch_size):
        out = decoder.generate(prompts_ids[i:i + batch_size], attention_mask[i:i + batch_size])
        for row in out.rewards:
            real = row[~row.isnan()]
            if len(real):
                values.append(float(real[-1]))
    if len(values) < 2:
        raise ValueError(f"calibration needs at least 2 replies with a reward, got {len(values)}")
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    if not std > 0:
        raise ValueError("the reward is constant on the calibration replies: no scale to normalise by")
    return NormalizedReward(reward, mean, std)


@dataclass
class Objective:
    """One reward of a multi-reward decoder, classified: ``kind`` as ``registry.Models.reward_kind``,
    ``engine_reward`` what that kind's runner takes."""
    kind: str
    engine_reward: object
    model: object          # the reward as the user gave it (unwrapped)
    mean: float
    std: float


@dataclass
class MultiObjective:
    """What the engines get for ``reward_kind == "multi"``: the objectives and the user's weights."""
    objectives: list[Objective]
    weights: list[float]


def combine_heads(policy, heads, weights, means, stds):
    """One :class:`~args_fast.reward_head.RewardHead` whose row i is head i normalised,
    ``(W_i h + b_i - mean_i) / std_i``, mixed by ``weights``."""
    from .reward_head import RewardHead
    rows, biases = [], []
    for head, mean, std in zip(heads, means, stds):
        weight = head.linear.weight.detach().float()
        bias = head.linear.bias.detach().float() if head.linear.bias is not None else torch.zeros(head.n)
        if head.n != 1:
            raise ValueError("a multi-head RewardHead in a list of rewards: pass its heads as separate RewardHeads")
        rows.append(weight[0] / std)
        biases.append((bias[0].to(weight.device) - mean) / std)
    return RewardHead(policy, torch.stack(rows), torch.stack(biases), mix=torch.tensor(weights, dtype=torch.float32))


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
