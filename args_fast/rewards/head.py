"""Rewards that are a linear head on the policy's own transformer features.

A reward model built as the policy's backbone plus a small head (the embedded default reward model;
value heads as in trl's ``AutoModelForCausalLMWithValueHead``; linear probes) needs no second model:
one forward of the k candidates through the policy gives every candidate's final hidden state, the
head on each gives its reward, and the LM head on the winner's gives the next logits. The engines
that do this ("fused": one cache, one weight read per token) are in ``args_fast/engine/backends/hf_runners.py``
(:class:`~args_fast.engine.backends.hf_runners.HFFusedEngine`) and ``args_fast/engine/backends/static_engine.py``; the
reference backend computes the same reward the slow literal way (a full forward of every candidate
sequence through the policy's backbone).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import hf
from ..validation import W_LIMIT


class RewardHead:
    """``r(x) = mix . (weight @ h(x) + bias)``, with ``h(x)`` the policy's final hidden state at the last
    token of ``x`` (what ``policy.base_model(x).last_hidden_state[:, -1]`` returns, after the final norm).

    ``weight`` is ``(n, hidden)`` (or ``(hidden,)`` for one reward); ``bias`` ``(n,)`` or None. With
    ``n > 1`` heads, ``mix`` (``n`` weights, e.g. a user's preference over objectives) makes the scalar
    ARGS ranks by; :meth:`all_rewards` gives the ``n`` rewards themselves. That scalar is the head's
    reward wherever it goes: in a list of rewards or a
    :class:`~args_fast.rewards.normalization.NormalizedReward` it is one objective, normalised and
    weighed as a whole (the rule is in ``args_fast/rewards/kinds.py``). The head runs in the policy's
    dtype and device, as a ``*ForSequenceClassification`` score head does; ``weight`` and ``bias`` must
    fit that dtype, ``mix`` is bounded as ``w`` is (``|mix| <= 1e30``) and copied.

    Turning a trained value head or probe into one: take its weight (and bias) and pass the policy it
    was trained on, e.g. ``RewardHead(model.pretrained_model, model.v_head.summary.weight,
    model.v_head.summary.bias)`` for a trl value-head model. The hidden state it reads must be the
    backbone's final (normed) output, which is what trl and ``*ForSequenceClassification`` use.
    """

    def __init__(self, policy, weight, bias=None, mix=None):
        if not isinstance(policy, nn.Module) or not hasattr(policy, "get_output_embeddings") \
                or getattr(policy, "base_model", policy) is policy or policy.get_output_embeddings() is None:
            raise TypeError(f"policy must be a Hugging Face causal LM (a backbone plus an LM head), got "
                            f"{type(policy).__name__}")
        hidden = policy.get_output_embeddings().in_features
        weight = _tensor("weight", weight)
        if weight.dim() == 1:
            weight = weight[None]
        if weight.dim() != 2 or weight.shape[1] != hidden or weight.shape[0] < 1:
            raise ValueError(f"weight must have shape (n, {hidden}) (n >= 1 heads on the policy's hidden size "
                             f"{hidden}), got {tuple(weight.shape)}")
        n = weight.shape[0]
        if bias is not None:
            bias = _tensor("bias", bias)
            if bias.shape != (n,):
                raise ValueError(f"bias must have shape ({n},) to match weight, got {tuple(bias.shape)}")
        if mix is None:
            if n > 1:
                raise ValueError(f"weight has {n} heads: pass mix (n = {n} weights) to combine them into the one "
                                 "reward ARGS ranks by")
        else:
            mix = _tensor("mix", mix)
            if mix.shape != (n,):
                raise ValueError(f"mix must have shape ({n},), one weight per head, got {tuple(mix.shape)}")
        param = next(policy.parameters())
        for name, t in (("weight", weight), ("bias", bias), ("mix", mix)):
            if t is not None and not bool(t.isfinite().all()):
                raise ValueError(f"{name} holds NaN or infinite values")
        # weight and bias run in the policy's dtype (as a score head does): a value past its range would
        # turn into inf there; mix weighs the head outputs as w weighs a reward, and is bounded alike
        for name, t, dtype in (("weight", weight, param.dtype), ("bias", bias, param.dtype)):
            if t is not None and t.numel() and float(t.abs().max()) > torch.finfo(dtype).max:
                raise ValueError(f"{name} holds values up to {float(t.abs().max()):g}, past the policy's dtype "
                                 f"{dtype} (largest {torch.finfo(dtype).max:g}), where the head runs")
        if mix is not None and float(mix.abs().max()) > W_LIMIT:
            raise ValueError(f"mix must hold weights in [-{W_LIMIT:g}, {W_LIMIT:g}] (as w; scores stay finite "
                             f"float32), got up to {float(mix.abs().max()):g}")
        self.policy, self.n = policy, n
        self.linear = nn.Linear(hidden, n, bias=bias is not None).to(param.device, param.dtype).eval()
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            if bias is not None:
                self.linear.bias.copy_(bias)
        # a copy: a later change to the caller's tensor must not change the reward
        self.mix = None if mix is None else mix.to(param.device, torch.float32, copy=True)

    @classmethod
    def from_reward_model(cls, policy, reward_model) -> "RewardHead":
        """The score head of a one-label ``*ForSequenceClassification`` whose backbone is the policy's own
        (see :func:`shares_backbone`), as a head on the policy."""
        head = reward_model.score
        return cls(policy, head.weight.detach(), None if head.bias is None else head.bias.detach())

    def all_rewards(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(..., H)`` -> the ``n`` head outputs ``(..., n)`` float32."""
        return self.linear(hidden.to(self.linear.weight.dtype)).float()

    def score(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final hidden states ``(..., H)`` -> (the reward ARGS ranks by ``(...)``, each head's reward
        ``(..., n)`` when the heads are mixed, else None), float32: what the engines report per objective."""
        out = self.all_rewards(hidden)
        if self.mix is None:
            return out.squeeze(-1), None
        return out @ self.mix, out

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(..., H)`` -> the reward ARGS ranks by, ``(...)`` float32."""
        return self.score(hidden)[0]

    def describe(self) -> str:
        heads = "a reward head" if self.n == 1 else f"{self.n} reward heads mixed by {self.mix.tolist()}"
        return f"{heads} on the policy's own backbone"


def _tensor(name: str, value) -> torch.Tensor:
    if isinstance(value, nn.Parameter):
        value = value.detach()
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a tensor (or a nested list of numbers), got {type(value).__name__}") from None
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must hold real numbers, got a {value.dtype} tensor")
    if not value.is_floating_point():
        value = value.float()
    return value.detach()


def shares_backbone(policy, reward_model) -> bool:
    """True when a scalar ``*ForSequenceClassification`` reward model runs on the policy's own backbone
    tensors (the same parameters in memory, e.g. ``reward.model = policy.model``), so that ARGS can score
    candidates with one pass of the policy."""
    if not (hf.is_hf_model(reward_model) and hf.is_scalar_reward_model(reward_model)):
        return False
    base, mine = getattr(policy, "base_model", None), reward_model.base_model
    if base is None or base is policy:
        return False
    if base is mine:
        return True
    ours, theirs = dict(base.named_parameters()), dict(mine.named_parameters())
    return bool(ours) and ours.keys() == theirs.keys() and all(ours[n] is theirs[n] for n in ours)
