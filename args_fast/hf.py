"""What args_fast needs to know about Hugging Face models: score heads, context sizes, mask formats."""
from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

# Attention implementations that accept an explicit 4-D mask (bool for sdpa, additive for eager).
MASKABLE_ATTENTION = ("sdpa", "eager")


def is_scalar_reward_model(model) -> bool:
    """A ``*ForSequenceClassification`` with one label: a backbone plus a ``score`` head of width 1."""
    head = getattr(model, "score", None)
    return (isinstance(model, nn.Module) and isinstance(head, nn.Linear) and head.out_features == 1
            and getattr(getattr(model, "config", None), "num_labels", None) == 1
            and getattr(model, "base_model", model) is not model)


def describe_reward_problem(model) -> str:
    head = getattr(model, "score", None)
    if not isinstance(model, nn.Module):
        return f"got {type(model).__name__}, not a torch module or a callable"
    if getattr(model, "config", None) is None:
        return f"{type(model).__name__} has no Hugging Face config (expected a *ForSequenceClassification model)"
    if not isinstance(head, nn.Linear):
        return f"{type(model).__name__} has no `score` head (expected a *ForSequenceClassification model)"
    return (f"{type(model).__name__} has a score head of width {head.out_features} and "
            f"num_labels={getattr(model.config, 'num_labels', None)}; ARGS needs exactly one scalar")


def is_hf_model(model) -> bool:
    """A Hugging Face model (weights and a config), as opposed to a user's own module or callable."""
    from transformers import PreTrainedModel
    return isinstance(model, PreTrainedModel)


def sliding_window(config) -> int | None:
    """The attention window of a model that limits how far back tokens see, or None when it sees all."""
    window = getattr(config, "sliding_window", None)
    if window is None:
        return None
    if getattr(config, "model_type", None) == "mistral":
        return window
    return window if "sliding_attention" in (getattr(config, "layer_types", None) or []) else None


def is_causal_lm(model) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_decoder", False)
                or type(model).__name__.endswith(("ForCausalLM", "LMHeadModel", "ForSequenceClassification"))
                ) and getattr(getattr(model, "config", None), "is_encoder_decoder", False) is False


def context_length(config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def attn_implementation(model) -> str:
    return getattr(model.config, "_attn_implementation", None) or "eager"


def to_attention_mask(visible: torch.Tensor, model) -> torch.Tensor:
    """Turn a bool (B, 1, Q, K) visibility mask into what the model's attention implementation takes."""
    if attn_implementation(model) == "sdpa":
        return visible
    dtype = next(model.parameters()).dtype
    bias = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return bias.masked_fill_(~visible, torch.finfo(dtype).min)


def reward_of_hidden(reward_model, hidden: torch.Tensor) -> torch.Tensor:
    """The score head on final hidden states: (..., H) -> (...) float32."""
    return reward_model.score(hidden).squeeze(-1).float()


def head_dim(config) -> int:
    """The attention head dim of a decoder config (explicit ``head_dim``, else hidden / heads)."""
    explicit = getattr(config, "head_dim", None)
    if isinstance(explicit, int) and explicit > 0:
        return explicit
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
    return hidden // heads


# transformers 5.25 renamed the KV cache argument and output field of the models' forward from
# ``past_key_values`` to ``cache`` (the old name still works but warns on every call); earlier 5.x
# releases, and remote-code models, only know ``past_key_values``. The name is read off each model's
# own forward signature, so both work without a warning.
def cache_kwarg(model) -> str:
    """The keyword under which ``model``'s forward takes its KV cache: ``cache`` or ``past_key_values``."""
    return _cache_kwarg_of(type(model))


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(cls) -> str:
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):     # no inspectable signature: the long-standing name
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The KV cache a forward returned (``out.cache`` from transformers 5.25 on, ``out.past_key_values`` before)."""
    fields = getattr(type(out), "__dataclass_fields__", {})
    return out.cache if "cache" in fields else out.past_key_values
