"""The text reward path: any reward that reads text, batched B*k per step, without a prefix cache.

Used for a reward model with its own tokenizer (an encoder such as DeBERTa, or a causal model with
another vocabulary) and for plain Python callables ``reward(prompts, responses) -> floats``. Each
candidate is decoded with the policy tokenizer as (prompt, response so far + candidate).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def as_rewards(values, n: int) -> torch.Tensor:
    """The ``n`` rewards a text reward returned, as float32; TypeError / ValueError saying what came back."""
    what = f"the reward callable must return {n} numbers, one per (prompt, response) pair (a list, numpy array or tensor)"
    if values is None or isinstance(values, (dict, str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{what}, got {type(values).__name__}")
    if type(values).__module__ == "numpy":   # an array: one conversion, not one per element
        import numpy
        values = torch.as_tensor(numpy.asarray(values, dtype=numpy.float64))
    if not isinstance(values, torch.Tensor):
        values = list(values)
        bad = next((v for v in values if isinstance(v, (str, bytes, bool)) or v is None), False)
        if bad is not False:
            raise TypeError(f"{what}, got a {type(bad).__name__} among them: {bad!r}")
    try:
        rewards = torch.as_tensor(values, dtype=torch.float32).cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{what}: {exc}") from None
    if rewards.shape != (n,):
        raise ValueError(f"{what}, got shape {tuple(rewards.shape)}")
    return rewards


class TextReward:
    def __init__(self, reward_fn: Callable[[list[str], list[str]], Sequence[float]], tokenizer, device="cpu"):
        self.reward_fn, self.tokenizer, self.device = reward_fn, tokenizer, torch.device(device)
        self.forward_calls = 0

    def prefill(self, input_ids, attention_mask, max_new_tokens):
        rows = [ids[m.bool()].tolist() for ids, m in zip(input_ids.cpu(), attention_mask.cpu())]
        self.prompts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        self.responses: list[list[int]] = [[] for _ in rows]

    def score(self, candidate_ids):
        batch, k = candidate_ids.shape
        candidates = candidate_ids.cpu().tolist()
        texts = self.tokenizer.batch_decode(
            [self.responses[b] + [c] for b in range(batch) for c in candidates[b]], skip_special_tokens=True)
        prompts = [p for p in self.prompts for _ in range(k)]
        values = self.reward_fn(prompts, texts)
        self.forward_calls += 1
        return as_rewards(values, batch * k).view(batch, k).to(self.device)

    def commit(self, choice, tokens):
        for row, token in zip(self.responses, tokens.cpu().tolist()):
            row.append(token)


def encoder_reward_fn(reward_model, reward_tokenizer, max_length: int | None = None):
    """Wrap a sequence-classification model with its own tokenizer as ``reward(prompts, responses)``.

    The pair is encoded the way pairwise reward models (e.g. OpenAssistant's DeBERTa) are trained:
    ``tokenizer(prompt, response)``; the reward is logit 0.
    """
    device = next(reward_model.parameters()).device

    @torch.no_grad()
    def reward(prompts, responses):
        enc = reward_tokenizer(list(prompts), list(responses), padding=True, return_tensors="pt",
                               truncation=max_length is not None, max_length=max_length)
        return reward_model(**enc.to(device)).logits[:, 0].float().cpu()

    return reward
