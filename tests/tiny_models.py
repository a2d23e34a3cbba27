"""The one factory of test models, prompts and seeds: small random-init Hugging Face models of the
families the tests cover, left-padded prompts, a tokenizer, and the seeds random tests use.

Seeds: tests draw from :func:`seeds`, which gives ``0 .. n-1`` by default so a failure reproduces
exactly. ``ARGS_FAST_TEST_SEED=<int>`` shifts every seed by that base; ``ARGS_FAST_TEST_SEED=random``
picks a fresh base per run and prints it, so a failure found that way is rerun with the printed int.
"""
from __future__ import annotations

import os
import random

import torch
from transformers import (GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, LlamaForSequenceClassification, OPTConfig, OPTForCausalLM,
                          OPTForSequenceClassification)

FAMILIES = ("llama", "gpt2", "opt")


def _seed_base() -> int:
    value = os.environ.get("ARGS_FAST_TEST_SEED", "").strip()
    if not value:
        return 0
    if value == "random":
        base = random.SystemRandom().randrange(1, 2**31)
        print(f"ARGS_FAST_TEST_SEED=random: using base {base} (rerun with ARGS_FAST_TEST_SEED={base})")
        return base
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"ARGS_FAST_TEST_SEED must be an int or 'random', got {value!r}") from None


SEED_BASE = _seed_base()


def seeds(n: int) -> list[int]:
    """The seeds of a test parameterised over ``n`` random draws (see the module docstring)."""
    return [SEED_BASE + i for i in range(n)]
VOCAB = 96
PAD, EOS = 1, 2


def _config(family: str, num_labels: int | None, attn: str, seed: int, context: int, head_dim: int | None = None):
    common = dict(vocab_size=VOCAB, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=0, attn_implementation=attn)
    if num_labels is not None:
        common["num_labels"] = num_labels
    if family == "llama":  # grouped-query attention: 4 query heads share 2 KV heads; head dim 8 unless given
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=context, head_dim=head_dim or 8, **common)
    if head_dim is not None:
        raise ValueError("head_dim is a Llama option here")
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=context, **common)
    if family == "opt":
        return OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                         max_position_embeddings=context, word_embed_proj_dim=32, **common)
    raise ValueError(family)


_CLASSES = {"llama": (LlamaForCausalLM, LlamaForSequenceClassification),
            "gpt2": (GPT2LMHeadModel, GPT2ForSequenceClassification),
            "opt": (OPTForCausalLM, OPTForSequenceClassification)}


def make_policy(family: str, seed: int = 0, attn: str = "sdpa", context: int = 128, head_dim: int | None = None):
    torch.manual_seed(seed)
    return _CLASSES[family][0](_config(family, None, attn, seed, context, head_dim)).eval()


def make_reward(family: str, seed: int = 1, attn: str = "sdpa", context: int = 128, num_labels: int = 1,
                head_dim: int | None = None):
    torch.manual_seed(seed)
    model = _CLASSES[family][1](_config(family, num_labels, attn, seed, context, head_dim)).eval()
    with torch.no_grad():  # a random score head gives rewards of a useful size (~1) for w to matter
        model.score.weight.normal_(0, 1.0)
    return model


def padded_prompts(lengths, seed: int = 0, vocab: int = VOCAB):
    """Left-padded random prompts of the given lengths (ids avoid PAD/EOS)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(3, vocab, (n,), generator=g)
        mask[row, width - n:] = 1
    return ids, mask


def make_tokenizer():
    """A character-level tokenizer over VOCAB ids (0 bos, 1 pad, 2 eos, then printable ASCII)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    chars = [chr(c) for c in range(32, 32 + VOCAB - 3)]
    vocab = {"<s>": 0, "<pad>": PAD, "</s>": EOS, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>")
