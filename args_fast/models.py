"""Loading the policy and the reward model for the command line and the evaluation commands."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch


@dataclass
class LoadedModels:
    policy: torch.nn.Module
    tokenizer: object
    reward: torch.nn.Module
    reward_tokenizer: object = None      # set when the reward model has its own vocabulary (text path)
    names: dict = field(default_factory=dict)   # what was loaded, for result headers


def load_models(policy_path: str | None = None, reward_path: str | None = None, *,
                dtype: torch.dtype = torch.float32) -> LoadedModels:
    """The policy (a causal LM) and reward model (a one-label sequence classifier) in eval mode, in
    ``dtype``; the embedded defaults where a path is None. A reward model with another vocabulary
    than the policy's comes with its own tokenizer, so ARGS scores it through text."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from . import default_models
    if policy_path is None:
        policy, tokenizer = default_models.load_default_policy(dtype=dtype)
    else:
        policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype).eval()
        tokenizer = AutoTokenizer.from_pretrained(policy_path)
    reward_tokenizer = None
    if reward_path is None:   # on the default policy: one backbone in memory, shared (the fused ARGS step)
        reward = default_models.load_default_reward(dtype=dtype, policy=policy if policy_path is None else None)
    else:
        reward = AutoModelForSequenceClassification.from_pretrained(reward_path, dtype=dtype).eval()
        if reward.config.vocab_size != policy.config.vocab_size:   # another vocabulary: score through text
            reward_tokenizer = AutoTokenizer.from_pretrained(reward_path)
    names = {"policy": policy_path or f"default ({getattr(policy.config, '_name_or_path', '') or type(policy).__name__})",
             "reward_model": reward_path or f"default ({getattr(reward.config, '_name_or_path', '') or type(reward).__name__})"}
    if reward_path is None:   # which trained head: the shipped weights change when the reward is retrained
        digest = hashlib.sha256(default_models.REWARD_WEIGHTS.read_bytes()).hexdigest()[:16]
        names["reward_model"] += f", score head {default_models.REWARD_WEIGHTS.name} sha256 {digest}"
    return LoadedModels(policy, tokenizer, reward, reward_tokenizer, names)
