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


# --------------------------------------------------------------------------------------- model kinds
CAUSAL_LM, SCORE_MODEL = "a causal LM", "a one-label score model (*ForSequenceClassification, num_labels=1)"


def _architectures(config) -> list[str]:
    return list(getattr(config, "architectures", None) or [])


def _kind_names(kind: str) -> set[str]:
    """The transformers class names that are ``kind`` (a causal LM, or a sequence classifier)."""
    from transformers.models.auto import modeling_auto as auto
    mapping = (auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if kind == CAUSAL_LM
               else auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
    names = set()
    for value in mapping.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def check_model_kind(label: str, path, kind: str, config) -> None:
    """Before loading: the saved model at ``path`` is of the ``kind`` its role needs (judged by the
    classes its config.json names, and a score model's number of labels); ValueError naming ``label``,
    the path and what was found. A config without ``architectures`` passes: the load's own check of
    missing weights (:func:`load_pretrained`) still refuses a head that would be random."""
    found = _architectures(config)
    if found and not set(found) & _kind_names(kind):
        raise UserError(f"{label} {path}: a {' / '.join(found)} (config.json architectures), not {kind}")
    if kind == SCORE_MODEL and getattr(config, "num_labels", 1) != 1:
        raise UserError(f"{label} {path}: {config.num_labels} labels (config.json id2label), not {kind}")


def load_pretrained(label: str, path, kind: str, **kwargs):
    """``path`` loaded as ``kind`` (:data:`CAUSAL_LM` or :data:`SCORE_MODEL`), in eval mode. Refused with a
    ValueError naming ``label`` and the path when it is another kind, or when its files lack weights of
    the model (transformers would initialise them at random, e.g. the LM head of a saved classifier or
    the score head of a saved LM) -- never a model that runs with a random head."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    cls = AutoModelForCausalLM if kind == CAUSAL_LM else AutoModelForSequenceClassification
    try:
        config = AutoConfig.from_pretrained(path)
    except ValueError as err:   # e.g. a model_type this transformers does not know
        raise UserError(f"{label} {path}: cannot load it as {kind}: {str(err).splitlines()[0]}") from err
    check_model_kind(label, path, kind, config)
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    # transformers' load report ("newly initialized" weights) is judged below: one clear line instead
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    except ValueError as err:
        raise UserError(f"{label} {path}: cannot load it as {kind}: {str(err).splitlines()[0]}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        found = " / ".join(_architectures(config)) or type(model).__name__
        raise UserError(f"{label} {path}: a {found} whose files lack weights {kind} needs ({shown}); they "
                         "would be initialised at random")
    return model.eval()


# --------------------------------------------------------------------------------------- content fingerprints
_FINGERPRINTS: dict = {}


def fingerprint(path) -> str:
    """What a saved model (or any file or folder) holds: the sha256 (first 16 hex digits) of the names,
    sizes and bytes of its regular files (a folder's, sorted by name, subfolders included). Runs that
    resume saved work compare these, so a model replaced at the same path is a different model. A file
    is hashed once per process while its size, mtime, ctime and inode are unchanged."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    # ctime too: a write changes it and no utime() can set it back, so a file rewritten in place is re-hashed
    stats = tuple((str(p.relative_to(root)) if root.is_dir() else p.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                   st.st_ino) for p in files for st in [p.stat()])
    key = (str(root.resolve()), stats)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for p, (name, size, *_) in zip(files, stats):
            digest.update(f"{name}\0{size}\0".encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        _FINGERPRINTS[key] = digest.hexdigest()[:16]
    return _FINGERPRINTS[key]


def model_fingerprints(**paths) -> dict:
    """``{role: fingerprint}`` of the models a run loads, for the check of its saved work: each path given
    (None: the role's embedded default -- the default policy's built folder, the default reward head's
    shipped files), e.g. ``model_fingerprints(policy=args.policy, reward_model=args.reward_model)``."""
    from . import default_models
    out = {}
    for role, path in paths.items():
        if path is not None:
            try:
                out[role] = fingerprint(path)
            except OSError as err:   # a file of a user's model folder that cannot be read: name the flag
                raise UserError(f"--{role.replace('_', '-')} {path}: cannot read {err.filename or path}: "
                                 f"{err.strerror or err}") from None
        elif role == "policy":
            out[role] = fingerprint(default_models.policy_dir())
        elif role == "reward_model":
            out[role] = fingerprint(default_models.REWARD_WEIGHTS) + "+" + fingerprint(default_models.REWARD_META)
        elif role == "relevance_reward_model":
            out[role] = fingerprint(default_models.objective_dir("relevance"))
    return out


def run_model_fingerprints(args) -> dict:
    """:func:`model_fingerprints` of the models a command's flags load: the policy and its one reward
    source (--reward-model or the default, --implicit-reference, or --token-reward)."""
    paths = {"policy": args.policy}
    if getattr(args, "implicit_reference", None):
        paths["implicit_reference"] = args.implicit_reference
    elif getattr(args, "token_reward", None):
        paths["token_reward"] = args.token_reward
    else:
        paths["reward_model"] = args.reward_model
    return model_fingerprints(**paths)


def load_models(policy_path: str | None = None, reward_path: str | None = None, *,
                dtype: torch.dtype = torch.float32, policy_device=None, reward_device=None,
                device_map: str | None = None, labels: tuple[str, str] = ("policy", "reward model")) -> LoadedModels:
    """The policy (a causal LM) and reward model (a one-label sequence classifier) in eval mode, in
    ``dtype``; the embedded defaults where a path is None. A reward model with another vocabulary
    than the policy's comes with its own tokenizer, so ARGS scores it through text.

    Placement: ``policy_device`` / ``reward_device`` (default: the CPU, or the reward on the policy's
    device); or ``device_map`` ("auto", ...), through accelerate, for a model given by path that is
    larger than one device: its layers are spread over the GPUs (and the CPU) and the ``hf`` and
    ``reference`` backends run it (the static engines need each model whole on one device and say so).
    The default reward model lives on the default policy's backbone, so it goes where the policy goes.

    A path must hold what its role needs (:func:`load_pretrained`): a causal LM with its trained LM head
    for the policy, a one-label score model for the reward; else a ValueError naming ``labels``' entry
    (the CLI passes its flags), the path and what was found."""
    from transformers import AutoTokenizer

    from . import default_models
    check_placement(policy_path, reward_path, policy_device, reward_device, device_map)
    shared = policy_path is None and reward_path is None
    split = {"device_map": device_map} if device_map else {}
    if policy_path is None:
        policy, tokenizer = default_models.load_default_policy(dtype=dtype)
    else:
        policy = load_pretrained(labels[0], policy_path, CAUSAL_LM, dtype=dtype, **split)
        tokenizer = AutoTokenizer.from_pretrained(policy_path)
    if policy_device is not None:
        policy.to(policy_device)
    reward_tokenizer = None
    if reward_path is None:   # on the default policy: one backbone in memory, shared (the fused ARGS step)
        reward = default_models.load_default_reward(dtype=dtype, policy=policy if policy_path is None else None)
        if not shared:
            reward.to(reward_device or policy.device)
    else:
        reward = load_pretrained(labels[1], reward_path, SCORE_MODEL, dtype=dtype, **split)
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


def compile_of(args) -> bool | None:
    """The decoder's ``compile`` of ``--compile`` (None: auto, also when the command has no such flag)."""
    return {"on": True, "off": False}.get(getattr(args, "compile", None) or "auto")


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
        return load_models(model_source(policy), model_source(reward_model), labels=("--policy", "--reward-model"),
                           **kw)
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
    from .rewards.vocab import ImplicitReward, TokenReward
    try:
        lm = load_pretrained(flag, model_source(path), CAUSAL_LM, dtype=next(loaded.policy.parameters()).dtype)
    except OSError as err:
        if miss := hub_miss(flag, path, err):
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
