"""ARGS inside transformers' ``generate``: ``custom_generate=args_fast.custom_generate``.

Usage::

    out = policy.generate(**inputs, custom_generate=args_fast.custom_generate, reward_model=rm,
                          k=10, w=1.0, max_new_tokens=64)               # (B, P + T) token ids
    out = policy.generate(**inputs, custom_generate=args_fast.custom_generate, reward_model=rm,
                          do_sample=True, temperature=0.7, generator=torch.Generator().manual_seed(0),
                          return_dict_in_generate=True, max_new_tokens=64)
    out.sequences, out.rewards                                         # (B, P + T), (B, T)

``generate`` prepares the inputs, the generation config (the call's options over the policy's
``generation_config`` over transformers' global defaults), the logits processors, the stopping
criteria and the streamer, then hands the decoding loop to :func:`custom_generate`, which runs
:class:`args_fast.ARGSDecoder` on it: the output is token for token what :func:`args_fast.generate`
gives for the same inputs and options.

Honoured:

* ``max_new_tokens`` / ``max_length``, ``eos_token_id`` (none: never stop early), ``pad_token_id``;
* ``do_sample``: ``False`` is ARGS-greedy, ``True`` ARGS-stochastic with ``temperature``;
  ``top_k`` when it is ``0`` (off) or ``>= k`` (it then keeps every ARGS candidate: a no-op);
* ``streamer``: ``generate`` itself puts the prompt ids first; each step's tokens ((B,), pad for
  finished rows) follow, then ``end()`` (also when an error stops the call);
* ``return_dict_in_generate``: an :class:`ARGSGenerateOutput` (a ``GenerateDecoderOnlyOutput`` with
  ``.sequences`` and ``.rewards``); otherwise the ``(B, P + T)`` sequences tensor, as ``generate``;
* this function's own options, passed to ``generate`` as keyword arguments: ``reward_model``
  (required), ``k``, ``w``, ``backend``, ``generator`` (a ``torch.Generator``, or the per-row list
  ``ARGSDecoder.generate`` accepts, for the stochastic draws), ``reward_tokenizer`` and
  ``policy_tokenizer`` (the policy's tokenizer, for rewards that read text: ``generate`` keeps
  ``tokenizer=`` for itself and never hands it on).

Refused with a ValueError naming them (ARGS picks tokens by ``logit + w * reward`` over the policy's
top-k; anything that would change that cannot be applied silently): beam search (``num_beams``),
``num_return_sequences > 1``, assisted / prompt-lookup decoding, ``top_p``, ``min_p``, ``typical_p``,
``top_k < k`` and the other samplers' cut-offs (with ``do_sample=True``; greedy ignores them, as
``generate`` does), ``repetition_penalty``, ``no_repeat_ngram_size``, ``min_new_tokens`` /
``min_length``, ``bad_words_ids``, ``suppress_tokens``, forced tokens, ``guidance_scale``,
watermarking, ``max_time``, ``stop_strings``, ``output_scores`` / ``output_logits`` /
``output_attentions`` / ``output_hidden_states``, any value of any other option that differs from
transformers' neutral default, a ``logits_processor``, ``stopping_criteria`` or
``prefix_allowed_tokens_fn``, model inputs other than ``input_ids`` / ``attention_mask`` (and the
``position_ids`` / empty cache ``generate`` derives from them), and encoder-decoder policies.

The policy's ``generation_config`` counts as much as the call: a chat checkpoint that ships
``do_sample=True, top_p=0.9`` makes a plain call stochastic (as ``generate`` would sample) and then
refused for ``top_p``; the error says what to pass, e.g. ``top_p=1.0`` (or ``do_sample=False`` for
ARGS-greedy, which ignores the sampling options). Options that do not change the tokens (``use_cache``,
cache and compile settings, ``bos_token_id``, beam-only and assistant-only settings, ``renormalize_logits``)
are ignored.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import LogitNormalization, TemperatureLogitsWarper, TopKLogitsWarper
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria
from transformers.generation.utils import GenerateDecoderOnlyOutput

from ..decoding.decoder import ARGSDecoder


@dataclass
class ARGSGenerateOutput(GenerateDecoderOnlyOutput):
    """``generate(..., return_dict_in_generate=True)``'s output: ``sequences`` (B, P + T) as
    ``generate`` gives them, and ``rewards`` (B, T): the reward of the chosen continuation per step,
    nan once a row has finished (as :class:`args_fast.GenerateOutput`). ``scores``, ``logits``,
    ``attentions``, ``hidden_states`` and ``past_key_values`` stay None."""

    rewards: torch.FloatTensor | None = None


# generation-config fields custom_generate applies
_HONOURED = frozenset({"max_length", "max_new_tokens", "do_sample", "temperature", "eos_token_id", "pad_token_id",
                       "return_dict_in_generate"})
# fields that cannot change the tokens ARGS picks: cache / compile / bookkeeping, settings that only act in
# modes refused elsewhere (beam search: num_beams is checked; assisted decoding: assistant_model and
# prompt_lookup_num_tokens are), and renormalize_logits (a per-row shift of the logits, which changes
# neither the top-k, nor the argmax, nor softmax(score / T))
_IGNORED = frozenset({
    "bos_token_id", "decoder_start_token_id", "use_cache", "cache_implementation", "cache_config", "max_cache_len",
    "compile_config", "disable_compile", "prefill_chunk_size", "continuous_batching_config", "low_memory",
    "transformers_version", "early_stopping", "length_penalty", "num_assistant_tokens", "num_assistant_tokens_schedule",
    "assistant_confidence_threshold", "assistant_lookbehind", "target_lookbehind", "assistant_ensemble_weight",
    "max_matching_ngram_size", "renormalize_logits"})
# fields that only act when sampling (generate's greedy search ignores them too)
_SAMPLING = frozenset({"top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff"})
# neutral values besides transformers' global default (and None)
_ALSO_NEUTRAL = {"guidance_scale": (1, 1.0), "min_new_tokens": (0,), "top_k": (0,)}
# model inputs generate derives (or adds) by itself; ARGS derives its own from input_ids and attention_mask
# (the cache is ``cache`` from transformers 5.25 on, ``past_key_values`` before)
_DERIVED_MODEL_INPUTS = frozenset({"attention_mask", "position_ids", "logits_to_keep", "use_cache", "past_key_values",
                                   "cache", "cache_position"})


def _defaults() -> dict:
    return GenerationConfig._get_default_generation_params()


@functools.lru_cache(maxsize=None)
def _config_fields() -> tuple[str, ...]:
    """The public fields of a GenerationConfig (custom entries a checkpoint carries act on nothing)."""
    return tuple(sorted(name for name in vars(GenerationConfig()) if not name.startswith("_")))


def _is_neutral(name: str, value, defaults: dict) -> bool:
    if value is None or value in _ALSO_NEUTRAL.get(name, ()):
        return True
    default = defaults.get(name)
    if value is False and default in (None, False):
        return True
    try:
        return bool(value == default)
    except Exception:   # e.g. an object without a boolean equality
        return False


def _refused_options(config: GenerationConfig, k: int) -> list[tuple[str, object, str]]:
    """(name, value, what to pass instead) for each option of ``config`` ARGS cannot honour."""
    defaults = _defaults()
    sampling = bool(config.do_sample)
    refused = []
    for name in _config_fields():
        if name in _HONOURED or name in _IGNORED:
            continue
        value = getattr(config, name, None)
        if name in _SAMPLING and not sampling:
            continue
        if name == "top_k":
            if value is not None and value != 0 and value < k:
                refused.append((name, value, f"top_k=0 (off) or top_k >= k ({k}), or k={value}"))
            continue
        if not _is_neutral(name, value, defaults):
            refused.append((name, value, f"{name}={defaults.get(name)!r}"))   # the value that switches it off
    if any(name == "min_new_tokens" for name, _, _ in refused):
        # generate turned min_new_tokens into min_length (prompt + min_new_tokens): name the user's option only
        refused = [item for item in refused if item[0] != "min_length"]
    return refused


def _as_k(k) -> int:
    """``k`` as an int for the top_k check (0 if it is not one: the decoder then refuses it by name)."""
    try:
        return 0 if isinstance(k, bool) else int(k)
    except (TypeError, ValueError, RuntimeError):
        return 0


def _generate_locals() -> dict:
    """The local variables of transformers' ``GenerationMixin.generate`` when it called
    ``custom_generate`` (``generate`` does not pass the streamer, the assistant model or its own
    ``logits_processor`` / ``stopping_criteria`` arguments on to a callable); ``{}`` otherwise."""
    frame = sys._getframe(2)   # 0: here, 1: custom_generate, 2: its caller
    try:
        for _ in range(3):   # allow a thin wrapper or two around custom_generate
            if frame is None:
                break
            code = frame.f_code
            if code.co_name == "generate" and code.co_filename.replace("\\", "/").endswith("generation/utils.py") \
                    and "decoding_method" in frame.f_locals:
                return dict(frame.f_locals)
            frame = frame.f_back
        return {}
    finally:
        del frame


def _check_call(caller: dict) -> list[str]:
    """Arguments of the generate call itself that ARGS cannot honour."""
    problems = []
    if caller.get("assistant_model") is not None:
        problems.append("assistant_model (assisted decoding)")
    if caller.get("prefix_allowed_tokens_fn") is not None:
        problems.append("prefix_allowed_tokens_fn")
    if caller.get("logits_processor"):
        problems.append(f"logits_processor ({', '.join(type(p).__name__ for p in caller['logits_processor'])})")
    if caller.get("stopping_criteria"):
        problems.append(f"stopping_criteria ({', '.join(type(c).__name__ for c in caller['stopping_criteria'])}); "
                        "use max_new_tokens / eos_token_id")
    for name in ("negative_prompt_ids", "negative_prompt_attention_mask"):
        if caller.get(name) is not None:
            problems.append(name)
    if caller.get("synced_gpus"):
        problems.append("synced_gpus=True")
    return problems


def _check_processors(logits_processor, config: GenerationConfig, k: int) -> list[str]:
    """The prepared logits processors: only those of honoured options (temperature, a top_k >= k when
    sampling, renormalize_logits) may be there."""
    problems = []
    for proc in logits_processor or ():
        if config.do_sample and isinstance(proc, TemperatureLogitsWarper) \
                and float(proc.temperature) == float(config.temperature):
            continue
        if config.do_sample and isinstance(proc, TopKLogitsWarper) and proc.top_k >= k:
            continue
        if isinstance(proc, LogitNormalization):
            continue
        problems.append(f"logits processor {type(proc).__name__}")
    return problems


def _check_criteria(stopping_criteria, config: GenerationConfig) -> list[str]:
    """The prepared stopping criteria: only the max-length and EOS ones generate adds itself."""
    eos = config.eos_token_id
    eos = set() if eos is None else ({int(eos)} if isinstance(eos, int) else {int(e) for e in eos})
    problems = []
    for crit in stopping_criteria or ():
        if isinstance(crit, MaxLengthCriteria) and crit.max_length == config.max_length:
            continue
        if isinstance(crit, EosTokenCriteria) and {int(e) for e in crit.eos_token_id.flatten().tolist()} == eos:
            continue
        problems.append(f"stopping criterion {type(crit).__name__}")
    return problems


def _check_model_kwargs(model_kwargs: dict, input_ids: torch.Tensor) -> list[str]:
    problems = [f"model input {name!r}" for name, value in model_kwargs.items()
                if name not in _DERIVED_MODEL_INPUTS and value is not None]
    for name in ("cache", "past_key_values"):
        cache = model_kwargs.get(name)
        if cache is not None and (not hasattr(cache, "get_seq_length") or cache.get_seq_length() > 0):
            problems.append(f"{name} (a filled cache: ARGS prefills its own from the whole prompt)")
    position_ids = model_kwargs.get("position_ids")
    if position_ids is not None:
        mask = model_kwargs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask.long()
        expected = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        if position_ids.shape[-1] != expected.shape[-1] or \
                not torch.equal(position_ids.to(expected.device).long().expand_as(expected), expected):
            problems.append("position_ids (other than those of the attention mask: ARGS derives its own)")
    return problems


def _stream_step(streamer, eos_ids):
    """``on_step`` for the decoder: put each step's tokens (on the CPU) until every row has finished,
    i.e. exactly the generated columns of the returned sequences."""
    eos = torch.tensor(sorted(eos_ids)) if eos_ids else None
    state = {"done": None, "over": False}

    def on_step(tokens: torch.Tensor) -> None:
        if state["over"]:
            return   # the loop ran past the step after which every row had finished; the output is cut there
        tokens = tokens.cpu()
        streamer.put(tokens)
        if eos is not None:
            hit = torch.isin(tokens, eos)
            state["done"] = hit if state["done"] is None else state["done"] | hit
            state["over"] = bool(state["done"].all())
    return on_step


def custom_generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                    streamer=None, *, reward_model=None, k: int = 10, w: float = 1.0, backend: str = "auto",
                    generator=None, reward_tokenizer=None, policy_tokenizer=None, **model_kwargs):
    """The ARGS decoding loop for ``policy.generate(..., custom_generate=args_fast.custom_generate,
    reward_model=rm, k=10, w=1.0, ...)``; see the module docstring for what is honoured and what is
    refused. transformers' ``generate`` calls it (with the prepared ``input_ids``, logits processors,
    stopping criteria, generation config and model inputs) and returns what it returns: the ``(B, P + T)``
    sequences, or with ``return_dict_in_generate=True`` an :class:`ARGSGenerateOutput` with
    ``.sequences`` and ``.rewards``. ``reward_model``, ``k``, ``w``, ``backend``, ``generator``,
    ``reward_tokenizer`` and ``policy_tokenizer`` mean what they mean for :func:`args_fast.generate`
    (``policy_tokenizer`` is its ``tokenizer``)."""
    caller = _generate_locals()
    if streamer is None:
        # generate keeps its streamer (after putting the prompt ids into it) instead of passing it on
        streamer = caller.get("streamer")
    try:
        return _run(model, input_ids, logits_processor, stopping_criteria, generation_config, streamer, caller,
                    reward_model=reward_model, k=k, w=w, backend=backend, generator=generator,
                    reward_tokenizer=reward_tokenizer, policy_tokenizer=policy_tokenizer, model_kwargs=model_kwargs)
    finally:
        if streamer is not None:
            streamer.end()


def _run(model, input_ids, logits_processor, stopping_criteria, generation_config, streamer, caller, *,
         reward_model, k, w, backend, generator, reward_tokenizer, policy_tokenizer, model_kwargs):
    if reward_model is None:
        raise ValueError("args_fast.custom_generate needs a reward model: pass reward_model=... to generate, e.g. "
                         "policy.generate(**inputs, custom_generate=args_fast.custom_generate, reward_model=rm, "
                         "k=10, w=1.0)")
    if generation_config is None:
        raise TypeError("args_fast.custom_generate is the decoding loop of transformers' generate: call "
                        "policy.generate(..., custom_generate=args_fast.custom_generate, reward_model=...), or use "
                        "args_fast.generate directly")
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError("args_fast.custom_generate supports decoder-only policies, not encoder-decoder models")
    k_int = _as_k(k)
    refused = _refused_options(generation_config, k_int)
    if refused:
        names = ", ".join(f"{name}={value!r}" for name, value, _ in refused)
        fixes = ", ".join(fix for _, _, fix in refused)
        hint = (" (or do_sample=False: ARGS-greedy ignores the sampling options)"
                if any(name in _SAMPLING for name, _, _ in refused) else "")
        raise ValueError(f"args_fast.custom_generate cannot honour these generation options: {names}. They come from "
                         "this generate() call or from the policy's generation_config, which generate() merges in "
                         f"(e.g. a checkpoint's sampling defaults); override them in the call: {fixes}{hint}")
    # the call's own arguments first; the prepared processors and criteria (which hold the call's) only when
    # those are fine, so that each problem is named once
    problems = _check_call(caller) or (_check_processors(logits_processor, generation_config, k_int)
                                       + _check_criteria(stopping_criteria, generation_config))
    problems += _check_model_kwargs(model_kwargs, input_ids)
    if problems:
        raise ValueError(f"args_fast.custom_generate cannot honour: {'; '.join(problems)} (ARGS picks each token "
                         "by logit + w * reward over the policy's top-k, from input_ids and attention_mask alone)")

    eos = generation_config.eos_token_id
    pad = generation_config._pad_token_tensor if hasattr(generation_config, "_pad_token_tensor") \
        else generation_config.pad_token_id
    sample = bool(generation_config.do_sample)
    max_new_tokens = max(0, int(generation_config.max_length) - int(input_ids.shape[1]))
    try:
        decoder = ARGSDecoder(model, reward_model, k=k, w=w, mode="stochastic" if sample else "greedy",
                              temperature=generation_config.temperature if sample else 1.0,
                              max_new_tokens=max_new_tokens, eos_token_id=[] if eos is None else eos,
                              pad_token_id=None if pad is None else int(pad), backend=backend,
                              tokenizer=policy_tokenizer, reward_tokenizer=reward_tokenizer)
    except ValueError as error:
        if policy_tokenizer is None and "tokenizer (the policy's) is required" in str(error):
            raise ValueError(f"{error}: pass it as policy_tokenizer=... (generate() keeps tokenizer= for itself and "
                             "does not hand it to custom_generate)") from error
        raise
    on_step = _stream_step(streamer, decoder.eos_token_id) if streamer is not None else None
    out = decoder.generate(input_ids, model_kwargs.get("attention_mask"), max_new_tokens=max_new_tokens,
                           generator=generator, on_step=on_step)
    if generation_config.return_dict_in_generate:
        return ARGSGenerateOutput(sequences=out.sequences, rewards=out.rewards)
    return out.sequences
