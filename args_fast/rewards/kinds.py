"""What kind of reward a decoder was given, decided once, before any engine is built, and the one
rule by which several rewards are mixed.

The kinds (the engines differ by kind, see ``args_fast.engine.backends.registry``):

* ``"head"``: a :class:`~args_fast.rewards.head.RewardHead` on the policy, or a one-label
  ``*ForSequenceClassification`` whose backbone is the policy's own tensors (read off as a head), or
  several of these (:class:`ObjectiveHeads`, one linear over all their rows): the fused step, one
  policy pass per token;
* ``"vocab"``: a :class:`~args_fast.rewards.vocab.VocabReward`: token rewards over the vocabulary;
* ``"cached"``: a separate causal score model on the policy's vocabulary (prefix-cached pass);
* ``"text"``: a model read through its own ``reward_tokenizer``, or a callable
  ``reward(prompts, responses)``: candidates decoded and scored as text;
* ``"multi"``: several rewards not all heads (a :class:`MultiObjective`), each on its own runner.

The mixing rule
---------------
Each reward is one objective with one scalar reward ``r_i``: a RewardHead's is its own
``mix . (W h + b)`` (``W h + b`` for one row without ``mix``), whether it stands alone, in a list or in
a :class:`~args_fast.rewards.normalization.NormalizedReward`; so a multi-head RewardHead with a mix is
one objective, its mixed scalar, normalised by the statistics given for it. Every other kind's is the
reward it returns. Each objective has statistics ``mean_i, std_i`` (from a NormalizedReward, else
stored in the model's config, else 0 and 1) and a weight ``w_i``. The candidates of a row are ranked by

    score = logit + sum_i w_i * (r_i - mean_i) / std_i

A list of rewards (a list of one included), or one reward with statistics, is "several rewards": ``w``
is one weight per reward, and ``.rewards`` of ``generate`` are the normalised ``(r_i - mean_i) / std_i``
of the chosen continuation, ``(B, T, n)`` (``(B, T)`` when n = 1). One plain reward is the case n = 1,
mean 0, std 1: ``score = logit + w * r``, ``.rewards`` = r.

``sum_i w_i * mean_i / std_i`` is the same for every candidate of a row, so it changes no choice, greedy
or sampled: the engines rank by ``logit + sum_i (w_i / std_i) * r_i`` and only the reported rewards
subtract the means (in float64, then rounded to float32), so a large mean cannot swamp the reward's
differences in float32. A zero weight contributes nothing, even where its objective is infinite.
:class:`Mixing` is that rule, applied in one place: :meth:`Mixing.apply`, called by the combined heads
(:class:`ObjectiveHeads`, the fused and reference head paths) and by
:class:`~args_fast.engine.backends.multi_reward.MultiRewardRunner` (every other mix).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy
import torch

from .. import hf
from ..validation import W_LIMIT, as_float
from .head import RewardHead, shares_backbone
from .normalization import carries_statistics, normalization_of
from .vocab import VocabReward


class Mixing:
    """The mixing rule of the module docstring, for n objectives on ``device``: :meth:`apply` turns
    each candidate's raw rewards ``(..., n)`` into (what ARGS ranks by ``(...)``, the normalised
    rewards it reports ``(..., n)``)."""

    def __init__(self, weights, means, stds, device):
        weights, means, stds = (torch.tensor(v, dtype=torch.float64) for v in (weights, means, stds))
        # w_i / std_i: the weight on the raw reward (classify checks it against W_LIMIT)
        self.factors = (weights / stds).to(device, torch.float32)
        self.means, self.stds = means.to(device), stds.to(device)

    def rank(self, raw: torch.Tensor) -> torch.Tensor:
        """``sum_i (w_i / std_i) * r_i``: the score less ``logit`` and the row's constant shift."""
        terms = raw * self.factors
        # a zero weight must not turn its objective's inf into NaN: it contributes nothing
        return torch.where(self.factors == 0, torch.zeros_like(terms), terms).sum(-1)

    def report(self, raw: torch.Tensor) -> torch.Tensor:
        """``(r_i - mean_i) / std_i``, computed in float64 (the mean may be large), as float32."""
        return ((raw.double() - self.means) / self.stds).float()

    def apply(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rank(raw), self.report(raw)


@dataclass
class Objective:
    """One reward of a multi-reward decoder, classified: ``kind`` as above, ``engine_reward`` what that
    kind's runner takes."""
    kind: str
    engine_reward: object
    model: object          # the reward as the user gave it (unwrapped)
    mean: float
    std: float


@dataclass
class MultiObjective:
    """What the engines get for ``kind == "multi"``: the objectives, the user's weights and the rule
    that mixes them."""
    objectives: list[Objective]
    weights: list[float]
    mixing: Mixing


@dataclass
class RewardSpec:
    """The classified reward of a decoder. ``engine_w``: the ``w`` the engine ranks with (1.0 for several
    rewards, whose weights are inside ``engine_reward``); ``w``: what the decoder reports as its ``w``."""
    kind: str
    engine_reward: object
    w: object
    engine_w: float
    n_objectives: int
    multi: bool


def classify(policy, reward_model, w, *, reward_tokenizer=None, tokenizer=None) -> RewardSpec:
    """Check ``reward_model`` and ``w`` against ``policy`` and say which kind of reward it is."""
    multi = isinstance(reward_model, (list, tuple)) or carries_statistics(reward_model)
    if not multi:
        w = as_float("w", w, -W_LIMIT, W_LIMIT)
        kind, engine_reward = classify_one(policy, reward_model, reward_tokenizer, tokenizer)
        return RewardSpec(kind, engine_reward, w, w, 1, False)
    weights = check_weights(reward_model, w)
    kind, engine_reward = classify_several(policy, reward_model, weights, reward_tokenizer, tokenizer)
    shown = weights if isinstance(reward_model, (list, tuple)) else weights[0]
    return RewardSpec(kind, engine_reward, shown, 1.0, len(weights), True)


def check_weights(reward_model, w) -> list[float]:
    """``w`` for a list of n rewards: n finite numbers (a single reward keeps a plain number)."""
    if not isinstance(reward_model, (list, tuple)):
        return [as_float("w", w, -W_LIMIT, W_LIMIT)]
    n = len(reward_model)
    if n == 0:
        raise ValueError("reward_model is an empty list: give at least one reward")
    if isinstance(w, (torch.Tensor, numpy.ndarray)) and w.ndim == 1:
        w = w.tolist()
    if not isinstance(w, (list, tuple)) or len(w) != n:
        raise ValueError(f"w must be a list of {n} weights, one per reward in reward_model, got {w!r}")
    return [as_float(f"w[{i}]", value, -W_LIMIT, W_LIMIT) for i, value in enumerate(w)]


class ObjectiveHeads(RewardHead):
    """The heads of several objectives on one policy, scored in one pass: one linear holds every head's
    rows; objective i's raw reward is head i's own scalar (``mix_i . (W_i h + b_i)``, or ``W_i h + b_i``),
    and :class:`Mixing` mixes them. ``n`` is the number of objectives; ``score`` gives (what ARGS ranks by,
    the normalised objectives ``(..., n)``), as a mixed :class:`~args_fast.rewards.head.RewardHead` does."""

    def __init__(self, policy, heads: list[RewardHead], mixing: Mixing):
        rows = torch.cat([h.linear.weight.detach() for h in heads])
        biases = torch.cat([h.linear.bias.detach() if h.linear.bias is not None
                            else torch.zeros(h.n, dtype=h.linear.weight.dtype, device=h.linear.weight.device)
                            for h in heads])
        # the rows are already in the policy's dtype: copying them into the combined linear is exact
        super().__init__(policy, rows, biases, mix=torch.ones(rows.shape[0]))
        self.slices, start = [], 0
        for h in heads:
            self.slices.append((start, start + h.n, h.mix))
            start += h.n
        self.n, self.mixing = len(heads), mixing
        self.mix = mixing.factors   # not None: the engines keep each objective's chosen reward

    def all_rewards(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(..., H)`` -> each objective's raw reward ``(..., n)`` float32."""
        out = self.linear(hidden.to(self.linear.weight.dtype)).float()
        # head by head, so that another head's inf cannot reach this one through a zero of a block matrix
        return torch.stack([out[..., a] if mix is None else out[..., a:b] @ mix for a, b, mix in self.slices], -1)

    def score(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mixing.apply(self.all_rewards(hidden))

    def describe(self) -> str:
        return f"{self.n} reward head(s) on the policy's own backbone"


def combine_heads(policy, heads, mixing: Mixing) -> ObjectiveHeads:
    """The :class:`ObjectiveHeads` of several heads on ``policy``, mixed by ``mixing``."""
    return ObjectiveHeads(policy, heads, mixing)


def check_statistics_with_weights(objectives, weights, names) -> None:
    """The engines weigh raw reward i by ``w_i / std_i``: it is bounded as a single reward's ``w`` is
    (``W_LIMIT``, so that scores stay finite float32 for rewards up to 1e8)."""
    for o, w, name in zip(objectives, weights, names):
        if abs(w) / o.std > W_LIMIT:
            raise ValueError(f"{name} / std = {w:g} / {o.std:g} = {abs(w) / o.std:.3g} is the weight on the raw "
                             f"reward, and must be at most {W_LIMIT:g} in magnitude (as w is) so that scores "
                             "stay finite in float32; use a smaller weight or a larger std")


def classify_several(policy, rewards, weights, reward_tokenizer, tokenizer) -> tuple[str, object]:
    """Several rewards (or one with normalisation statistics): "head" (all heads on the policy's
    backbone: :class:`ObjectiveHeads`) or "multi" (:class:`MultiObjective`, each reward on its own
    runner); both mix by :class:`Mixing`."""
    listed = isinstance(rewards, (list, tuple))
    items = list(rewards) if listed else [rewards]
    if reward_tokenizer is not None and len(items) > 1:
        raise ValueError("reward_tokenizer with several rewards: it would apply to all of them; give a reward "
                         "with its own tokenizer as a text callable reward(prompts, responses) instead")
    objectives = []
    for i, item in enumerate(items):
        if isinstance(item, (list, tuple)):
            raise TypeError(f"reward_model[{i}] is a list: give one flat list of rewards")
        try:
            model, mean, std = normalization_of(item)
            kind, engine_reward = classify_one(policy, model, reward_tokenizer, tokenizer)
        except (TypeError, ValueError) as err:
            if not listed:
                raise
            raise type(err)(f"reward_model[{i}]: {err}") from None
        objectives.append(Objective(kind, engine_reward, model, mean, std))
    check_statistics_with_weights(objectives, weights,
                                  [f"w[{i}]" for i in range(len(items))] if listed else ["w"])
    mixing = Mixing(weights, [o.mean for o in objectives], [o.std for o in objectives], policy.device)
    if all(o.kind == "head" for o in objectives):
        return "head", combine_heads(policy, [o.engine_reward for o in objectives], mixing)
    return "multi", MultiObjective(objectives, weights, mixing)


def classify_one(policy, reward_model, reward_tokenizer, tokenizer) -> tuple[str, object]:
    """(kind, what the engine gets) of one reward: "head", "vocab", "cached" or "text"."""
    if isinstance(reward_model, RewardHead):
        if reward_model.policy is not policy:
            raise ValueError("reward_model is a RewardHead on another model than this policy; build it on the "
                             "policy passed here")
        return "head", reward_model
    if isinstance(reward_model, VocabReward):
        reward_model.check(policy)
        return "vocab", reward_model
    if reward_tokenizer is None and shares_backbone(policy, reward_model):
        # the reward model's backbone is the policy's own tensors: score with one pass of the policy
        return "head", RewardHead.from_reward_model(policy, reward_model)
    return _classify_separate(policy, reward_model, reward_tokenizer, tokenizer), reward_model


def _takes_two_arguments(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _classify_separate(policy, reward_model, reward_tokenizer, tokenizer) -> str:
    # A Hugging Face model is a score model; any other callable (a function, or an nn.Module of
    # the user's with forward(prompts, responses)) is a text reward.
    if isinstance(reward_model, torch.nn.Module) and not hf.is_hf_model(reward_model) \
            and not _takes_two_arguments(reward_model.forward):
        raise TypeError(f"reward_model is a {type(reward_model).__name__} module but neither a Hugging Face "
                        "*ForSequenceClassification model nor a text reward with forward(prompts, responses)")
    if hf.is_hf_model(reward_model):
        if not hf.is_scalar_reward_model(reward_model):
            raise TypeError(f"reward_model must have a scalar score head: {hf.describe_reward_problem(reward_model)}")
        if reward_tokenizer is not None:
            if tokenizer is None:
                raise ValueError("tokenizer (the policy's) is required with reward_tokenizer: candidates are "
                                 "decoded to text and re-encoded for the reward model")
            return "text"
        rm_vocab, pol_vocab = reward_model.config.vocab_size, policy.config.vocab_size
        if rm_vocab != pol_vocab:
            raise ValueError(f"reward_model vocabulary ({rm_vocab}) differs from the policy's ({pol_vocab}); "
                             "pass reward_tokenizer to score through text instead")
        if not hf.is_causal_lm(reward_model):
            raise ValueError("a bidirectional reward_model needs reward_tokenizer (text path)")
        return "cached"
    if callable(reward_model):
        if tokenizer is None:
            raise ValueError("tokenizer (the policy's) is required when reward_model is a text callable")
        return "text"
    raise TypeError(f"reward_model must be a *ForSequenceClassification model or a callable, "
                    f"got {type(reward_model).__name__}")


def token_models(policy, spec: RewardSpec, reward_model) -> list[tuple[str, torch.nn.Module]]:
    """The models that read the policy's token ids (their context limits apply to a request)."""
    if spec.kind == "cached":
        return [("policy", policy), ("reward_model", reward_model)]
    if spec.kind == "vocab":
        return [("policy", policy)] + spec.engine_reward.extra_models(policy)
    if spec.kind == "multi":
        models = [("policy", policy)]
        for i, o in enumerate(spec.engine_reward.objectives):
            if o.kind == "cached":
                models.append((f"reward_model[{i}]", o.engine_reward))
            elif o.kind == "vocab":
                models += [(f"reward_model[{i}].{name}", m) for name, m in o.engine_reward.extra_models(policy)]
        return models
    return [("policy", policy)]


def describe(spec: RewardSpec, reward_model, policy, backend: str) -> str:
    """How the reward is computed, in words (the CLI prints it)."""
    if spec.kind == "head":
        if spec.multi:
            head = (f"{spec.n_objectives} reward head(s) on the policy's own backbone, normalised and mixed by "
                    f"w = {spec.w}")
        elif isinstance(reward_model, RewardHead):
            head = reward_model.describe()
        else:
            head = "the reward model's score head on the policy's own (shared) backbone"
        if backend == "reference":
            return f"{head}, computed the literal way (a full forward of every candidate sequence)"
        return f"fused: {head}, one policy pass per token over the k candidates"
    if spec.kind == "vocab":
        return reward_model.describe(policy)
    if spec.kind == "cached":
        return "a separate reward model: one policy decode plus one reward pass over the k candidates per token"
    if spec.kind == "multi":
        names = {"cached": "a separate reward model", "text": "a text reward", "head": "a head on the policy"}
        parts = [names.get(o.kind) or o.engine_reward.describe(policy) for o in spec.engine_reward.objectives]
        return f"{len(parts)} rewards mixed by w = {spec.w}, each on its own runner: " + "; ".join(parts)
    return "text reward: candidates decoded and scored as text"
