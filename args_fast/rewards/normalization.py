"""Normalisation statistics of a reward: ``r' = (r - mean) / std``.

As Rewards-in-Context does, several rewards are put on one scale before a preference vector weighs
them: the statistics are the reward's mean and std on the policy's own replies to calibration prompts
(:func:`args_fast.calibrate` measures them). :class:`NormalizedReward` keeps them with the reward, and
:func:`store_normalization` writes them into a Hugging Face reward model's config
(``args_fast_normalization``) so that a saved model carries them. How several rewards are decoded is in
``args_fast/rewards/kinds.py``.
"""
from __future__ import annotations

from ..validation import as_float

CONFIG_KEY = "args_fast_normalization"


class NormalizedReward:
    """``reward`` (any kind the decoder takes) with the statistics ARGS normalises it by:
    ``(r - mean) / std``. ``std`` must be > 0."""

    def __init__(self, reward, mean: float, std: float):
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
