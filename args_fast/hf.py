"""What args_fast needs to know about Hugging Face models: score heads, context sizes, masks."""
from __future__ import annotations

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
    if not isinstance(head, nn.Linear):
        return f"{type(model).__name__} has no `score` head (expected a *ForSequenceClassification model)"
    return (f"{type(model).__name__} has a score head of width {head.out_features} and "
            f"num_labels={getattr(model.config, 'num_labels', None)}; ARGS needs exactly one scalar")


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


def vocab_size(model) -> int:
    return model.get_input_embeddings().num_embeddings


def attn_implementation(model) -> str:
    return getattr(model.config, "_attn_implementation", None) or "eager"


def to_attention_mask(visible: torch.Tensor, model) -> torch.Tensor:
    """Turn a bool (B, 1, Q, K) visibility mask into what the model's attention implementation takes."""
    if attn_implementation(model) == "sdpa":
        return visible
    dtype = next(model.parameters()).dtype
    bias = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return bias.masked_fill_(~visible, torch.finfo(dtype).min)


def prefix_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, P, P) causal mask over a left-padded prompt; pad queries see themselves so nothing is nan."""
    valid = attention_mask.bool()
    p = valid.shape[1]
    causal = torch.ones(p, p, dtype=torch.bool, device=valid.device).tril()
    visible = causal[None] & valid[:, None, :]
    visible |= torch.eye(p, dtype=torch.bool, device=valid.device)[None]
    return visible[:, None]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counting only real tokens (what the row would have unpadded)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def reward_of_hidden(reward_model, hidden: torch.Tensor) -> torch.Tensor:
    """The score head on final hidden states: (..., H) -> (...) float32."""
    return reward_model.score(hidden).squeeze(-1).float()
