"""Requests in and text out: prompts to left-padded ids, the checks of a request, generated ids to text."""
from __future__ import annotations

import torch

from .. import hf
from ..validation import as_int


ROLES = ("system", "user", "assistant")


def _conversation(name: str, prompt, system_prompt: str | None) -> list[dict]:
    """``prompt`` (a text, or a list of ``{"role", "content"}`` messages) as a list of messages."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, (list, tuple)) and prompt and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in prompt):
        messages = [dict(m) for m in prompt]
    else:
        raise ValueError(f"{name} must be a string or a non-empty list of {{'role': one of {ROLES}, 'content': str}} "
                         f"messages, got {prompt!r:.80}")
    if system_prompt is not None:
        if messages[0]["role"] == "system":
            raise ValueError(f"{name} has its own system message; give it or system_prompt, not both")
        messages = [{"role": "system", "content": system_prompt}] + messages
    return messages


def encode_prompts(tokenizer, prompts: list, chat_template: bool = False, *, system_prompt: str | None = None):
    """Left-padded ids and mask. A prompt is a text or a conversation: a list of OpenAI-style messages
    ``{"role": "system" | "user" | "assistant", "content": text}``. With ``chat_template`` each is put
    through the tokenizer's chat template (a text as one user turn, after ``system_prompt`` as a system
    turn when given), ready for the assistant's reply; conversations and ``system_prompt`` need it."""
    if not chat_template and (system_prompt is not None or any(not isinstance(p, str) for p in prompts)):
        raise ValueError("conversations (message lists) and system_prompt need chat_template=True")
    if chat_template:
        prompts = [tokenizer.apply_chat_template(_conversation(f"prompts[{i}]", p, system_prompt), tokenize=False,
                                                 add_generation_prompt=True) for i, p in enumerate(prompts)]
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


def check_request(input_ids, attention_mask, max_new_tokens, generator, *, vocab: int, backend: str,
                  models: list[tuple[str, torch.nn.Module]]) -> tuple[torch.Tensor, int]:
    """Every check of one ``generate`` request, before any work: the generator(s), the ids and mask
    (left-padded, 0/1, ids in [0, vocab)), and the context that the prompt plus ``max_new_tokens`` needs
    against each model's context length and (except on ``reference``) sliding window. Returns the mask
    (all ones when None was given) and ``max_new_tokens`` as an int."""
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
    if bool((ids < 0).any()) or bool((ids >= vocab).any()):
        raise ValueError(f"input_ids must be token ids in [0, {vocab})")
    max_new_tokens = as_int("max_new_tokens", max_new_tokens, 0)
    need = int(lengths.max()) + max_new_tokens
    if backend != "reference":
        # the hf and static backends attend over the whole context; only the reference backend runs
        # the models' own attention, which honours a sliding window
        for name, model in models:
            window = hf.sliding_window(model.config)
            if window is not None and need > window:
                raise ValueError(f"prompt ({int(lengths.max())} tokens) + max_new_tokens ({max_new_tokens}) = {need} "
                                 f"exceeds the {name}'s sliding attention window of {window} tokens, which backend "
                                 f"{backend!r} does not apply; use backend='reference' (the models' own "
                                 "attention) or a shorter request")
    for name, model in models:
        limit = hf.context_length(model.config)
        if limit is not None and need > limit:
            raise ValueError(f"prompt ({int(lengths.max())} tokens) + max_new_tokens ({max_new_tokens}) = {need} "
                             f"exceeds the {name}'s context of {limit} positions")
    return attention_mask, max_new_tokens
