"""The engine contract the decoding loop drives, the runner roles engines are built from, and the
engine composed of separate runners.

Shapes: B rows (left-padded prompts of width P), k candidates per row, V the policy's vocabulary.
Token ids are int64; logits, rewards and uniforms float32; masks 0/1 int64; all on the policy's
device unless a runner says otherwise (a reward runner may live on another device: its ``score``
output is moved to the policy's).

An engine owns all per-request state (caches, finished flags) and is reused across requests: a
prefill that needs more room than its caches have reallocates them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ..ops import select_candidates, topk_logits


@dataclass(frozen=True)
class Models:
    """The models of one decoder. ``reward_kind``: "cached" (a causal one-label score model on the
    policy's vocabulary: prefix-cached paths), "head" (``reward_model`` is a
    :class:`~args_fast.rewards.head.RewardHead` on the policy's backbone: fused, one pass per token),
    "vocab" (a :class:`~args_fast.rewards.vocab.VocabReward`: token rewards for the whole vocabulary
    from one decode per extra model), "text" (reward read from decoded text) or "multi" (an
    :class:`~args_fast.rewards.kinds.MultiObjective`: several rewards of these kinds, mixed)."""
    policy: torch.nn.Module
    reward_model: object
    reward_kind: str
    tokenizer: object = None
    reward_tokenizer: object = None


@dataclass(frozen=True)
class Options:
    k: int
    w: float
    temperature: float
    eos_ids: list[int] | None
    pad_id: int


@runtime_checkable
class Engine(Protocol):
    """What :class:`args_fast.ARGSDecoder` drives. ``k``, ``w``, ``temperature``, ``eos_ids`` and
    ``pad_id`` are the options it was built with (the decoder checks them against its own)."""

    k: int
    w: float
    temperature: float
    eos_ids: list[int] | None
    pad_id: int
    # (B,) bool after each step: rows still running whose k candidate rewards included NaN or +-inf.
    # The decoder turns it into an error naming the step and rows (a reward that cannot rank the
    # candidates must not silently decide the token).
    nonfinite: torch.Tensor

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int) -> None:
        """Left-padded prompts ``(B, P)`` in; caches sized for ``P + max_new_tokens`` (+ k slots)."""

    def step(self, uniforms: torch.Tensor | None, last: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One ARGS step: policy top-k, reward of every candidate, select (greedy if ``uniforms`` is
        None, else Gumbel-max on the ``(B, k)`` uniforms) and, unless ``last``, commit the chosen token
        to both models' contexts. Returns ``(tokens int64 (B,), chosen_rewards float32 (B,), finished
        bool (B,))``; an engine may return its own static buffers, valid until the next step."""


class PolicyRunner(Protocol):
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """-> the next-token logits ``(B, V)`` float32 of each row."""

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens (B,)``, one per row -> the next logits ``(B, V)`` float32."""


class RewardRunner(Protocol):
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int) -> None:
        """Left-padded prompts ``(B, P)`` in."""

    def score(self, candidate_ids: torch.Tensor) -> torch.Tensor:
        """``(B, k)`` int64 candidates -> ``(B, k)`` float32: the reward of context + candidate."""

    def commit(self, choice: torch.Tensor, tokens: torch.Tensor) -> None:
        """Candidate ``choice[b]`` (token ``tokens[b]``) joins row b's context."""


class ComposedEngine:
    """An :class:`Engine` from a policy runner, a reward runner and the select op (the reference,
    hf and text-reward backends). ``topk`` and ``select`` default to the torch references."""

    def __init__(self, policy: PolicyRunner, reward: RewardRunner, *, k: int, w: float, temperature: float,
                 eos_ids, pad_id: int, topk=topk_logits, select=select_candidates):
        self.policy, self.reward, self.topk, self.select = policy, reward, topk, select
        self.k, self.w, self.temperature, self.pad_id = k, w, temperature, pad_id
        self.eos_ids = eos_ids
        self.nonfinite = torch.zeros(0, dtype=torch.bool)

    def prefill(self, input_ids, attention_mask, max_new_tokens):
        self.logits = self.policy.prefill(input_ids, attention_mask, max_new_tokens)
        self.reward.prefill(input_ids, attention_mask, max_new_tokens)
        device = self.logits.device
        self.finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
        self.eos = torch.tensor(self.eos_ids, device=device) if self.eos_ids else None

    def step(self, uniforms, last: bool = False):
        top_logits, top_ids = self.topk(self.logits, self.k)
        rewards = self.reward.score(top_ids).to(top_logits.device)
        self.nonfinite = ~rewards.isfinite().all(-1) & ~self.finished
        choice, token, chosen_reward, self.finished = self.select(
            top_logits, top_ids, rewards, self.w, uniforms, self.temperature, self.finished, self.eos, self.pad_id)
        objectives = getattr(self.reward, "objectives", None)   # several rewards: each one's, (B, k, n)
        if objectives is not None:
            rows = torch.arange(choice.shape[0], device=choice.device)
            self.chosen_objectives = objectives.to(choice.device)[rows, choice]
        if not last:
            self.reward.commit(choice, token)
            self.logits = self.policy.step(token)
        return token, chosen_reward, self.finished
