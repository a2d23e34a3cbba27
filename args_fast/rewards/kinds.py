"""What kind of reward a decoder was given, decided once, before any engine is built.

The kinds (the engines differ by kind, see ``args_fast.engine.backends.registry``):

* ``"head"``: a :class:`~args_fast.rewards.head.RewardHead` on the policy, or a one-label
  ``*ForSequenceClassification`` whose backbone is the policy's own tensors (read off as a head), or
  several of these (combined into one ``(n, hidden)`` head): the fused step, one policy pass per token;
* ``"vocab"``: a :class:`~args_fast.rewards.vocab.VocabReward`: token rewards over the vocabulary;
* ``"cached"``: a separate causal score model on the policy's vocabulary (prefix-cached pass);
* ``"text"``: a model read through its own ``reward_tokenizer``, or a callable
  ``reward(prompts, responses)``: candidates decoded and scored as text;
* ``"multi"``: several rewards not all heads (a :class:`MultiObjective`), each on its own runner.

A list of rewards, or one reward carrying normalisation statistics, is "several rewards": ``w`` is
then one weight per reward, and the engine ranks by ``logit + sum_i w_i * (r_i - mean_i) / std_i``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy
import torch

from .. import hf
from ..validation import W_LIMIT, as_float
from .head import RewardHead, shares_backbone
from .normalization import is_normalized, normalization_of
from .vocab import VocabReward


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
    """What the engines get for ``kind == "multi"``: the objectives and the user's weights."""
    objectives: list[Objective]
    weights: list[float]


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
    multi = isinstance(reward_model, (list, tuple)) or is_normalized(reward_model)
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


def combine_heads(policy, heads, weights, means, stds) -> RewardHead:
    """One :class:`~args_fast.rewards.head.RewardHead` whose row i is head i normalised,
    ``(W_i h + b_i - mean_i) / std_i``, mixed by ``weights``."""
    rows, biases = [], []
    for head, mean, std in zip(heads, means, stds):
        weight = head.linear.weight.detach().float()
        bias = head.linear.bias.detach().float() if head.linear.bias is not None else torch.zeros(head.n)
        if head.n != 1:
            raise ValueError("a multi-head RewardHead in a list of rewards: pass its heads as separate RewardHeads")
        rows.append(weight[0] / std)
        biases.append((bias[0].to(weight.device) - mean) / std)
    return RewardHead(policy, torch.stack(rows), torch.stack(biases), mix=torch.tensor(weights, dtype=torch.float32))


def classify_several(policy, rewards, weights, reward_tokenizer, tokenizer) -> tuple[str, object]:
    """Several rewards (or one with normalisation statistics): "head" (all heads on the policy's
    backbone: one combined head, normalisation folded in, mixed by the weights) or "multi"
    (:class:`MultiObjective`, each reward on its own runner)."""
    items = list(rewards) if isinstance(rewards, (list, tuple)) else [rewards]
    if reward_tokenizer is not None and len(items) > 1:
        raise ValueError("reward_tokenizer with several rewards: it would apply to all of them; give a reward "
                         "with its own tokenizer as a text callable reward(prompts, responses) instead")
    objectives = []
    for i, item in enumerate(items):
        model, mean, std = normalization_of(item)
        if isinstance(model, (list, tuple)):
            raise TypeError(f"reward_model[{i}] is a list: give one flat list of rewards")
        try:
            kind, engine_reward = classify_one(policy, model, reward_tokenizer, tokenizer)
        except (TypeError, ValueError) as err:
            raise type(err)(f"reward_model[{i}]: {err}") from None
        objectives.append(Objective(kind, engine_reward, model, mean, std))
    if all(o.kind == "head" for o in objectives):
        head = combine_heads(policy, [o.engine_reward for o in objectives], weights,
                             [o.mean for o in objectives], [o.std for o in objectives])
        return "head", head
    return "multi", MultiObjective(objectives, weights)


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
