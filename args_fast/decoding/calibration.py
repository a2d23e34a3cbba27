"""Calibration: the statistics that normalise a reward, measured by decoding.

It decodes (greedy, through :class:`~args_fast.decoding.decoder.ARGSDecoder` at ``w = 0``), so it sits
above the decoder; the statistics themselves are :class:`~args_fast.rewards.normalization.NormalizedReward`.
"""
from __future__ import annotations

import math

import torch

from ..rewards.normalization import NormalizedReward
from .decoder import ARGSDecoder


@torch.no_grad()
def calibrate(policy, reward, prompts_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int = 48,
              tokenizer=None, reward_tokenizer=None, eos_token_id=None, pad_token_id=None,
              batch_size: int = 16) -> NormalizedReward:
    """``reward`` normalised by its mean and std over the policy's greedy replies to the calibration
    prompts (left-padded ``prompts_ids``): the reward of each whole reply as ARGS reports it (the last
    step's reward at ``w = 0``, where ARGS is greedy decoding)."""
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

