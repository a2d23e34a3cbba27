"""Loading the policy and the reward model for the command line and the evaluation commands: paths and
placement checked before anything loads, each error (a :class:`~args_fast.validation.UserError`)
naming the flag.

A model is given as ``from_pretrained`` takes it: a local folder written by ``save_pretrained``, or a
Hugging Face Hub id (``org/name``), loaded from the local cache or downloaded. What looks like a path
(starts with ``/``, ``.`` or ``~``, or exists) is checked as a folder; anything else is taken for an id."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .validation import UserError


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
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_device(flag: str, value: str) -> None:
    """A device that exists here: a CUDA device on a build or machine without one is a UserError
    saying so, before anything loads (torch would fail deep inside ``.to``)."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise UserError(f"{flag} must be a torch device such as cpu, cuda or cuda:1, got {value!r}") from None
    if device.type == "cpu" or device.type == "meta":
        return
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        why = (f"this torch {torch.__version__} was built without CUDA" if device.type == "cuda" and
               torch.version.cuda is None else f"no {device.type} device is available here")
        raise UserError(f"{flag} {value}: {why}; use --{flag.lstrip('-')} cpu (or install a torch build for your "
                        "accelerator)")
    count = getattr(backend, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        raise UserError(f"{flag} {value}: there are {count} {device.type} device(s) here (indices 0 to {count - 1})")


def check_placement(policy_path, reward_path, policy_device, reward_device, device_map) -> None:
    """The placement options, checked before anything loads; UserError naming the flag."""
    for flag, value in (("--policy-device", policy_device), ("--reward-device", reward_device)):
        if value is not None:
            check_device(flag, value)
    if (policy_path is None and reward_path is None and reward_device is not None
            and torch.device(reward_device) != torch.device(policy_device or "cpu")):
        raise UserError("--reward-device: the default reward model is a head on the default policy's own backbone, "
                         "so it lives on the policy's device (give --policy-device only)")
    if device_map is None:
        return
    if device_map not in DEVICE_MAPS:
        raise UserError(f"--device-map must be one of {', '.join(DEVICE_MAPS)}, got {device_map!r}")
    if policy_device is not None or reward_device is not None:
        raise UserError("give --device-map or --policy-device / --reward-device, not both")
    if policy_path is None and reward_path is None:
        raise UserError("--device-map splits models given by path (--policy, --reward-model); the embedded "
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


def looks_local(path: str) -> bool:
    """Whether ``path`` names a local folder rather than a Hub id: it starts with / . or ~, or exists."""
    return path.startswith(("/", ".", "~")) or os.path.isabs(path) or Path(path).exists()


def model_source(path: str | None) -> str | None:
    """What ``from_pretrained`` gets for a user's ``path``: ``~`` expanded (a shell leaves
    ``--policy=~/m`` as it is), a Hub id as given."""
    return None if path is None else os.path.expanduser(path) if path.startswith("~") else path


def check_model_dir(flag: str, path: str | None) -> None:
    """A ``--policy`` / ``--reward-model`` path or Hub id, checked before anything loads: a local path must
    be a folder written by ``save_pretrained``; an id must be well-formed (whether the Hub or the cache
    has it is known only when it loads)."""
    if path is None:
        return
    if not looks_local(path):
        from huggingface_hub.utils import HFValidationError, validate_repo_id
        try:
            validate_repo_id(path)
        except HFValidationError:
            raise UserError(f"{flag} {path}: no such directory, and not a Hugging Face model id (org/name: letters, "
                            "digits, '-', '_', '.')") from None
        return
    p = Path(model_source(path))
    if not p.exists():
        raise UserError(f"{flag} {path}: no such directory")
    if not p.is_dir():
        raise UserError(f"{flag} {path}: not a directory (give the folder written by save_pretrained)")
    if not os.access(p, os.R_OK | os.X_OK):
        raise UserError(f"{flag} {path}: permission denied")
    config = p / "config.json"
    if not config.is_file():
        raise UserError(f"{flag} {path}: no config.json there (not a model saved with save_pretrained)")
    if not os.access(config, os.R_OK):
        raise UserError(f"{flag} {config}: permission denied")


def hub_offline() -> bool:
    from huggingface_hub import constants
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_miss(flag: str, path: str, err: BaseException) -> UserError | None:
    """The one line for a Hub id that did not load because it is not cached and the Hub cannot be reached
    (offline mode or no network), saying what to do; None for any other failure."""
    if looks_local(path) or not (hub_offline() or "couldn't connect" in str(err).lower()):
        return None
    why = "HF_HUB_OFFLINE is set" if hub_offline() else "no network connection to huggingface.co"
    return UserError(f"{flag} {path}: not a local folder, and not in the Hugging Face cache while the Hub cannot be "
                     f"reached ({why}): download it once online, or give {flag} a local folder")


def placement(args) -> dict:
    """The load_models placement keywords of the flags; the default device is the GPU of this process
    (``cuda:LOCAL_RANK`` under torchrun) where CUDA is available, else the CPU."""
    from .integrations import parallel
    device_map = getattr(args, "device_map", None)
    policy_device, reward_device = getattr(args, "policy_device", None), getattr(args, "reward_device", None)
    if device_map is None and policy_device is None:
        policy_device = str(parallel.world().device())
    return {"policy_device": policy_device, "reward_device": reward_device, "device_map": device_map}


def dtype_of(args) -> torch.dtype:
    """The torch dtype of ``--dtype`` (float32 when the command has no such flag)."""
    return DTYPES[getattr(args, "dtype", None) or "float32"]


def load_user_models(policy: str | None, reward_model: str | None, **kw):
    """:func:`load_models` after checking the user's paths; an OSError while loading a user-given model
    (a file missing or unreadable in its folder, a Hub id not cached while offline) becomes a UserError
    naming the flags, and a missing optional package of the embedded defaults a UserError with the
    install line."""
    check_model_dir("--policy", policy)
    check_model_dir("--reward-model", reward_model)
    try:
        return load_models(model_source(policy), model_source(reward_model), **kw)
    except OSError as err:
        given = [(flag, path) for flag, path in (("--policy", policy), ("--reward-model", reward_model)) if path]
        if not given:
            raise
        named = [(flag, path) for flag, path in given if str(Path(path)) in str(err) or path in str(err)] or given
        if len(named) == 1 and (miss := hub_miss(*named[0], err)):
            raise miss from err
        raise UserError(f"could not load {' / '.join(f'{flag} {path}' for flag, path in named)}: {err}") from err
    except ImportError as err:
        if "pip install" not in str(err):   # ours name the package to install; anything else is a bug
            raise
        raise UserError(str(err)) from err


def check_reward_flags(args) -> None:
    """At most one reward source; the vocabulary-level ones need the policy's vocabulary (checked later)."""
    given = [flag for flag, value in (("--reward-model", args.reward_model),
                                      ("--implicit-reference", args.implicit_reference),
                                      ("--token-reward", args.token_reward)) if value]
    if len(given) > 1:
        raise UserError(f"give one reward source, not {' and '.join(given)}")
    check_model_dir("--implicit-reference", args.implicit_reference)
    check_model_dir("--token-reward", args.token_reward)


def load_reward(args, loaded):
    """The reward the flags ask for: ``loaded.reward`` (the default or --reward-model), or an
    ImplicitReward / TokenReward on the causal LM at --implicit-reference / --token-reward."""
    flag, path = (("--implicit-reference", args.implicit_reference) if args.implicit_reference else
                  ("--token-reward", args.token_reward) if args.token_reward else (None, None))
    if path is None:
        return loaded.reward
    from transformers import AutoModelForCausalLM

    from .rewards.vocab import ImplicitReward, TokenReward
    try:
        lm = AutoModelForCausalLM.from_pretrained(model_source(path),
                                                  dtype=next(loaded.policy.parameters()).dtype).eval()
    except (OSError, ValueError) as err:   # ValueError: transformers' for a config that is not a causal LM's
        if isinstance(err, OSError) and (miss := hub_miss(flag, path, err)):
            raise miss from err
        raise UserError(f"could not load {flag} {path} as a causal LM: {str(err).splitlines()[0]}") from err
    lm.to(loaded.policy.device)
    if args.implicit_reference:
        reward = ImplicitReward(loaded.policy, lm, args.beta)
    else:   # summed, so the reward printed for a response is the whole response's
        reward = TokenReward(lm, scale=args.reward_scale, cumulative=True)
    try:
        reward.check(loaded.policy)
    except (TypeError, ValueError) as err:
        raise UserError(f"{flag} {path}: {err}") from None
    loaded.names["reward_model"] = f"{reward.describe(loaded.policy)} ({flag} {path})"
    return reward
