"""The one factory of test models, prompts, tokenizers and seeds. Every test builds from here.

Models: small random-init Hugging Face models, named by shape variant (:data:`VARIANTS`) and role
("lm": ``*ForCausalLM``; "reward": ``*ForSequenceClassification`` with a scalar head):

* :func:`make_model` -- one model from its own seed;
* :func:`make_pair` -- a policy and a reward model drawn from one seeded stream;
* :func:`make_policy` / :func:`make_reward` -- the everyday models of :data:`FAMILIES` (thin wrappers);
* ``peaked`` picks the init: ``False`` keeps Hugging Face's (std 0.02, so attention is almost
  uniform and RoPE almost invisible); ``"weights"`` redraws every 2-D weight with std 0.15 (peaked
  attention); ``True`` also adds N(0, 0.3) to every norm and bias, so a wrong mapping of any
  parameter shows. A reward model's score head is then redrawn with std ``score_std`` (1 by default,
  rewards of order 1 so that w matters; ``None`` keeps Hugging Face's).

All models share the token layout ``0`` bos, ``1`` pad (:data:`PAD`), ``2`` eos (:data:`EOS`) over
``vocab`` ids (:data:`VOCAB` unless given). Weights are drawn on the CPU and then moved to
``device``, so a seed names the same model on every device.

Prompts: :func:`padded_prompts` (left-padded random ids). Tokenizers: :func:`make_tokenizer`
(character level) and :func:`make_chat_tokenizer` (with a chat template), both over :data:`VOCAB` ids.

Seeds: tests draw from :func:`seeds` / :func:`seed_of`, which give ``0 .. n-1`` / the offset itself by
default so a failure reproduces exactly. ``ARGS_FAST_TEST_SEED=<int>`` shifts every such seed by that
base; ``ARGS_FAST_TEST_SEED=random`` picks a fresh base per run and prints it, so a failure found that
way is rerun with the printed int. Model seeds in tests are fixed constants: a test that needs a
model with some property (rows that stop at different steps, a non-degenerate distribution) checks
it as test setup, and fresh models could miss it.
"""
from __future__ import annotations

import os
import random

import torch
from transformers import (GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, GPTNeoXConfig,
                          GPTNeoXForCausalLM, GPTNeoXForSequenceClassification, LlamaConfig, LlamaForCausalLM,
                          LlamaForSequenceClassification, MistralConfig, MistralForCausalLM,
                          MistralForSequenceClassification, OPTConfig, OPTForCausalLM, OPTForSequenceClassification,
                          Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification)


# ------------------------------------------------------------------ seeds
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


def seed_of(offset: int) -> int:
    """The seed of a random draw that a test names ``offset``: ``offset`` itself by default, shifted
    by the ``ARGS_FAST_TEST_SEED`` base (see the module docstring)."""
    return SEED_BASE + offset


def seeds(n: int) -> list[int]:
    """The seeds of a test parameterised over ``n`` random draws: ``seed_of(0) .. seed_of(n - 1)``."""
    return [seed_of(i) for i in range(n)]


# ------------------------------------------------------------------ models
VOCAB = 96
PAD, EOS = 1, 2

# family -> (config class, causal-LM class, sequence-classification class, name of the context length)
_CLASSES = {
    "llama": (LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, "max_position_embeddings"),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification, "max_position_embeddings"),
    "mistral": (MistralConfig, MistralForCausalLM, MistralForSequenceClassification, "max_position_embeddings"),
    "opt": (OPTConfig, OPTForCausalLM, OPTForSequenceClassification, "max_position_embeddings"),
    "gpt2": (GPT2Config, GPT2LMHeadModel, GPT2ForSequenceClassification, "n_positions"),
    "gpt_neox": (GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXForSequenceClassification, "max_position_embeddings"),
}

_LLAMA_GQA = dict(hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2)   # head dim 8, 6 query heads on 2 KV heads
_OPT = dict(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32)

#: name -> (family, config fields of its shape). Vocabulary, context, attention implementation and
#: special tokens are arguments of :func:`make_model`, not part of a variant.
VARIANTS = {
    # the everyday models (FAMILIES; make_policy / make_reward): head dim 8, Llama with grouped-query
    # attention (4 query heads on 2 KV heads)
    "llama": ("llama", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=8)),
    "gpt2": ("gpt2", dict(n_embd=32, n_layer=2, n_head=4)),
    "opt": ("opt", _OPT),   # pre-LN, no embedding projection (OPT-125m's layout)
    # a one-layer Llama (hidden 16, 2 query heads on 1 KV head): stand-ins whose weights do not matter
    "llama-mini": ("llama", dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1)),
    # head dim 16 everywhere, the Triton attention's smallest tile (the static-engine tests)
    "llama-gqa-hd16": ("llama", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2)),
    "opt-hd16": ("opt", dict(_OPT, num_attention_heads=2)),
    "gpt2-hd16": ("gpt2", dict(n_embd=32, n_layer=2, n_head=2)),
    # every layout the static runners map (the static-runner tests; also "gpt2" above)
    "llama-gqa": ("llama", _LLAMA_GQA),
    "llama-linear-rope": ("llama", dict(_LLAMA_GQA, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                     "rope_theta": 10000.0})),
    "llama3-rope-tied": ("llama", dict(_LLAMA_GQA, tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16, "rope_theta": 500000.0})),
    "llama-yarn-bias-mha": ("llama", dict(_LLAMA_GQA, num_key_value_heads=6, attention_bias=True, mlp_bias=True,
                                          rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                                           "original_max_position_embeddings": 64})),
    "llama-dynamic-rope": ("llama", dict(_LLAMA_GQA, rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                                      "rope_theta": 10000.0})),
    "qwen2": ("qwen2", dict(_LLAMA_GQA, tie_word_embeddings=True)),
    "mistral": ("mistral", dict(_LLAMA_GQA, num_key_value_heads=3, head_dim=16, sliding_window=None)),
    "opt-pre-ln": ("opt", _OPT),   # the same shapes as "opt", named for what the runner tests check
    "opt-post-ln-proj": ("opt", dict(_OPT, word_embed_proj_dim=24, do_layer_norm_before=False)),  # OPT-350m's layout
    "gpt2-inverse-layer-scale": ("gpt2", dict(n_embd=32, n_layer=3, n_head=2, scale_attn_by_inverse_layer_idx=True)),
    # a family the static runners do not map (the hf and reference backends run it)
    "gpt-neox": ("gpt_neox", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)),
}

FAMILIES = ("llama", "gpt2", "opt")                                   # the everyday models
ENGINE_VARIANTS = ("llama-gqa-hd16", "opt-hd16", "gpt2-hd16")         # head dim 16
RUNNER_VARIANTS = ("llama-gqa", "llama-linear-rope", "llama3-rope-tied", "llama-yarn-bias-mha", "llama-dynamic-rope",
                   "qwen2", "mistral", "opt-pre-ln", "opt-post-ln-proj", "gpt2", "gpt2-inverse-layer-scale")


def make_config(variant: str, *, vocab: int = VOCAB, context: int = 128, attn: str | None = "sdpa",
                head_dim: int | None = None, num_labels: int | None = None, **overrides):
    """The config of ``variant``: its shape, ``vocab`` ids, ``context`` positions, the special tokens
    above and ``attn`` (``None``: the library's default). ``head_dim`` (Llama and Mistral only) and
    ``overrides`` (any config field, e.g. ``pad_token_id=0`` or ``sliding_window=8``) replace the
    variant's values."""
    family, shape = VARIANTS[variant]
    config_cls, _, _, context_key = _CLASSES[family]
    fields = dict(vocab_size=vocab, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=0, **shape)
    fields[context_key] = context
    if attn is not None:
        fields["attn_implementation"] = attn
    if head_dim is not None:
        if family not in ("llama", "mistral"):
            raise ValueError(f"head_dim is a Llama/Mistral option here, not {family}'s")
        fields["head_dim"] = head_dim
    if num_labels is not None:
        fields["num_labels"] = num_labels
    fields.update(overrides)
    return config_cls(**fields)


def _build(variant, role, num_labels, config_kw):
    if role not in ("lm", "reward"):
        raise ValueError(f"role must be 'lm' or 'reward', got {role!r}")
    _, lm_cls, reward_cls, _ = _CLASSES[VARIANTS[variant][0]]
    if role == "lm":
        return lm_cls(make_config(variant, **config_kw)).eval()
    return reward_cls(make_config(variant, num_labels=num_labels, **config_kw)).eval()


@torch.no_grad()
def _peak(model, peaked):
    if peaked is False:
        return
    if peaked not in (True, "weights"):
        raise ValueError(f"peaked must be False, True or 'weights', got {peaked!r}")
    for name, p in model.named_parameters():
        if peaked is True and ("norm" in name or "ln_" in name or name.endswith("bias")):
            p.add_(torch.randn_like(p) * 0.3)
        elif p.dim() == 2:
            p.normal_(0, 0.15)


@torch.no_grad()
def _score(model, score_std):
    if score_std is not None:
        model.score.weight.normal_(0, score_std)


def make_model(variant: str, role: str = "lm", seed: int = 0, *, peaked: bool | str = False,
               score_std: float | None = 1.0, num_labels: int = 1, device="cpu", **config_kw):
    """A ``variant`` model in ``role`` ("lm" or "reward"), drawn from ``seed`` with the ``peaked`` init
    (see the module docstring), in eval mode on ``device``. ``config_kw`` go to :func:`make_config`
    (``vocab``, ``context``, ``attn``, ``head_dim``, config overrides); ``num_labels`` is the reward
    head's width."""
    torch.manual_seed(seed)
    model = _build(variant, role, num_labels, config_kw)
    _peak(model, peaked)
    if role == "reward":
        _score(model, score_std)
    return model.to(device)


def make_pair(variant: str, seed: int = 0, *, peaked: bool | str = False, score_std: float | None = 1.0,
              device="cpu", **config_kw):
    """A policy and a scalar reward model of ``variant`` drawn from one seeded stream (policy built,
    then the reward model; then both re-initialised as ``peaked`` says, then the score head):
    the pairs of the static-engine and evaluation tests. Arguments as for :func:`make_model`."""
    torch.manual_seed(seed)
    policy, reward = _build(variant, "lm", 1, config_kw), _build(variant, "reward", 1, config_kw)
    _peak(policy, peaked)
    _peak(reward, peaked)
    _score(reward, score_std)
    return policy.to(device), reward.to(device)


def make_policy(family: str, seed: int = 0, attn: str = "sdpa", context: int = 128, head_dim: int | None = None,
                **kw):
    """An everyday causal LM of ``family`` (HF's init)."""
    return make_model(family, "lm", seed, attn=attn, context=context, head_dim=head_dim, **kw)


def make_reward(family: str, seed: int = 1, attn: str = "sdpa", context: int = 128, num_labels: int = 1,
                head_dim: int | None = None, **kw):
    """An everyday reward model of ``family`` (HF's init, score head std 1)."""
    return make_model(family, "reward", seed, attn=attn, context=context, head_dim=head_dim, num_labels=num_labels,
                      **kw)


# ------------------------------------------------------------------ prompts and tokenizers
def padded_prompts(lengths, seed: int = 0, vocab: int = VOCAB):
    """``(input_ids, attention_mask)``: left-padded (with :data:`PAD`) random prompts of the given
    lengths, ids drawn from ``seed`` in ``[3, vocab)`` (never bos, pad or eos)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(3, vocab, (n,), generator=g)
        mask[row, width - n:] = 1
    return ids, mask


def _char_tokenizer(tokens, unk, split, **special):
    """A WordLevel tokenizer over ``tokens`` (id = position), text split into the pieces ``split`` matches."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    assert len(tokens) == VOCAB
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(split), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def make_tokenizer():
    """A character-level tokenizer over VOCAB ids (0 bos, 1 pad, 2 eos, then printable ASCII from " ")."""
    return _char_tokenizer(["<s>", "<pad>", "</s>"] + [chr(c) for c in range(32, 32 + VOCAB - 3)], "<pad>", ".",
                           bos_token="<s>", pad_token="<pad>", eos_token="</s>")


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_chat_tokenizer():
    """A character-level chat tokenizer over VOCAB ids: 0 bos, 1 pad, 2 ``<|im_end|>`` (eos),
    3 ``<|im_start|>``, then newline and ASCII " " to "z"; anything else reads as "?"; with
    :data:`CHAT_TEMPLATE` (ChatML)."""
    specials = ["<s>", "<pad>", "<|im_end|>", "<|im_start|>"]
    fast = _char_tokenizer(specials + ["\n"] + [chr(c) for c in range(32, 123)], "?", r"[\s\S]", bos_token="<s>",
                           eos_token="<|im_end|>", pad_token="<pad>", unk_token="?",
                           additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_models(root, tokenizer, policy_seed: int = 91, reward_seed: int = 92):
    """A tiny Llama policy and reward model with ``tokenizer``, saved to ``root/policy`` and
    ``root/reward`` (for command-line tests that load models from paths); returns ``root``."""
    for name, model in (("policy", make_policy("llama", policy_seed)), ("reward", make_reward("llama", reward_seed))):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


# ------------------------------------------------------------------ comparing runs of the decoder
PARITY_LENGTHS = [5, 2, 7, 3]


def generate_padded(policy, reward, backend, mode="greedy", *, k=4, w=1.5, eos=None, seed=0, steps=7,
                    lengths=PARITY_LENGTHS):
    """``args_fast.generate`` on :func:`padded_prompts` of ``lengths`` (seed ``seed``), temperature 0.7,
    no early stop unless ``eos`` ids are given, the generator seeded with ``seed``."""
    import args_fast
    ids, mask = padded_prompts(lengths, seed=seed)
    return args_fast.generate(policy, reward, ids, mask, k=k, w=w, mode=mode, temperature=0.7, max_new_tokens=steps,
                              eos_token_id=eos if eos is not None else [], pad_token_id=0, backend=backend,
                              generator=torch.Generator().manual_seed(seed))


def assert_same_output(a, b, atol=1e-4):
    """Identical sequences; rewards NaN at the same places and otherwise within ``atol``."""
    assert torch.equal(a.sequences.cpu(), b.sequences.cpu()), (a.sequences, b.sequences)
    assert torch.equal(a.rewards.isnan().cpu(), b.rewards.isnan().cpu())
    torch.testing.assert_close(a.rewards.nan_to_num().cpu(), b.rewards.nan_to_num().cpu(), rtol=0, atol=atol)


def most_staggered_eos(generated: torch.Tensor) -> int:
    """The token of ``generated`` (B, T) whose first occurrence falls on the most distinct steps across rows:
    as EOS, it makes rows stop at different steps."""
    def spread(token):
        return len({int(row.nonzero()[0]) for row in (generated == token) if row.any()})
    return max(generated.unique().tolist(), key=spread)
