"""Module paths of the previous release, kept importable for one release with a DeprecationWarning.

``import args_fast.<old path>`` gives the module at its new path (the same module object, so state
and monkeypatching are shared); an old module whose names were split over several new ones gives a
module holding all of them. Installed by ``args_fast/__init__.py``; imports nothing until an old path
is asked for.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# old module -> new module, or the new modules whose public names it held
MOVED: dict[str, str | tuple[str, ...]] = {
    "args_fast.decoder": ("args_fast.decoding.decoder", "args_fast.decoding.inputs", "args_fast.validation"),
    "args_fast.objectives": ("args_fast.rewards.normalization", "args_fast.rewards.kinds",
                             "args_fast.decoding.calibration", "args_fast.engine.backends.multi_reward"),
    "args_fast.reward_head": "args_fast.rewards.head",
    "args_fast.vocab_rewards": "args_fast.rewards.vocab",
    "args_fast.ops": "args_fast.engine.ops",
    "args_fast.kv_cache": "args_fast.engine.kv_cache",
    "args_fast.csrc_ops": "args_fast.engine.csrc_ops",
    "args_fast.kernels": "args_fast.engine.kernels",
    "args_fast.runners": "args_fast.engine.runners",
    "args_fast.backends": "args_fast.engine.backends",
    "args_fast.backends.engine": "args_fast.engine.backends.base",
    "args_fast.hf_generate": "args_fast.integrations.hf_generate",
    "args_fast.parallel": "args_fast.integrations.parallel",
    "args_fast.models": "args_fast.loading",
    "args_fast.chitchat": "args_fast.data.chitchat",
    "args_fast.evaluation.prompts": "args_fast.data.prompts",
    "args_fast.reward_training": "args_fast.training.reward_heads",
    "args_fast.lora_sft": "args_fast.training.lora_sft",
    "args_fast.moo_baselines": "args_fast.training.baselines",
}


def new_path(old: str) -> str | tuple[str, ...] | None:
    """Where ``old`` lives now: an exact entry, or a submodule of a moved package."""
    if old in MOVED:
        return MOVED[old]
    parts = old.split(".")
    for cut in range(len(parts) - 1, 1, -1):
        target = MOVED.get(".".join(parts[:cut]))
        if isinstance(target, str):
            return target + "." + ".".join(parts[cut:])
    return None


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if not name.startswith("args_fast.") or new_path(name) is None:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return types.ModuleType(spec.name)

    def exec_module(self, module):
        name = module.__name__
        target = new_path(name)
        shown = target if isinstance(target, str) else " / ".join(target)
        warnings.warn(f"{name} moved to {shown}; the old path works for this release only", DeprecationWarning,
                      stacklevel=2)
        if isinstance(target, str):
            sys.modules[name] = importlib.import_module(target)   # the import statement returns this object
            return
        for new in target:
            source = importlib.import_module(new)
            for key, value in vars(source).items():
                if not key.startswith("__"):
                    module.__dict__.setdefault(key, value)


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
