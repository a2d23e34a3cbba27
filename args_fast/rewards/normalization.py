"""Normalisation statistics of a reward: ``r' = (r - mean) / std``.

As Rewards-in-Context does, several rewards are put on one scale before a preference vector weighs
them: the statistics are the reward's mean and std on the policy's own replies to calibration prompts
(:func:`args_fast.calibrate` measures them, on the raw reward). :class:`NormalizedReward` keeps them
with the reward, and :func:`store_normalization` writes them into a Hugging Face reward model's config
(``args_fast_normalization``) so that a saved model carries them. Statistics given by a
:class:`NormalizedReward` take the place of any stored in the wrapped model's config. How several
rewards are mixed (the one rule, and where it is applied) is in ``args_fast/rewards/kinds.py``.

Every score is float32. The statistics are checked against these bounds, before any work:

* :data:`REWARD_LIMIT`: the bounds are made for raw rewards up to 1e8 in magnitude, as those of ``w``
  and the temperature are (``args_fast/validation.py``);
* ``(REWARD_LIMIT + |mean|) / std <= NORMALIZED_LIMIT`` (1e38, under float32's largest value 3.4e38):
  the reported ``(r - mean) / std`` of such a reward is a finite float32. With ``mean = 0`` this is
  ``std >= 1e-30``; a smaller std turns every reward into an infinity;
* ``std <= STD_MAX`` (1e28): a reward of 1e-8 still normalises to a normal float32 (>= 1e-36;
  float32's smallest normal is 1.2e-38), so small reward differences do not flush into subnormals
  or zero;
* ``|mean| <= MEAN_LIMIT`` (1e30).
"""
from __future__ import annotations

import copy

from ..validation import as_float
from .vocab import VocabReward

CONFIG_KEY = "args_fast_normalization"

REWARD_LIMIT = 1e8          # the largest |raw reward| the bounds keep finite (as for w in validation.py)
NORMALIZED_LIMIT = 1e38     # the largest |(r - mean) / std| accepted: float32's largest finite value is 3.4e38
STD_MAX = 1e28              # a reward of 1e-8 normalises to >= 1e-36, a normal float32
MEAN_LIMIT = 1e30


def check_statistics(mean, std, *, where: str = "") -> tuple[float, float]:
    """``(mean, std)`` as floats within the bounds above; ValueError naming the argument otherwise.
    ``where`` prefixes the message (e.g. the config the statistics were read from)."""
    try:
        mean = as_float("mean", mean, -MEAN_LIMIT, MEAN_LIMIT)
        std = as_float("std", std, 0.0, STD_MAX, open_low=True)
    except ValueError as err:
        raise ValueError(f"{where}{err}") from None
    smallest = (REWARD_LIMIT + abs(mean)) / NORMALIZED_LIMIT
    if std < smallest:
        raise ValueError(f"{where}std must be >= (1e8 + |mean|) / 1e38 = {smallest:.3g} with mean={mean:g}, got "
                         f"{std:g}: normalised rewards are float32, and a reward of up to 1e8 would normalise to "
                         f"{(REWARD_LIMIT + abs(mean)) / std:.3g}, past float32's range (3.4e38)")
    return mean, std


class NormalizedReward:
    """``reward`` (any one reward the decoder takes) with the statistics ARGS normalises it by:
    ``(r - mean) / std``. ``std`` must be > 0; both are checked against the float32 bounds of this
    module. They take the place of statistics stored in the reward model's config. Read-only."""

    __slots__ = ("_reward", "_mean", "_std")

    def __init__(self, reward, mean: float, std: float):
        if isinstance(reward, NormalizedReward):
            raise TypeError("reward is already a NormalizedReward: wrap the reward itself (its .reward) once")
        if isinstance(reward, (list, tuple)):
            raise TypeError("reward is a list: normalise each reward of the list, e.g. "
                            "[NormalizedReward(r, mean, std) for ...]")
        if reward is None or not (callable(reward) or isinstance(reward, VocabReward)):
            raise TypeError(f"reward must be a reward the decoder takes (a RewardHead, ImplicitReward, TokenReward, "
                            f"a Hugging Face reward model or a text callable), got {type(reward).__name__}")
        self._reward = reward
        self._mean, self._std = check_statistics(mean, std)

    reward = property(lambda self: self._reward, doc="the reward being normalised")
    mean = property(lambda self: self._mean, doc="subtracted from the reward")
    std = property(lambda self: self._std, doc="divides the reward, after the mean")

    def __repr__(self) -> str:
        return f"NormalizedReward({type(self.reward).__name__}, mean={self.mean:g}, std={self.std:g})"


def stored_statistics(reward) -> dict | None:
    """The statistics stored in a Hugging Face model's config, as stored (None when there are none)."""
    return getattr(getattr(reward, "config", None), CONFIG_KEY, None)


def normalization_of(reward) -> tuple[object, float, float]:
    """(the reward itself, mean, std): from a :class:`NormalizedReward` (which wins over a config's),
    from statistics stored in a Hugging Face model's config, or (reward, 0, 1)."""
    if isinstance(reward, NormalizedReward):
        return reward.reward, reward.mean, reward.std
    stats = stored_statistics(reward)
    if stats is None:
        return reward, 0.0, 1.0
    where = f"the reward model's config.{CONFIG_KEY}: "
    if not isinstance(stats, dict) or set(stats) != {"mean", "std"}:
        raise ValueError(f"{where}must be {{'mean': float, 'std': float > 0}}, got {stats!r}")
    mean, std = check_statistics(stats["mean"], stats["std"], where=where)
    return reward, mean, std


def carries_statistics(reward) -> bool:
    """True for a :class:`NormalizedReward` and for a model whose config stores statistics (even
    ``mean = 0, std = 1``): the decoder then takes it as several rewards of one."""
    return isinstance(reward, NormalizedReward) or stored_statistics(reward) is not None


def store_normalization(model, mean: float, std: float) -> None:
    """Keep the statistics in ``model.config`` (saved by ``save_pretrained``, read back by the decoder).

    ``model.config`` is replaced by a copy that carries them: Hugging Face models built from one config
    object share it, and the statistics of one reward must not normalise another."""
    if isinstance(model, NormalizedReward):
        raise TypeError("model is a NormalizedReward: pass the Hugging Face model it wraps (its .reward)")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(f"model must be a Hugging Face model (the statistics go into its config), got "
                        f"{type(model).__name__}; wrap other rewards in NormalizedReward(reward, mean, std)")
    mean, std = check_statistics(mean, std)
    own = copy.deepcopy(config)
    setattr(own, CONFIG_KEY, {"mean": mean, "std": std})
    model.config = own
