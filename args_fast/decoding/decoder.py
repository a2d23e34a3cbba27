"""ARGS decoding: the public API and the one decoding loop every backend plugs into.

    score(v) = logit(v) + w * r([x, v])   over the policy's top-k tokens v
    greedy: argmax score;  stochastic: sample softmax(score / T) via Gumbel-max on passed-in uniforms.

From ``args_fast.generate`` to a Triton kernel, every hop (backend ``static-triton``):

1. ``generate`` -> :class:`ARGSDecoder` (this module): validates the options (``args_fast/validation.py``),
   classifies the reward (``args_fast/rewards/kinds.py``) and asks ``args_fast/engine/backends/registry.py``
   for an engine once: ``registry.choose`` (auto) or
   ``registry.build`` (a named backend) -> the backend's builder makes the two
   ``runners.StaticRunner`` s (``engine/runners/from_hf.py``), loads the ops table ``OPS_TABLES[name]``
   (``args_fast/engine/backends/static_engine.py``) and returns a ``StaticEngine``.
2. :meth:`ARGSDecoder.generate` (the loop below) -> ``StaticEngine.prefill`` once, then
   ``StaticEngine.step`` per token -> ``StaticEngine._body`` (or the CUDA graph captured from it).
3. ``_body`` -> the reward runner's ``StaticRunner.decode`` (``engine/runners/transformer.py``) -> per layer
   ``ops.attention`` = ``kernels.candidate_attention`` (``engine/kernels/candidate_attention.py``) -> the
   custom op ``args_fast::candidate_attention`` -> ``_prefix_split_kernel`` and ``_combine_kernel``;
   then ``ops.select_commit`` = ``kernels.select_commit`` -> ``_select_kernel`` and ``_commit_kernel``.
"""
from __future__ import annotations

import numbers
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from ..engine.backends import registry
from ..engine.backends.base import Engine
from ..rewards import kinds
from ..validation import T_MAX, T_MIN, as_float, as_int, is_bool, scalar, token_ids
from .inputs import check_request, decode_continuations, encode_prompts

MODES = ("greedy", "stochastic")
BACKENDS = registry.CHOICES


@dataclass
class GenerateOutput:
    sequences: torch.Tensor   # (B, P + T) prompt then generated tokens; pad after a row's EOS
    rewards: torch.Tensor     # (B, T) reward of the chosen continuation per step; nan once finished;
    #                           (B, T, n) with n rewards: each one's (normalised) reward


def _eos_list(value, vocab: int) -> list[int] | None:
    """An id or ids that end a row; ``[]`` means never stop early."""
    if value is None:
        return None
    return token_ids("eos_token_id", value, vocab) or None


class ARGSDecoder:
    """Holds a policy, a reward, the ARGS options and the engine of one backend; ``generate`` runs the
    decoding loop.

    ``reward_model`` is one of:

    * a :class:`~args_fast.rewards.head.RewardHead` on the policy, or a one-label
      ``*ForSequenceClassification`` whose backbone is the policy's own tensors: the fused step, one
      policy pass per token (``reward_kind == "head"``);
    * an :class:`~args_fast.rewards.vocab.ImplicitReward` or :class:`~args_fast.rewards.vocab.TokenReward`:
      token rewards over the vocabulary, no candidate pass (``"vocab"``);
    * a Hugging Face ``*ForSequenceClassification`` with one label sharing the policy's vocabulary
      (prefix-cached path, ``"cached"``);
    * a model with its own ``reward_tokenizer``, or any callable
      ``reward(prompts: list[str], responses: list[str]) -> floats`` (text path; needs ``tokenizer``).

    The options are fixed at construction (read-only attributes): the engine is built for them once,
    with its runners, ops and caches, and reused by every call. ``decoder.replace(w=2.0)`` returns a
    new decoder with some options changed. ``engine`` takes a ready
    :class:`~args_fast.engine.backends.base.Engine` instead of building one (tests, benchmarks, your own
    engine); its options must equal the decoder's.

    One decoder may be called from several threads: calls run one at a time (a lock around the
    engine, whose caches hold one request's state).
    """

    def __init__(self, policy, reward_model, *, k: int = 10, w: float = 1.0, mode: str = "greedy",
                 temperature: float = 0.7, max_new_tokens: int = 128, eos_token_id=None, pad_token_id=None,
                 backend: str = "auto", tokenizer=None, reward_tokenizer=None, engine: Engine | None = None,
                 compile: bool | None = None):
        self._init_args = dict(k=k, w=w, mode=mode, temperature=temperature, max_new_tokens=max_new_tokens,
                               eos_token_id=eos_token_id, pad_token_id=pad_token_id, backend=backend,
                               tokenizer=tokenizer, reward_tokenizer=reward_tokenizer, compile=compile)
        if not isinstance(policy, torch.nn.Module) or not hasattr(policy, "get_output_embeddings"):
            raise TypeError(f"policy must be a Hugging Face causal LM, got {type(policy).__name__}")
        self.policy, self.reward_model = policy, reward_model
        self.vocab = policy.get_output_embeddings().out_features
        self.tokenizer, self.reward_tokenizer = tokenizer, reward_tokenizer
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        k = as_int("k", k, 1, self.vocab)
        if mode == "stochastic":
            temperature = as_float("temperature", temperature, T_MIN, T_MAX)
        elif is_bool(temperature) or not isinstance(scalar(temperature), numbers.Real):   # unused when greedy
            raise ValueError(f"temperature must be a number, got {temperature!r}")
        max_new_tokens = as_int("max_new_tokens", max_new_tokens, 0)
        backend = registry.canonical_name(backend)
        if not (compile is None or isinstance(compile, bool)):
            raise ValueError(f"compile must be None (auto), True or False, got {compile!r}")
        if compile is not None and backend not in ("auto", "static-compiled") or (
                compile is False and backend == "static-compiled"):
            raise ValueError(f"compile={compile} applies to backend='auto' (or True with 'static-compiled'), "
                             f"not backend={backend!r}")
        spec = kinds.classify(policy, reward_model, w, reward_tokenizer=reward_tokenizer, tokenizer=tokenizer)
        self._spec, self.reward_kind, self._engine_reward = spec, spec.kind, spec.engine_reward
        self.multi, self.n_objectives = spec.multi, spec.n_objectives
        self._k, self._w, self._mode, self._temperature = k, spec.w, mode, temperature
        self.max_new_tokens = max_new_tokens
        w = spec.engine_w
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
            models = registry.Models(policy, self._engine_reward, self.reward_kind, tokenizer, reward_tokenizer)
            if backend == "auto":
                self._backend, self._engine = registry.choose(models, options, compile=compile)
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
    engine = property(lambda self: self._engine, doc="the engine the loop drives (see engine/backends/base.py)")

    @property
    def backend_description(self) -> str:
        """What runs, in words: the backend and, for the static engine, the ops it plugged in (e.g. the
        csrc CPU build on a machine without CUDA)."""
        if self._backend == "custom":
            return f"custom engine {type(self._engine).__name__}"
        ops = getattr(self._engine, "ops", None)
        detail = getattr(ops, "description", "") or registry.BACKENDS[self._backend].summary
        detail += getattr(self._engine, "note", "")   # e.g. when auto switches to the compiled step
        return f"{self._backend} ({detail}); reward: {self.reward_path}"

    @property
    def compile_seconds(self) -> dict:
        """First-call seconds of each compiled step graph so far, by (batch, cache slots, mode); empty
        when nothing was compiled."""
        return dict(getattr(self._engine, "compile_seconds", {}) or {})

    @property
    def reward_path(self) -> str:
        """How the reward is computed, in words (the CLI prints it)."""
        return kinds.describe(self._spec, self.reward_model, self.policy, self._backend)

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
            raise TypeError(f"engine must implement args_fast.engine.backends.base.Engine (k, w, temperature, eos_ids, "
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
        attention_mask, max_new_tokens = check_request(
            input_ids, attention_mask, max_new_tokens, generator, vocab=self.vocab, backend=self._backend,
            models=kinds.token_models(self.policy, self._spec, self.reward_model))
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


def generate(policy, reward_model, input_ids, attention_mask=None, *, k: int = 10, w: float = 1.0,
             mode: str = "greedy", temperature: float = 0.7, max_new_tokens: int = 128, eos_token_id=None,
             pad_token_id=None, generator: torch.Generator | None = None, backend: str = "auto",
             tokenizer=None, reward_tokenizer=None, compile: bool | None = None) -> GenerateOutput:
    """ARGS decoding in one call; see :class:`ARGSDecoder` for the options (``backend`` one of
    :data:`BACKENDS`; the names and what each runs are in ``args_fast/backends/registry.py``)."""
    decoder = ARGSDecoder(policy, reward_model, k=k, w=w, mode=mode, temperature=temperature,
                          max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                          backend=backend, tokenizer=tokenizer, reward_tokenizer=reward_tokenizer, compile=compile)
    return decoder.generate(input_ids, attention_mask, generator=generator)
