"""ARGS decoding: the public API and the one decoding loop every backend plugs into.

    score(v) = logit(v) + w * r([x, v])   over the policy's top-k tokens v
    greedy: argmax score;  stochastic: sample softmax(score / T) via Gumbel-max on passed-in uniforms.

From ``args_fast.generate`` to a Triton kernel, every hop (backend ``static-triton``):

1. ``generate`` -> :class:`ARGSDecoder` (this module): validates the options, classifies the reward,
   and asks ``backends/registry.py`` for an engine once: ``registry.choose`` (auto) or
   ``registry.build`` (a named backend) -> the backend's builder makes the two
   ``runners.StaticRunner`` s (``runners/from_hf.py``), loads the ops table ``OPS_TABLES[name]``
   (``backends/static_engine.py``) and returns a ``StaticEngine``.
2. :meth:`ARGSDecoder.generate` (the loop below) -> ``StaticEngine.prefill`` once, then
   ``StaticEngine.step`` per token -> ``StaticEngine._body`` (or the CUDA graph captured from it).
3. ``_body`` -> the reward runner's ``StaticRunner.decode`` (``runners/transformer.py``) -> per layer
   ``ops.attention`` = ``kernels.candidate_attention`` (``kernels/candidate_attention.py``) -> the
   custom op ``args_fast::candidate_attention`` -> ``_prefix_split_kernel`` and ``_combine_kernel``;
   then ``ops.select_commit`` = ``kernels.select_commit`` -> ``_select_kernel`` and ``_commit_kernel``.
"""
from __future__ import annotations

import inspect
import math
import numbers
import threading
from dataclasses import dataclass
from typing import Callable

import numpy
import torch

from . import hf
from .backends import registry
from .backends.engine import Engine

MODES = ("greedy", "stochastic")
BACKENDS = registry.CHOICES


@dataclass
class GenerateOutput:
    sequences: torch.Tensor   # (B, P + T) prompt then generated tokens; pad after a row's EOS
    rewards: torch.Tensor     # (B, T) reward of the chosen continuation per step; nan once finished;
    #                           (B, T, n) with n rewards: each one's (normalised) reward


# float32 scores are logit + w * reward, divided by T in stochastic mode: these bounds keep them finite
# for |logit|, |reward| up to 1e8 (a w or T outside them overflows or underflows float32).
W_LIMIT, T_MIN, T_MAX = 1e30, 1e-30, 1e30


def _is_bool(value) -> bool:
    return isinstance(value, (bool, numpy.bool_)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool)


def _scalar(value):
    """A Python number from an int / float, a numpy scalar or a one-element tensor; else the value as is."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() <= 1:
        return value.item()
    if isinstance(value, (numpy.generic, numpy.ndarray)) and value.ndim == 0:
        return value.item()
    return value


def as_int(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; ValueError naming ``name`` and the range otherwise."""
    span = f"[{low}, {high}]" if high is not None else f">= {low}"
    number = _scalar(value)
    if _is_bool(value) or isinstance(number, bool) or not isinstance(number, numbers.Integral):
        raise ValueError(f"{name} must be an int {span}, got {value!r}")
    number = int(number)
    if number < low or (high is not None and number > high):
        raise ValueError(f"{name} must be an int {span}, got {number}")
    return number


def as_float(name: str, value, low: float, high: float, *, open_low: bool = False) -> float:
    """``value`` as a finite float in [low, high] ((low, high] with ``open_low``); ValueError naming ``name``."""
    span = f"{'(' if open_low else '['}{low:g}, {high:g}]"
    number = _scalar(value)
    if _is_bool(value) or isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise ValueError(f"{name} must be a number in {span}, got {value!r}")
    number = float(number)
    if not math.isfinite(number) or number > high or number < low or (open_low and number == low):
        raise ValueError(f"{name} must be a finite number in {span}, got {number!r}")
    return number


def _token_ids(name: str, value, vocab: int) -> list[int]:
    """One id or several (list, tuple, tensor, numpy array) as a list of ints in [0, vocab)."""
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        value = value.tolist()
    elif isinstance(value, numpy.ndarray) and value.ndim == 1:
        value = value.tolist()
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    return [as_int(name, i, 0, vocab - 1) for i in items]


def _takes_two_arguments(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _eos_list(value, vocab: int) -> list[int] | None:
    """An id or ids that end a row; ``[]`` means never stop early."""
    if value is None:
        return None
    return _token_ids("eos_token_id", value, vocab) or None


class ARGSDecoder:
    """Holds a policy, a reward, the ARGS options and the engine of one backend; ``generate`` runs the
    decoding loop.

    ``reward_model`` is one of:

    * a :class:`~args_fast.reward_head.RewardHead` on the policy, or a one-label
      ``*ForSequenceClassification`` whose backbone is the policy's own tensors: the fused step, one
      policy pass per token (``reward_kind == "head"``);
    * an :class:`~args_fast.vocab_rewards.ImplicitReward` or :class:`~args_fast.vocab_rewards.TokenReward`:
      token rewards over the vocabulary, no candidate pass (``"vocab"``);
    * a Hugging Face ``*ForSequenceClassification`` with one label sharing the policy's vocabulary
      (prefix-cached path, ``"cached"``);
    * a model with its own ``reward_tokenizer``, or any callable
      ``reward(prompts: list[str], responses: list[str]) -> floats`` (text path; needs ``tokenizer``).

    The options are fixed at construction (read-only attributes): the engine is built for them once,
    with its runners, ops and caches, and reused by every call. ``decoder.replace(w=2.0)`` returns a
    new decoder with some options changed. ``engine`` takes a ready
    :class:`~args_fast.backends.engine.Engine` instead of building one (tests, benchmarks, your own
    engine); its options must equal the decoder's.

    One decoder may be called from several threads: calls run one at a time (a lock around the
    engine, whose caches hold one request's state).
    """

    def __init__(self, policy, reward_model, *, k: int = 10, w: float = 1.0, mode: str = "greedy",
                 temperature: float = 0.7, max_new_tokens: int = 128, eos_token_id=None, pad_token_id=None,
                 backend: str = "auto", tokenizer=None, reward_tokenizer=None, engine: Engine | None = None):
        self._init_args = dict(k=k, w=w, mode=mode, temperature=temperature, max_new_tokens=max_new_tokens,
                               eos_token_id=eos_token_id, pad_token_id=pad_token_id, backend=backend,
                               tokenizer=tokenizer, reward_tokenizer=reward_tokenizer)
        if not isinstance(policy, torch.nn.Module) or not hasattr(policy, "get_output_embeddings"):
            raise TypeError(f"policy must be a Hugging Face causal LM, got {type(policy).__name__}")
        self.policy, self.reward_model = policy, reward_model
        self.vocab = policy.get_output_embeddings().out_features
        self.tokenizer, self.reward_tokenizer = tokenizer, reward_tokenizer
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        k = as_int("k", k, 1, self.vocab)
        from .objectives import is_normalized
        self.multi = isinstance(reward_model, (list, tuple)) or is_normalized(reward_model)
        if self.multi:   # several rewards (or one carrying normalisation statistics): weights per reward
            weights = self._check_weights(reward_model, w)
            w = 1.0      # the engine ranks by logit + 1.0 * (the weighted sum of the normalised rewards)
        else:
            w = as_float("w", w, -W_LIMIT, W_LIMIT)
        if mode == "stochastic":
            temperature = as_float("temperature", temperature, T_MIN, T_MAX)
        elif _is_bool(temperature) or not isinstance(_scalar(temperature), numbers.Real):   # unused when greedy
            raise ValueError(f"temperature must be a number, got {temperature!r}")
        max_new_tokens = as_int("max_new_tokens", max_new_tokens, 0)
        self._k, self._w, self._mode, self._temperature = k, w, mode, temperature
        self.max_new_tokens = max_new_tokens
        backend = registry.canonical_name(backend)
        if self.multi:
            self._w = weights if isinstance(reward_model, (list, tuple)) else weights[0]
            self.reward_kind, engine_reward = self._classify_rewards(reward_model, weights, reward_tokenizer,
                                                                     tokenizer)
            self.n_objectives = len(weights)
        else:
            self.reward_kind, engine_reward = self._classify_reward(reward_model, reward_tokenizer, tokenizer)
            self.n_objectives = 1
        self._engine_reward = engine_reward
        gen = getattr(policy, "generation_config", None)
        # None: the policy's generation_config decides; [] (or a config without one): never stop early.
        self._eos = _eos_list(eos_token_id if eos_token_id is not None else getattr(gen, "eos_token_id", None),
                              self.vocab)
        if pad_token_id is None:
            pad_token_id = getattr(gen, "pad_token_id", None)
        if pad_token_id is None and self._eos:
            pad_token_id = self._eos[0]   # as transformers' generate does
        if pad_token_id is not None:
            pad_token_id = as_int("pad_token_id", pad_token_id, 0, self.vocab - 1)
        self._pad_token_id = pad_token_id
        options = registry.Options(k=k, w=w, temperature=temperature if mode == "stochastic" else 1.0,
                                   eos_ids=self._eos, pad_id=self._pad())
        if engine is not None:
            self._engine = self._check_engine(engine, options, check_temperature=mode == "stochastic")
            self._backend = "custom"
        else:
            models = registry.Models(policy, engine_reward, self.reward_kind, tokenizer, reward_tokenizer)
            if backend == "auto":
                self._backend, self._engine = registry.choose(models, options)
            else:
                self._backend, self._engine = backend, registry.build(backend, models, options)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------ read-only options
    k = property(lambda self: self._k, doc="candidates per step")
    w = property(lambda self: self._w, doc="reward weight")
    mode = property(lambda self: self._mode, doc="'greedy' or 'stochastic'")
    temperature = property(lambda self: self._temperature, doc="stochastic mode's temperature")
    eos_token_id = property(lambda self: self._eos, doc="ids that end a row (None: never stop early)")
    pad_token_id = property(lambda self: self._pad_token_id, doc="id written after a row's EOS")
    backend = property(lambda self: self._backend, doc="the backend that runs ('custom' for a passed engine)")
    engine = property(lambda self: self._engine, doc="the engine the loop drives (see backends/engine.py)")

    @property
    def backend_description(self) -> str:
        """What runs, in words: the backend and, for the static engine, the ops it plugged in (e.g. the
        csrc CPU build on a machine without CUDA)."""
        if self._backend == "custom":
            return f"custom engine {type(self._engine).__name__}"
        ops = getattr(self._engine, "ops", None)
        detail = getattr(ops, "description", "") or registry.BACKENDS[self._backend].summary
        return f"{self._backend} ({detail}); reward: {self.reward_path}"

    @property
    def reward_path(self) -> str:
        """How the reward is computed, in words (the CLI prints it)."""
        if self.reward_kind == "head":
            head = self._engine_reward_description()
            if self._backend == "reference":
                return f"{head}, computed the literal way (a full forward of every candidate sequence)"
            return f"fused: {head}, one policy pass per token over the k candidates"
        if self.reward_kind == "vocab":
            return self.reward_model.describe(self.policy)
        if self.reward_kind == "cached":
            return "a separate reward model: one policy decode plus one reward pass over the k candidates per token"
        if self.reward_kind == "multi":
            names = {"cached": "a separate reward model", "text": "a text reward", "head": "a head on the policy"}
            parts = [names.get(o.kind) or o.engine_reward.describe(self.policy) for o in self._engine_reward.objectives]
            return f"{len(parts)} rewards mixed by w = {self._w}, each on its own runner: " + "; ".join(parts)
        return "text reward: candidates decoded and scored as text"

    def _engine_reward_description(self) -> str:
        from .reward_head import RewardHead
        if self.multi:
            return (f"{self.n_objectives} reward head(s) on the policy's own backbone, normalised and mixed by "
                    f"w = {self._w}")
        if isinstance(self.reward_model, RewardHead):
            return self.reward_model.describe()
        return "the reward model's score head on the policy's own (shared) backbone"

    def replace(self, **changes) -> "ARGSDecoder":
        """A new decoder on the same models with some options changed, e.g. ``decoder.replace(w=2.0)``."""
        unknown = sorted(set(changes) - set(self._init_args))
        if unknown:
            raise TypeError(f"replace() takes the options {sorted(self._init_args)}, got {unknown}")
        return ARGSDecoder(self.policy, self.reward_model, **{**self._init_args, **changes})

    # ----------------------------------------------------------------------------------- checks
    @staticmethod
    def _check_engine(engine, options: registry.Options, check_temperature: bool):
        if not isinstance(engine, Engine):
            raise TypeError(f"engine must implement args_fast.backends.engine.Engine (k, w, temperature, eos_ids, "
                            f"pad_id, prefill, step), got {type(engine).__name__}")
        for name, want in vars(options).items():
            got = getattr(engine, name)
            if name == "temperature":
                same = not check_temperature or (got is not None and float(got) == float(want))
            else:
                same = (list(got) if got else None) == want if name == "eos_ids" else got == want
            if not same:
                raise ValueError(f"engine.{name} is {got!r} but the decoder's is {want!r}; build the engine with "
                                 "the decoder's options")
        return engine

    @staticmethod
    def _check_weights(reward_model, w) -> list[float]:
        """``w`` for a list of n rewards: n finite numbers (a single reward keeps a plain number)."""
        if not isinstance(reward_model, (list, tuple)):
            return [as_float("w", w, -W_LIMIT, W_LIMIT)]
        n = len(reward_model)
        if n == 0:
            raise ValueError("reward_model is an empty list: give at least one reward")
        if isinstance(w, torch.Tensor) and w.dim() == 1:
            w = w.tolist()
        if isinstance(w, numpy.ndarray) and w.ndim == 1:
            w = w.tolist()
        if not isinstance(w, (list, tuple)) or len(w) != n:
            raise ValueError(f"w must be a list of {n} weights, one per reward in reward_model, got {w!r}")
        return [as_float(f"w[{i}]", value, -W_LIMIT, W_LIMIT) for i, value in enumerate(w)]

    def _classify_rewards(self, rewards, weights, reward_tokenizer, tokenizer) -> tuple[str, object]:
        """Several rewards (or one with normalisation statistics): "head" (all heads on the policy's
        backbone: one combined head, normalisation folded in, mixed by the weights) or "multi"
        (:class:`~args_fast.objectives.MultiObjective`, each reward on its own runner)."""
        from .objectives import MultiObjective, Objective, combine_heads, normalization_of
        items = list(rewards) if isinstance(rewards, (list, tuple)) else [rewards]
        if reward_tokenizer is not None and len(items) > 1:
            raise ValueError("reward_tokenizer with several rewards: it would apply to all of them; give a reward "
                             "with its own tokenizer as a text callable reward(prompts, responses) instead")
        objectives = []
        for i, item in enumerate(items):
            model, mean, std = normalization_of(item)
            if isinstance(model, (list, tuple)):
                raise TypeError(f"reward_model[{i}] is a list: give one flat list of rewards")
            try:
                kind, engine_reward = self._classify_reward(model, reward_tokenizer, tokenizer)
            except (TypeError, ValueError) as err:
                raise type(err)(f"reward_model[{i}]: {err}") from None
            objectives.append(Objective(kind, engine_reward, model, mean, std))
        if all(o.kind == "head" for o in objectives):
            head = combine_heads(self.policy, [o.engine_reward for o in objectives], weights,
                                 [o.mean for o in objectives], [o.std for o in objectives])
            return "head", head
        return "multi", MultiObjective(objectives, weights)

    def _classify_reward(self, reward_model, reward_tokenizer, tokenizer) -> tuple[str, object]:
        """(kind, what the engine gets): "head" (a RewardHead, given or read off a score model on the
        policy's own backbone), "vocab" (token rewards over the vocabulary), "cached" (a separate score
        model on the policy's vocabulary) or "text"; see ``registry.Models``."""
        from .reward_head import RewardHead, shares_backbone
        from .vocab_rewards import VocabReward
        if isinstance(reward_model, RewardHead):
            if reward_model.policy is not self.policy:
                raise ValueError("reward_model is a RewardHead on another model than this policy; build it on the "
                                 "policy passed here")
            return "head", reward_model
        if isinstance(reward_model, VocabReward):
            reward_model.check(self.policy)
            return "vocab", reward_model
        if reward_tokenizer is None and shares_backbone(self.policy, reward_model):
            # the reward model's backbone is the policy's own tensors: score with one pass of the policy
            return "head", RewardHead.from_reward_model(self.policy, reward_model)
        return self._classify_separate_reward(reward_model, reward_tokenizer, tokenizer), reward_model

    def _classify_separate_reward(self, reward_model, reward_tokenizer, tokenizer) -> str:
        # A Hugging Face model is a score model; any other callable (a function, or an nn.Module of
        # the user's with forward(prompts, responses)) is a text reward.
        if isinstance(reward_model, torch.nn.Module) and not hf.is_hf_model(reward_model) \
                and not _takes_two_arguments(reward_model.forward):
            raise TypeError(f"reward_model is a {type(reward_model).__name__} module but neither a Hugging Face "
                            "*ForSequenceClassification model nor a text reward with forward(prompts, responses)")
        if hf.is_hf_model(reward_model):
            if not hf.is_scalar_reward_model(reward_model):
                raise TypeError(f"reward_model must have a scalar score head: {hf.describe_reward_problem(reward_model)}")
            if reward_tokenizer is not None:
                if tokenizer is None:
                    raise ValueError("tokenizer (the policy's) is required with reward_tokenizer: candidates are "
                                     "decoded to text and re-encoded for the reward model")
                return "text"
            rm_vocab, pol_vocab = reward_model.config.vocab_size, self.policy.config.vocab_size
            if rm_vocab != pol_vocab:
                raise ValueError(f"reward_model vocabulary ({rm_vocab}) differs from the policy's ({pol_vocab}); "
                                 "pass reward_tokenizer to score through text instead")
            if not hf.is_causal_lm(reward_model):
                raise ValueError("a bidirectional reward_model needs reward_tokenizer (text path)")
            return "cached"
        if callable(reward_model):
            if tokenizer is None:
                raise ValueError("tokenizer (the policy's) is required when reward_model is a text callable")
            return "text"
        raise TypeError(f"reward_model must be a *ForSequenceClassification model or a callable, "
                        f"got {type(reward_model).__name__}")

    def _check_inputs(self, input_ids, attention_mask, max_new_tokens, generator):
        if isinstance(generator, (list, tuple)):
            rows = getattr(input_ids, "shape", (None,))[0]
            if not all(isinstance(g, torch.Generator) for g in generator) or len(generator) != rows:
                raise TypeError(f"generator as a list must hold one torch.Generator per batch row ({rows}), got "
                                f"{len(generator)} items of types {sorted({type(g).__name__ for g in generator})}")
            if len({g.device for g in generator}) > 1:
                raise ValueError("generator: the per-row generators must all be on one device")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, a list of one per batch row, or None, got "
                            f"{type(generator).__name__}")
        if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor of shape (batch, prompt_len) or None, got "
                            f"{type(attention_mask).__name__}")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
            raise ValueError(f"input_ids must be an integer tensor of shape (batch, prompt_len), got "
                             f"{getattr(input_ids, 'shape', type(input_ids).__name__)}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); every row needs a prompt token")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                             f"{tuple(input_ids.shape)}")
        mask = attention_mask.bool()
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 and 1")
        lengths = mask.sum(-1)
        if bool((lengths == 0).any()):
            raise ValueError(f"empty prompt: attention_mask rows {torch.nonzero(lengths == 0).flatten().tolist()} "
                             "have no tokens")
        # left padding: once a row's mask turns on, it stays on
        if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
            raise ValueError("attention_mask must be left-padded (padding before the prompt, as for generation)")
        ids = input_ids[mask]
        if bool((ids < 0).any()) or bool((ids >= self.vocab).any()):
            raise ValueError(f"input_ids must be token ids in [0, {self.vocab})")
        max_new_tokens = as_int("max_new_tokens", max_new_tokens, 0)
        need = int(lengths.max()) + max_new_tokens
        models = self._token_models()
        if self._backend != "reference":
            # the hf and static backends attend over the whole context; only the reference backend runs
            # the models' own attention, which honours a sliding window
            for name, model in models:
                window = hf.sliding_window(model.config)
                if window is not None and need > window:
                    raise ValueError(f"prompt ({int(lengths.max())} tokens) + max_new_tokens ({max_new_tokens}) = {need} "
                                     f"exceeds the {name}'s sliding attention window of {window} tokens, which backend "
                                     f"{self._backend!r} does not apply; use backend='reference' (the models' own "
                                     "attention) or a shorter request")
        for name, model in models:
            limit = hf.context_length(model.config)
            if limit is not None and need > limit:
                raise ValueError(f"prompt ({int(lengths.max())} tokens) + max_new_tokens ({max_new_tokens}) = {need} "
                                 f"exceeds the {name}'s context of {limit} positions")
        return attention_mask, max_new_tokens

    def _token_models(self) -> list[tuple[str, torch.nn.Module]]:
        """The models that read the policy's token ids (their context limits apply to a request)."""
        if self.reward_kind == "cached":
            return [("policy", self.policy), ("reward_model", self.reward_model)]
        if self.reward_kind == "vocab":
            return [("policy", self.policy)] + self.reward_model.extra_models(self.policy)
        if self.reward_kind == "multi":
            models = [("policy", self.policy)]
            for i, o in enumerate(self._engine_reward.objectives):
                if o.kind == "cached":
                    models.append((f"reward_model[{i}]", o.engine_reward))
                elif o.kind == "vocab":
                    models += [(f"reward_model[{i}].{name}", m) for name, m in o.engine_reward.extra_models(self.policy)]
            return models
        return [("policy", self.policy)]

    def _pad(self) -> int:
        return self._pad_token_id if self._pad_token_id is not None else 0

    # ----------------------------------------------------------------------------------- the loop
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int | None = None, generator: torch.Generator | list | None = None,
                 progress: Callable[[int], None] | None = None,
                 on_step: Callable[[torch.Tensor], None] | None = None) -> GenerateOutput:
        """ARGS on a left-padded batch. ``generator`` (stochastic mode): one torch.Generator for the whole
        batch (one ``(B, k)`` uniform draw per step), or a list of one per row (row b draws its ``(k,)``
        from its own, so a row's draws do not depend on the rest of the batch). ``progress(1)`` is called
        after each step, and ``on_step(tokens)`` with that step's tokens ((B,) int64 on the policy's
        device; pad for finished rows). The loop may run a few steps past the one after which every row
        had finished (the output is cut there); those calls give pad for every row."""
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        attention_mask, max_new_tokens = self._check_inputs(input_ids, attention_mask, max_new_tokens, generator)
        device = self.policy.device
        input_ids, attention_mask = input_ids.to(device).long(), attention_mask.to(device).long()
        # padding may hold anything (collators write -100): no model ever sees it
        input_ids = input_ids.masked_fill(attention_mask == 0, self._pad())
        batch, prompt_len = input_ids.shape
        sequences = torch.full((batch, prompt_len + max_new_tokens), self._pad(), dtype=torch.long, device=device)
        sequences[:, :prompt_len] = input_ids
        # several rewards: each one's (normalised) reward of the chosen continuation, (B, T, n)
        per_objective = self.multi and self.n_objectives > 1
        rewards = torch.full((batch, max_new_tokens) + ((self.n_objectives,) if per_objective else ()), float("nan"),
                             device=device)
        if max_new_tokens == 0:
            return GenerateOutput(sequences, rewards)
        # all_done[t]: every row had finished after step t. Filled on device, read every `sync_every`
        # steps only, so accelerators are not stalled each token; the output is cut at the first True.
        all_done = torch.zeros(max_new_tokens, dtype=torch.bool, device=device)
        # bad_step[b]: the first step at which row b's candidates had a NaN / inf reward (-1: none yet)
        bad_step = torch.full((batch,), -1, dtype=torch.long, device=device)
        sync_every = 1 if device.type == "cpu" else 8
        stops = bool(self._eos)
        # uniforms are drawn on the generator's device: a CUDA generator means no host-to-device copy
        per_row = isinstance(generator, (list, tuple))
        u_device = (generator[0] if per_row else generator).device if generator is not None else "cpu"
        stochastic = self._mode == "stochastic"
        with self._lock:
            engine = self._engine
            engine.prefill(input_ids, attention_mask, max_new_tokens)
            for t in range(max_new_tokens):
                # exactly one (B, k) draw per step, finished rows included
                if not stochastic:
                    uniforms = None
                elif per_row:
                    uniforms = torch.stack([torch.rand(self._k, generator=g, device=u_device) for g in generator])
                else:
                    uniforms = torch.rand((batch, self._k), generator=generator, device=u_device)
                token, chosen_reward, finished = engine.step(uniforms, last=t == max_new_tokens - 1)
                sequences[:, prompt_len + t] = token
                if self.multi:   # the engine's chosen_reward is the weighted sum; report the objectives
                    chosen = engine.chosen_objectives.to(device)
                    # rows finished before this step: nan, as the engine's chosen_reward marks them
                    chosen = chosen.masked_fill(chosen_reward.to(device).isnan()[:, None], float("nan"))
                    rewards[:, t] = chosen if per_objective else chosen[:, 0]
                else:
                    rewards[:, t] = chosen_reward
                bad_step.masked_fill_(engine.nonfinite.to(device) & (bad_step < 0), t)
                if progress is not None:
                    progress(1)
                if on_step is not None:
                    on_step(sequences[:, prompt_len + t].clone())
                if (t + 1) % sync_every == 0:
                    self._raise_if_nonfinite(bad_step)
                if stops:
                    all_done[t] = finished.all()
                    if (t + 1) % sync_every == 0 and bool(all_done[t]):
                        break
            self._raise_if_nonfinite(bad_step)
        steps = max_new_tokens
        if stops and bool(all_done.any()):
            steps = int(all_done.int().argmax()) + 1
        return GenerateOutput(sequences[:, :prompt_len + steps], rewards[:, :steps])

    def _raise_if_nonfinite(self, bad_step: torch.Tensor) -> None:
        """A candidate reward that is NaN or infinite cannot rank the candidates: an error, not a skip.
        Treating it as -inf (or dropping the row) would silently change what ARGS optimises, and a NaN
        reward usually means a broken reward model or input, which the user needs to see."""
        if bool((bad_step >= 0).any()):
            rows = torch.nonzero(bad_step >= 0).flatten().tolist()
            step = int(bad_step[rows].min())
            raise ValueError(f"the reward model gave a NaN or infinite reward to a candidate at step {step} (0-based) "
                             f"for batch rows {[r for r in rows if int(bad_step[r]) == step]}; ARGS cannot rank "
                             "candidates by it (check the reward model and its inputs)")

    def generate_text(self, prompts: list[str], tokenizer=None, *, max_new_tokens: int | None = None,
                      generator: torch.Generator | None = None, chat_template: bool = False,
                      progress: Callable[[int], None] | None = None) -> list[str]:
        """Tokenize prompts (left-padded), run ARGS, return the decoded continuations."""
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("tokenizer is required for generate_text")
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a non-empty list of strings")
        input_ids, attention_mask = encode_prompts(tokenizer, prompts, chat_template=chat_template)
        out = self.generate(input_ids, attention_mask, max_new_tokens=max_new_tokens, generator=generator,
                            progress=progress)
        return decode_continuations(tokenizer, out.sequences[:, input_ids.shape[1]:], self._eos)


def encode_prompts(tokenizer, prompts: list[str], chat_template: bool = False):
    """Left-padded ids and mask; with ``chat_template`` each prompt becomes one user turn."""
    if chat_template:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat_template)
    finally:
        tokenizer.padding_side = side
    return enc["input_ids"], enc["attention_mask"]


def cut_at_eos(generated: torch.Tensor, eos_ids) -> tuple[list[list[int]], list[list[int]]]:
    """Per row of generated ids: the tokens before the first EOS, and ``[that EOS]`` (``[]`` for a row
    that ran to the length limit, or when ``eos_ids`` is empty / None)."""
    eos = set(eos_ids or ())
    rows, stops = [], []
    for row in generated.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), None)
        rows.append(row if cut is None else row[:cut])
        stops.append([] if cut is None else [row[cut]])
    return rows, stops


def decode_continuations(tokenizer, generated: torch.Tensor, eos_ids) -> list[str]:
    """The text of each row of generated ids, up to its first EOS."""
    rows, _ = cut_at_eos(generated, eos_ids)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


def generate(policy, reward_model, input_ids, attention_mask=None, *, k: int = 10, w: float = 1.0,
             mode: str = "greedy", temperature: float = 0.7, max_new_tokens: int = 128, eos_token_id=None,
             pad_token_id=None, generator: torch.Generator | None = None, backend: str = "auto",
             tokenizer=None, reward_tokenizer=None) -> GenerateOutput:
    """ARGS decoding in one call; see :class:`ARGSDecoder` for the options (``backend`` one of
    :data:`BACKENDS`; the names and what each runs are in ``args_fast/backends/registry.py``)."""
    decoder = ARGSDecoder(policy, reward_model, k=k, w=w, mode=mode, temperature=temperature,
                          max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                          backend=backend, tokenizer=tokenizer, reward_tokenizer=reward_tokenizer)
    return decoder.generate(input_ids, attention_mask, generator=generator)
