"""Calibration: the statistics that normalise a reward, measured by decoding.

It decodes (greedy, through :class:`~args_fast.decoding.decoder.ARGSDecoder` at ``w = 0``), so it sits
above the decoder; the statistics themselves are :class:`~args_fast.rewards.normalization.NormalizedReward`.
"""
from __future__ import annotations

import math

import torch

from ..rewards.normalization import NormalizedReward, normalization_of, stored_statistics
from ..validation import as_int
from .decoder import ARGSDecoder


@torch.no_grad()
def calibrate(policy, reward, prompts_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
              max_new_tokens: int = 48, tokenizer=None, reward_tokenizer=None, eos_token_id=None,
              pad_token_id=None, batch_size: int = 16) -> NormalizedReward:
    """The RAW reward normalised by its mean and std over the policy's greedy replies to the calibration
    prompts (left-padded ``prompts_ids``, at least 2): the reward of each whole reply as ARGS reports it
    (the last step's reward at ``w = 0``, where ARGS is greedy decoding).

    ``reward`` is one reward. What is measured is always the raw reward of the model itself: the
    statistics of a :class:`NormalizedReward` given here, or stored in the model's config
    (:func:`~args_fast.rewards.normalization.store_normalization`), are set aside while measuring. The
    returned ``NormalizedReward(model, mean, std)`` wraps that model; its statistics take the place of
    any stored in the model's config."""
    if isinstance(reward, (list, tuple)):
        raise TypeError("calibrate measures one reward: call it once per reward of a list")
    batch_size = as_int("batch_size", batch_size, 1)
    max_new_tokens = as_int("max_new_tokens", max_new_tokens, 1)
    if not isinstance(prompts_ids, torch.Tensor) or prompts_ids.dim() != 2 or prompts_ids.shape[0] < 2:
        shape = tuple(prompts_ids.shape) if isinstance(prompts_ids, torch.Tensor) else type(prompts_ids).__name__
        raise ValueError(f"prompts_ids must be a (B, P) tensor of at least 2 calibration prompts (a std needs 2 "
                         f"replies), got {shape}")
    model, _, _ = normalization_of(reward)
    # explicit statistics of (0, 1) take the place of stored ones: the decoder then reports the raw reward
    raw = NormalizedReward(model, 0.0, 1.0) if stored_statistics(model) is not None else model
    decoder = ARGSDecoder(policy, raw, k=1, w=0.0, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                          pad_token_id=pad_token_id, tokenizer=tokenizer, reward_tokenizer=reward_tokenizer)
    values = []
    for i in range(0, prompts_ids.shape[0], batch_size):
        mask = None if attention_mask is None else attention_mask[i:i + batch_size]
        out = decoder.generate(prompts_ids[i:i + batch_size], mask)
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
    try:
        return NormalizedReward(model, mean, std)
    except ValueError as err:
        raise ValueError(f"the measured statistics (mean={mean:g}, std={std:g}) cannot normalise this reward in "
                         f"float32: {err}") from None
