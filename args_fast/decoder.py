"""ARGS decoding: the public API and the one decoding loop every backend plugs into.

    score(v) = logit(v) + w * r([x, v])   over the policy's top-k tokens v
    greedy: argmax score;  stochastic: sample softmax(score / T) via Gumbel-max on passed-in uniforms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from . import hf
from .backends.hf_cached import CachedPolicy, CachedReward
from .backends.reference import ReferencePolicy, ReferenceReward
from .backends.engine import ComposedEngine
from .backends.native_engine import NATIVE_BACKENDS, make_native_engine, native_engine_available
from .backends.text_reward import TextReward, encoder_reward_fn

MODES = ("greedy", "stochastic")
BACKENDS = ("auto", "reference", "torch") + NATIVE_BACKENDS
# "auto" on CUDA tries these in order (the first whose ops load and that supports both models wins)
AUTO_CUDA_ORDER = ("cuda", "triton", "native")


@dataclass
class GenerateOutput:
    sequences: torch.Tensor   # (B, P + T) prompt then generated tokens; pad after a row's EOS
    rewards: torch.Tensor     # (B, T) reward of the chosen continuation per step; nan once finished


def _eos_list(value) -> list[int] | None:
    """An id or ids that end a row; ``[]`` means never stop early."""
    if value is None:
        return None
    values = [value] if isinstance(value, int) else list(value)
    return values or None


class ARGSDecoder:
    """Holds a policy, a reward and the ARGS options; ``generate`` runs the decoding loop.

    ``reward_model`` is a Hugging Face ``*ForSequenceClassification`` with one label sharing the
    policy's vocabulary (fast, prefix-cached path), or a model with its own ``reward_tokenizer``, or
    any callable ``reward(prompts: list[str], responses: list[str]) -> floats`` (text path; needs
    ``tokenizer``).
    """

    def __init__(self, policy, reward_model, *, k: int = 10, w: float = 1.0, mode: str = "greedy",
                 temperature: float = 0.7, max_new_tokens: int = 128, eos_token_id=None, pad_token_id=None,
                 backend: str = "auto", tokenizer=None, reward_tokenizer=None):
        if not isinstance(policy, torch.nn.Module) or not hasattr(policy, "get_output_embeddings"):
            raise TypeError(f"policy must be a Hugging Face causal LM, got {type(policy).__name__}")
        self.policy, self.reward_model = policy, reward_model
        self.vocab = policy.get_output_embeddings().out_features
        self.tokenizer, self.reward_tokenizer = tokenizer, reward_tokenizer
        self.k, self.w, self.mode, self.temperature = k, w, mode, temperature
        self.max_new_tokens = max_new_tokens
        self._check_options(k, w, mode, temperature, max_new_tokens)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.reward_kind = self._classify_reward(reward_model, reward_tokenizer, tokenizer)
        if backend == "auto":
            backend = self._auto_backend()
        elif backend == "torch" and not self._maskable():
            raise ValueError(
                f"backend='torch' needs attention that takes an explicit 4-D mask ({hf.MASKABLE_ATTENTION}); "
                f"policy uses {hf.attn_implementation(policy)!r}, reward model "
                f"{hf.attn_implementation(reward_model) if self.reward_kind == 'cached' else 'n/a'!r}")
        elif backend in NATIVE_BACKENDS:
            if self.reward_kind != "cached":
                raise ValueError(f"backend={backend!r} needs a causal *ForSequenceClassification reward_model sharing "
                                 "the policy's vocabulary (the prefix-cached path); text rewards run on 'torch' "
                                 "or 'reference'")
            ok, reason = native_engine_available(backend, policy, reward_model)
            if not ok:
                raise ValueError(f"backend={backend!r} is not available for these models: {reason}")
        self.backend = backend
        self._native_engines = {}
        gen = getattr(policy, "generation_config", None)
        # None: the policy's generation_config decides; [] (or a config without one): never stop early.
        self.eos_token_id = _eos_list(eos_token_id if eos_token_id is not None else getattr(gen, "eos_token_id", None))
        if pad_token_id is None:
            pad_token_id = getattr(gen, "pad_token_id", None)
        if pad_token_id is None and self.eos_token_id:
            pad_token_id = self.eos_token_id[0]   # as transformers' generate does
        self.pad_token_id = pad_token_id
        for name, ids in (("eos_token_id", self.eos_token_id or []), ("pad_token_id", [pad_token_id] if pad_token_id is not None else [])):
            for i in ids:
                if not isinstance(i, int) or not 0 <= i < self.vocab:
                    raise ValueError(f"{name} must be token ids in [0, {self.vocab}), got {i!r}")

    # ----------------------------------------------------------------------------------- checks
    def _check_options(self, k, w, mode, temperature, max_new_tokens):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.vocab:
            raise ValueError(f"k must be an int in [1, {self.vocab}] (the policy's vocabulary), got {k!r}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"w must be a finite number, got {w!r}")
        if mode == "stochastic" and (not isinstance(temperature, (int, float)) or not math.isfinite(temperature)
                                     or temperature <= 0):
            raise ValueError(f"temperature must be a finite number > 0 in stochastic mode, got {temperature!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")

    def _classify_reward(self, reward_model, reward_tokenizer, tokenizer) -> str:
        if isinstance(reward_model, torch.nn.Module):
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

    def _auto_backend(self) -> str:
        """The fastest backend that runs these models: on CUDA the compiled engine (cuda > triton >
        native), else ``torch``; ``reference`` only where nothing faster applies (text rewards with
        attention that takes no 4-D mask). On CPU ``torch`` wins: interpreted Triton is for testing."""
        if self.reward_kind == "cached" and self.policy.device.type == "cuda":
            for name in AUTO_CUDA_ORDER:
                if native_engine_available(name, self.policy, self.reward_model)[0]:
                    return name
        return "torch" if self._maskable() else "reference"

    def _maskable(self) -> bool:
        models = [self.policy] + ([self.reward_model] if self.reward_kind == "cached" else [])
        return all(hf.attn_implementation(m) in hf.MASKABLE_ATTENTION for m in models)

    def _check_inputs(self, input_ids, attention_mask, max_new_tokens):
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
        self._check_options(self.k, self.w, self.mode, self.temperature, max_new_tokens)
        need = int(lengths.max()) + max_new_tokens
        models = [("policy", self.policy)] + ([("reward_model", self.reward_model)] if self.reward_kind == "cached" else [])
        for name, model in models:
            limit = hf.context_length(model.config)
            if limit is not None and need > limit:
                raise ValueError(f"prompt ({int(lengths.max())} tokens) + max_new_tokens ({max_new_tokens}) = {need} "
                                 f"exceeds the {name}'s context of {limit} positions")
        return attention_mask

    # ----------------------------------------------------------------------------------- engines
    def _engine(self, max_new_tokens):
        """The per-step ops of the chosen backend, behind the ``Engine`` contract (backends/engine.py)."""
        if self.backend in NATIVE_BACKENDS:
            # Kept between calls: its static caches (and CUDA graphs) are reused while B and the
            # prompt length fit; a different max_new_tokens builds a new one.
            engine = self._native_engines.get(max_new_tokens)
            if engine is None:
                engine = make_native_engine(self.backend, self.policy, self.reward_model, k=self.k, w=self.w,
                                            temperature=self.temperature, eos_ids=self.eos_token_id,
                                            pad_id=self._pad(), max_new_tokens=max_new_tokens)
                self._native_engines = {max_new_tokens: engine}
            return engine
        if self.backend == "reference":
            policy = ReferencePolicy(self.policy)
        else:
            policy = CachedPolicy(self.policy, max_new_tokens)
        if self.reward_kind == "text":
            fn = self.reward_model
            if self.reward_tokenizer is not None:
                fn = encoder_reward_fn(self.reward_model, self.reward_tokenizer)
            reward = TextReward(fn, self.tokenizer, device=self.policy.device)
        elif self.backend == "reference":
            reward = ReferenceReward(self.reward_model)
        else:
            reward = CachedReward(self.reward_model, max_new_tokens, self.k)
        return ComposedEngine(policy, reward, k=self.k, w=self.w, temperature=self.temperature,
                              eos_ids=self.eos_token_id, pad_id=self._pad())

    def _pad(self) -> int:
        return self.pad_token_id if self.pad_token_id is not None else 0

    # ----------------------------------------------------------------------------------- the loop
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int | None = None, generator: torch.Generator | None = None,
                 progress: Callable[[int], None] | None = None) -> GenerateOutput:
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        attention_mask = self._check_inputs(input_ids, attention_mask, max_new_tokens)
        device = self.policy.device
        input_ids, attention_mask = input_ids.to(device).long(), attention_mask.to(device).long()
        batch, prompt_len = input_ids.shape
        sequences = torch.full((batch, prompt_len + max_new_tokens), self._pad(), dtype=torch.long, device=device)
        sequences[:, :prompt_len] = input_ids
        rewards = torch.full((batch, max_new_tokens), float("nan"), device=device)
        if max_new_tokens == 0:
            return GenerateOutput(sequences, rewards)
        # all_done[t]: every row had finished after step t. Filled on device, read every `sync_every`
        # steps only, so accelerators are not stalled each token; the output is cut at the first True.
        all_done = torch.zeros(max_new_tokens, dtype=torch.bool, device=device)
        sync_every = 1 if device.type == "cpu" else 8
        stops = bool(self.eos_token_id)

        self.last_engine = engine = self._engine(max_new_tokens)
        engine.prefill(input_ids, attention_mask)
        for t in range(max_new_tokens):
            uniforms = None
            if self.mode == "stochastic":  # exactly one (B, k) draw per step, finished rows included
                uniforms = torch.rand((batch, self.k), generator=generator,
                                      device=generator.device if generator is not None else "cpu")
            token, chosen_reward, finished = engine.step(uniforms, last=t == max_new_tokens - 1)
            sequences[:, prompt_len + t] = token
            rewards[:, t] = chosen_reward
            if progress is not None:
                progress(1)
            if stops:
                all_done[t] = finished.all()
                if (t + 1) % sync_every == 0 and bool(all_done[t]):
                    break
        steps = max_new_tokens
        if stops and bool(all_done.any()):
            steps = int(all_done.int().argmax()) + 1
        return GenerateOutput(sequences[:, :prompt_len + steps], rewards[:, :steps])

    def generate_text(self, prompts: list[str], tokenizer=None, *, max_new_tokens: int | None = None,
                      generator: torch.Generator | None = None, chat_template: bool = False,
                      progress: Callable[[int], None] | None = None) -> list[str]:
        """Tokenize prompts (left-padded), run ARGS, return the decoded continuations."""
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("tokenizer is required for generate_text")
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a non-empty list of strings")
        if self.reward_kind == "text" and self.tokenizer is None:
            self.tokenizer = tokenizer
        input_ids, attention_mask = encode_prompts(tokenizer, prompts, chat_template=chat_template)
        out = self.generate(input_ids, attention_mask, max_new_tokens=max_new_tokens, generator=generator,
                            progress=progress)
        return decode_continuations(tokenizer, out.sequences[:, input_ids.shape[1]:], self.eos_token_id)


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


def decode_continuations(tokenizer, generated: torch.Tensor, eos_ids) -> list[str]:
    texts = []
    for row in generated.tolist():
        if eos_ids:
            for i, tok in enumerate(row):
                if tok in eos_ids:
                    row = row[:i]
                    break
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts


def generate(policy, reward_model, input_ids, attention_mask=None, *, k: int = 10, w: float = 1.0,
             mode: str = "greedy", temperature: float = 0.7, max_new_tokens: int = 128, eos_token_id=None,
             pad_token_id=None, generator: torch.Generator | None = None, backend: str = "auto",
             tokenizer=None, reward_tokenizer=None) -> GenerateOutput:
    """ARGS decoding in one call; see :class:`ARGSDecoder` for the options."""
    decoder = ARGSDecoder(policy, reward_model, k=k, w=w, mode=mode, temperature=temperature,
                          max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                          backend=backend, tokenizer=tokenizer, reward_tokenizer=reward_tokenizer)
    return decoder.generate(input_ids, attention_mask, generator=generator)
