"""The one table of backends: what each runs, where, how its engine is built, and why it cannot run.

Every way of choosing a backend goes through here: ``backend="auto"``, an explicit name, the CLI's
``--backend`` choices, the tests and the benchmarks. A backend's ``build`` either returns a ready
:class:`~args_fast.engine.backends.base.Engine` (runners built and ops loaded once, reused by every
``generate`` call of the decoder that holds it) or raises :class:`BackendUnavailable` with the reason.

``auto`` tries :data:`AUTO_ORDER` for the policy's device type and takes the first engine that
builds. The static backends with fast kernels (``self_check=True``) have never been proven on every
GPU, so the first time in a process that ``auto`` would pick one on a device it runs
:func:`args_fast.engine.backends.self_check.self_check` (a few steps on a tiny random model against the
torch ops, CUDA-graph capture and replay included) and, on any failure, warns once and moves on.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable


from ... import hf
from .adaptive import AdaptiveEngine
from .base import ComposedEngine, Engine, Models, Options
from .hf_runners import HFFusedEngine, HFPolicyRunner, HFRewardRunner, check_maskable
from .reference import ReferencePolicy, ReferenceReward
from .static_engine import BackendUnavailable, build_static_engine
from .self_check import self_check
from .text_reward import TextReward, encoder_reward_fn


@dataclass(frozen=True)
class Backend:
    name: str
    runs_on: str
    summary: str
    build: Callable[[Models, Options], Engine]
    self_check: bool = False     # run the self-check before auto stakes a run on it


# ------------------------------------------------------------------------------------------ builders
def _text_reward(models: Models, device) -> TextReward:
    fn = models.reward_model
    if models.reward_tokenizer is not None:
        fn = encoder_reward_fn(models.reward_model, models.reward_tokenizer)
    return TextReward(fn, models.tokenizer, device=device)


def _build_vocab(backend: str, models: Models, options: Options) -> Engine:
    from .vocab_reward import build_vocab_engine
    return build_vocab_engine(backend, models.policy, models.reward_model, options)


def _build_multi(backend: str, models: Models, options: Options) -> Engine:
    """Several rewards, each on the runner its kind has on ``backend`` ("reference" or "hf"), mixed by
    :class:`~args_fast.engine.backends.multi_reward.MultiRewardRunner` (see ``args_fast/rewards/kinds.py``)."""
    from .multi_reward import MultiRewardRunner
    from ...rewards.head import RewardHead
    from .vocab_reward import CachedVocabReward, ReferenceVocabReward, _LogitsTap
    policy, multi = models.policy, models.reward_model
    reference = backend == "reference"
    if not reference:
        check_maskable("policy", policy)
    tap = ReferencePolicy(policy) if reference else _LogitsTap(HFPolicyRunner(policy))
    runners = []
    for i, o in enumerate(multi.objectives):
        name = f"reward_model[{i}]"
        if o.kind == "text":   # a model read through reward_tokenizer (only ever one reward) or a callable
            runners.append(_text_reward(Models(policy, o.engine_reward, "text", models.tokenizer,
                                               models.reward_tokenizer), policy.device))
        elif o.kind == "vocab":
            o.engine_reward.check(policy)
            if reference:
                runners.append(ReferenceVocabReward(o.engine_reward, policy.device))
            else:
                for extra, lm in o.engine_reward.extra_models(policy):
                    check_maskable(f"{name}.{extra}", lm)
                runners.append(CachedVocabReward(o.engine_reward, policy, tap, HFPolicyRunner))
        elif reference:   # "head" or "cached": full forwards of every candidate sequence
            runners.append(ReferenceReward(o.engine_reward))
        elif o.kind == "head" and isinstance(o.model, RewardHead):
            raise BackendUnavailable(f"{name} is a RewardHead mixed with rewards that are not heads: the hf backend "
                                     "fuses heads only when every reward is one (the reference backend runs this)")
        else:   # a score model, possibly on the policy's own backbone: its own prefix-cached pass
            model = o.model if o.kind == "head" else o.engine_reward
            check_maskable(name, model)
            runners.append(HFRewardRunner(model, options.k))
    return ComposedEngine(tap, MultiRewardRunner(runners, multi, policy.device), **vars(options))


def _build_reference(models: Models, options: Options) -> Engine:
    if models.reward_kind == "multi":
        return _build_multi("reference", models, options)
    if models.reward_kind == "vocab":
        return _build_vocab("reference", models, options)
    reward = (_text_reward(models, models.policy.device) if models.reward_kind == "text"
              else ReferenceReward(models.reward_model))
    return ComposedEngine(ReferencePolicy(models.policy), reward, **vars(options))


def _build_hf(models: Models, options: Options) -> Engine:
    if models.reward_kind == "multi":
        return _build_multi("hf", models, options)
    if models.reward_kind == "vocab":
        return _build_vocab("hf", models, options)
    cached = [("policy", models.policy)] + ([("reward_model", models.reward_model)]
                                            if models.reward_kind == "cached" else [])
    for name, model in cached:
        check_maskable(name, model)
    if models.reward_kind == "head":
        family = getattr(models.policy.config, "model_type", None)
        if family not in HFFusedEngine.FAMILIES:
            raise BackendUnavailable(f"the fused reward-head step computes logits as lm_head(final hidden state), "
                                     f"checked for model types {HFFusedEngine.FAMILIES}, not {family!r}")
        return HFFusedEngine(models.policy, models.reward_model, **vars(options))
    reward = (_text_reward(models, models.policy.device) if models.reward_kind == "text"
              else HFRewardRunner(models.reward_model, options.k))
    return ComposedEngine(HFPolicyRunner(models.policy), reward, **vars(options))


def _static_builder(ops_name: str) -> Callable[[Models, Options], Engine]:
    def build(models: Models, options: Options) -> Engine:
        if models.reward_kind == "multi":
            raise BackendUnavailable("several rewards run fused on the static engines when every one is a head on "
                                     "the policy's own backbone; mixed kinds run on 'hf' or 'reference'")
        if models.reward_kind == "vocab":
            return _build_vocab(ops_name, models, options)
        if models.reward_kind == "head":   # fused: the policy scores its own candidates
            return build_static_engine(ops_name, models.policy, None, reward_head=models.reward_model, **vars(options))
        if models.reward_kind != "cached":
            raise BackendUnavailable("it needs a causal *ForSequenceClassification reward_model on the policy's "
                                     "vocabulary (the prefix-cached path); text rewards run on 'hf' or 'reference'")
        return build_static_engine(ops_name, models.policy, models.reward_model, **vars(options))
    return build


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("reference", "any device", "the paper's Algorithm 1, literally: each row alone, every candidate's "
            "reward from a full forward of its whole sequence; slow on purpose, the oracle", _build_reference),
    Backend("hf", "any device", "the Hugging Face models' own forwards, eager, with a shared-prefix slot cache: "
            "all B*k candidates scored in one forward per step", _build_hf),
    Backend("static", "CPU, CUDA", "static runners and static caches (CUDA-graph steps on CUDA) with torch ops "
            "(SDPA attention)", _static_builder("static")),
    Backend("static-triton", "CUDA (CPU only under TRITON_INTERPRET=1, for tests)", "the static engine with the "
            "Triton candidate attention and fused select + commit", _static_builder("static-triton"), self_check=True),
    Backend("static-compiled", "CPU, CUDA", "the static engine's whole step as one torch.compile graph (Inductor: "
            "C++ with weight prepacking on CPU); one compile per batch size, cache bucket and mode, reused after",
            _static_builder("static-compiled"), self_check=True),
    Backend("static-csrc", "CUDA, CPU", "the static engine with the csrc extension's select + commit and top-k "
            "(C++ on CPU, CUDA kernels on GPU) and the Triton attention where it runs",
            _static_builder("static-csrc"), self_check=True),
)}

# Old names, kept working for one release with a DeprecationWarning.
ALIASES = {"torch": "hf", "native": "static", "triton": "static-triton", "cuda": "static-csrc"}
CHOICES = ("auto",) + tuple(BACKENDS) + tuple(ALIASES)
# auto: the first of these (by the policy's device type) whose engine builds and, if it has fast
# kernels, passes the self-check. On CPU interpreted Triton is for tests only and the csrc CPU ops
# save nothing measurable next to the hf backend's model forwards, so hf leads there.
AUTO_ORDER = {"cuda": ("static-csrc", "static-triton", "static", "hf", "reference"),
              "default": ("hf", "reference")}


def canonical_name(name: str) -> str:
    """The backend's current name; an old name warns (DeprecationWarning) and maps to its new one."""
    if not isinstance(name, str) or name not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {name!r}")
    if name in ALIASES:
        warnings.warn(f"backend={name!r} is deprecated and will be removed in the next release; use "
                      f"backend={ALIASES[name]!r}", DeprecationWarning, stacklevel=3)
        return ALIASES[name]
    return name


def build(name: str, models: Models, options: Options) -> Engine:
    """The engine of backend ``name`` (a current name); ValueError saying why when it cannot run these models."""
    try:
        return BACKENDS[name].build(models, options)
    except BackendUnavailable as exc:
        raise ValueError(f"backend={name!r} cannot run these models: {exc}") from None


def unavailable_reason(name: str, models: Models, options: Options) -> str | None:
    """Why backend ``name`` cannot run these models, or None when it can (builds an engine to find out)."""
    try:
        BACKENDS[name].build(models, options)
    except BackendUnavailable as exc:
        return str(exc)
    return None


def _checked(name: str, models: Models, options: Options, reasons: list[str], engine: Engine | None = None
             ) -> Engine | None:
    """Backend ``name``'s engine (``engine`` when already built), self-checked where it has fast kernels;
    None (reason appended) if not."""
    backend = BACKENDS[name]
    device = models.policy.device
    if engine is None:
        try:
            engine = backend.build(models, options)
        except BackendUnavailable as exc:
            reasons.append(f"{name}: {exc}")
            return None
    if backend.self_check:
        dims = getattr(engine, "head_dims", None) or (hf.head_dim(models.policy.config),) * 2
        failure, ran_now = self_check(name, backend.build, BACKENDS["static"].build, device,
                                      next(models.policy.parameters()).dtype, *dims)
        if failure is not None:
            if ran_now:   # one warning line per process and device, not one per decoder
                warnings.warn(f"args_fast: backend {name!r} failed its self-check on {device} ({failure}); "
                              "auto falls back to the next backend", RuntimeWarning, stacklevel=4)
            reasons.append(f"{name}: self-check failed ({failure})")
            return None
    return engine


def choose(models: Models, options: Options, compile: bool | None = None) -> tuple[str, Engine]:
    """``auto``: the first backend of :data:`AUTO_ORDER` that builds and passes its self-check.
    ``compile=True`` puts ``static-compiled`` first; ``compile=False`` leaves it out; ``None`` on CPU
    gives the ``hf`` engine, which switches to the compiled step for requests where compiling pays
    (:class:`~args_fast.engine.backends.adaptive.AdaptiveEngine`)."""
    device = models.policy.device
    order = AUTO_ORDER.get(device.type, AUTO_ORDER["default"])
    if compile:
        order = ("static-compiled",) + order
    reasons = []
    for name in order:
        engine = _checked(name, models, options, reasons)
        if engine is None:
            continue
        if name == "hf" and compile is None and device.type == "cpu":
            try:   # built once here (runners only: caches and the compile come with the first request)
                compiled = BACKENDS["static-compiled"].build(models, options)
            except BackendUnavailable:
                compiled = None
            if compiled is not None:
                def build_compiled():   # self-checked on the first request that needs it
                    why = []
                    return _checked("static-compiled", models, options, why, engine=compiled), "; ".join(why)
                engine = AdaptiveEngine(engine, build_compiled, dtype=next(models.policy.parameters()).dtype)
        return name, engine
    raise ValueError("no backend can run these models: " + "; ".join(reasons))
