"""The decoding methods compared in the evaluation (ARGS paper, Table 10), each run on a left-padded batch.

Baselines use transformers' ``generate`` with a fresh ``GenerationConfig`` (so the checkpoint's own
sampling defaults, e.g. a repetition penalty, never leak in); ARGS runs through ``args_fast.ARGSDecoder``.
Every method returns, per row, the generated token ids up to (not including) the first EOS.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig

from ..decoding.decoder import ARGSDecoder
from ..decoding.inputs import cut_at_eos
from ..validation import UserError

METHODS = ("greedy", "top-k", "nucleus", "contrastive", "args-greedy", "args-stochastic")


@dataclass
class Method:
    name: str
    options: dict = field(default_factory=dict)   # what the table prints next to the name

    @property
    def is_args(self) -> bool:
        return self.name.startswith("args-")


def contrastive_unavailable() -> str | None:
    """Why contrastive search cannot run offline here, or None when transformers has it built in.

    transformers 5.x moved it out of the library to a hub ``custom_generate`` repository that must be
    downloaded and run with ``trust_remote_code``; with no hub access there is nothing to run."""
    from transformers.generation.utils import GENERATION_MODES_MAPPING, GenerationMode
    target = GENERATION_MODES_MAPPING.get(GenerationMode.CONTRASTIVE_SEARCH)
    if isinstance(target, str) and "/" in target:
        import transformers
        return (f"transformers {transformers.__version__} moved contrastive search to the hub repository "
                f"'{target}' (custom_generate, trust_remote_code); no hub access offline")
    return None


def available_methods() -> tuple[str, ...]:
    """The methods that can run here, in :data:`METHODS` order: all but contrastive while
    :func:`contrastive_unavailable` says why it cannot. ``--methods`` offers and accepts these."""
    return tuple(m for m in METHODS if m != "contrastive" or not contrastive_unavailable())


def make_methods(names, *, k: int, w: float, temperature: float, top_k: int = 40, top_p: float = 0.95,
                 sample_temperature: float = 0.7, unavailable_ok: bool = False) -> list[Method]:
    """The methods named (repeats dropped); ValueError for an unknown one, and for one that cannot run
    here (contrastive, see :func:`contrastive_unavailable`) unless ``unavailable_ok``."""
    names = list(dict.fromkeys(names))
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        raise UserError(f"--methods must be a comma-separated subset of {','.join(available_methods())}, "
                         f"got {','.join(names)!r}")
    if "contrastive" in names and not unavailable_ok and (reason := contrastive_unavailable()):
        raise UserError(f"--methods: contrastive cannot run here: {reason}")
    options = {"greedy": {}, "top-k": {"top_k": top_k, "temperature": sample_temperature},
               "nucleus": {"top_p": top_p, "temperature": 1.0}, "contrastive": {"penalty_alpha": 0.6, "top_k": 4},
               "args-greedy": {"k": k, "w": w}, "args-stochastic": {"k": k, "w": w, "temperature": temperature}}
    return [Method(n, options[n]) for n in names]


def args_decoder(method: Method, policy, reward_model, tokenizer, *, max_new_tokens: int, eos_ids: list[int],
                 pad_id: int, backend: str = "auto", compile: bool | None = None) -> ARGSDecoder:
    """The decoder of an ARGS method: its engine (runners, ops, caches) then serves every batch."""
    return ARGSDecoder(policy, reward_model, k=method.options["k"], w=method.options["w"],
                       mode=method.name.removeprefix("args-"), temperature=method.options.get("temperature", 0.7),
                       max_new_tokens=max_new_tokens, eos_token_id=eos_ids, pad_token_id=pad_id, backend=backend,
                       tokenizer=tokenizer, compile=compile)


@torch.no_grad()
def run_batch(method: Method, policy, reward_model, tokenizer, input_ids, attention_mask, *, max_new_tokens: int,
              eos_ids: list[int], pad_id: int, generator: torch.Generator, backend: str = "auto",
              decoder: ARGSDecoder | None = None):
    """Generate for one batch; returns (continuation ids per row, ``[eos id]`` or ``[]`` per row).
    ARGS methods run on ``decoder`` when given (built once per method by the caller), else on a new one."""
    if method.is_args:
        decoder = decoder or args_decoder(method, policy, reward_model, tokenizer, max_new_tokens=max_new_tokens,
                                          eos_ids=eos_ids, pad_id=pad_id, backend=backend)
        out = decoder.generate(input_ids, attention_mask, generator=generator)
        return cut_at_eos(out.sequences[:, input_ids.shape[1]:], eos_ids)
    if method.name == "contrastive":
        reason = contrastive_unavailable()
        if reason:
            raise RuntimeError(reason)
    sampling = method.name in ("top-k", "nucleus")
    # only the options of this method; for sampling, switch off the other filter (GenerationConfig
    # defaults to top_k=50, which would silently truncate nucleus sampling)
    extra = dict(method.options)
    if method.name == "nucleus":
        extra["top_k"] = 0
    elif method.name == "top-k":
        extra["top_p"] = 1.0
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sampling, eos_token_id=eos_ids,
                              pad_token_id=pad_id, **extra)
    # transformers samples from the global torch RNG: draw its seed from our generator so runs repeat
    if sampling:
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    out = policy.generate(input_ids=input_ids.to(policy.device), attention_mask=attention_mask.to(policy.device),
                          generation_config=config)
    return cut_at_eos(out[:, input_ids.shape[1]:].cpu(), eos_ids)
