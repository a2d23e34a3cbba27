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


def weight_bytes(*models) -> int:
    """Bytes of the distinct storages behind the parameters and buffers of ``models`` (torch modules;
    anything else is skipped): a backbone shared by a policy and its reward heads counts once."""
    storages = {}
    for model in models:
        if isinstance(model, torch.nn.Module):
            for t in list(model.parameters()) + list(model.buffers()):
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_placement(policy_path, reward_path, policy_device, reward_device, device_map) -> None:
    """The placement options, checked before anything loads; ValueError naming the flag."""
    for flag, value in (("--policy-device", policy_device), ("--reward-device", reward_device)):
        if value is not None:
            try:
                torch.device(value)
            except (RuntimeError, TypeError):
                raise ValueError(f"{flag} must be a torch device such as cpu, cuda or cuda:1, got {value!r}") from None
    if (policy_path is None and reward_path is None and reward_device is not None
            and torch.device(reward_device) != torch.device(policy_device or "cpu")):
        raise ValueError("--reward-device: the default reward model is a head on the default policy's own backbone, "
                         "so it lives on the policy's device (give --policy-device only)")
    if device_map is None:
        return
    if device_map not in DEVICE_MAPS:
        raise ValueError(f"--device-map must be one of {', '.join(DEVICE_MAPS)}, got {device_map!r}")
    if policy_device is not None or reward_device is not None:
        raise ValueError("give --device-map or --policy-device / --reward-device, not both")
    if policy_path is None and reward_path is None:
        raise ValueError("--device-map splits models given by path (--policy, --reward-model); the embedded "
                         "defaults (135M) fit one device: use --policy-device")


def load_models(policy_path: str | None = None, reward_path: str | None = None, *,
                dtype: torch.dtype = torch.float32, policy_device=None, reward_device=None,
                device_map: str | None = None) -> LoadedModels:
    """The policy (a causal LM) and reward model (a one-label sequence classifier) in eval mode, in
    ``dtype``; the embedded defaults where a path is None. A reward model with another vocabulary
    than the policy's comes with its own tokenizer, so ARGS scores it through text.

    Placement: ``policy_device`` / ``reward_device`` (default: the CPU, or the reward on the policy's
    device); or ``device_map`` ("auto", ...), through accelerate, for a model given by path that is
    larger than one device: its layers are spread over the GPUs (and the CPU) and the ``hf`` and
    ``reference`` backends run it (the static engines need each model whole on one device and say so).
    The default reward model lives on the default policy's backbone, so it goes where the policy goes."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from . import default_models
    check_placement(policy_path, reward_path, policy_device, reward_device, device_map)
    shared = policy_path is None and reward_path is None
    split = {"device_map": device_map} if device_map else {}
    if policy_path is None:
        policy, tokenizer = default_models.load_default_policy(dtype=dtype)
    else:
        policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype, **split).eval()
        tokenizer = AutoTokenizer.from_pretrained(policy_path)
    if policy_device is not None:
        policy.to(policy_device)
    reward_tokenizer = None
    if reward_path is None:   # on the default policy: one backbone in memory, shared (the fused ARGS step)
        reward = default_models.load_default_reward(dtype=dtype, policy=policy if policy_path is None else None)
        if not shared:
            reward.to(reward_device or policy.device)
    else:
        reward = AutoModelForSequenceClassification.from_pretrained(reward_path, dtype=dtype, **split).eval()
        if not split:
            reward.to(reward_device or policy.device)
        if reward.config.vocab_size != policy.config.vocab_size:   # another vocabulary: score through text
            reward_tokenizer = AutoTokenizer.from_pretrained(reward_path)
    names = {"policy": policy_path or f"default ({getattr(policy.config, '_name_or_path', '') or type(policy).__name__})",
             "reward_model": reward_path or f"default ({getattr(reward.config, '_name_or_path', '') or type(reward).__name__})"}
    if reward_path is None:   # which trained head: the shipped weights change when the reward is retrained
        digest = hashlib.sha256(default_models.REWARD_WEIGHTS.read_bytes()).hexdigest()[:16]
        names["reward_model"] += f", score head {default_models.REWARD_WEIGHTS.name} sha256 {digest}"
    return LoadedModels(policy, tokenizer, reward, reward_tokenizer, names)
