"""Build a :class:`StaticRunner` from a Hugging Face model object, per family.

The mapping borrows the HF modules (no weight copy). Families: the Llama family (``llama``,
``mistral``, ``qwen2``; SmolLM checkpoints are ``llama``), ``opt`` and ``gpt2``, each as causal LM
(``*ForCausalLM`` / ``GPT2LMHeadModel``) or as scalar reward model (``*ForSequenceClassification``
with one label).
"""
from __future__ import annotations

from transformers.activations import ACT2FN

from .transformer import Block, GatedMLP, PackedQKV, PlainMLP, Spec, SplitQKV, StaticRunner

LLAMA_FAMILY = ("llama", "mistral", "qwen2")
FAMILIES = LLAMA_FAMILY + ("opt", "gpt2")
# RoPE variants whose frequencies do not depend on the sequence length within the model's context
# ("dynamic" NTK only rescales beyond max_position_embeddings, which the decoder already rejects).
ROPE_TYPES = ("default", "linear", "llama3", "dynamic", "yarn")


def _role(model) -> str | None:
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "reward"
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "lm"
    return None


def unsupported_reason(model, role: str) -> str | None:
    """Why ``model`` cannot run as a :class:`StaticRunner` in ``role`` ("lm" or "reward"), or None if it can."""
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        return f"model_type {family!r} is not one of the static runner's families {FAMILIES}"
    if _role(model) != role:
        want = "a *ForCausalLM" if role == "lm" else "a *ForSequenceClassification with one label"
        return f"{type(model).__name__} is not {want}"
    if role == "reward" and (getattr(config, "num_labels", None) != 1 or getattr(model, "score", None) is None):
        return f"{type(model).__name__} needs a score head with exactly one label"
    if family in LLAMA_FAMILY:
        rope = model.base_model.rotary_emb.rope_type
        if rope not in ROPE_TYPES:
            return f"RoPE type {rope!r} is not supported by the static runner (supported: {ROPE_TYPES})"
        if getattr(config, "hidden_act", "silu") not in ACT2FN:
            return f"activation {config.hidden_act!r} unknown"
    if family == "gpt2" and getattr(config, "add_cross_attention", False):
        return "GPT-2 with cross-attention is not a decoder-only LM"
    devices = {p.device for p in model.parameters()}
    if len(devices) > 1 or any(d.type == "meta" for d in devices):   # split or offloaded by a device_map
        return (f"its weights are spread over {', '.join(sorted(map(str, devices)))} (a device_map): the static "
                "runners need each model whole on one device; the hf and reference backends run it")
    return None


def _llama(model, is_reward):
    config, base = model.config, model.base_model
    rotary = base.rotary_emb
    first = base.layers[0].self_attn
    head_dim = first.head_dim
    inv_freq = rotary.original_inv_freq if rotary.rope_type == "dynamic" else rotary.inv_freq
    spec = Spec(family=config.model_type, n_heads=config.num_attention_heads,
                n_kv_heads=config.num_key_value_heads, head_dim=head_dim, inv_freq=inv_freq,
                rope_scaling=float(rotary.attention_scaling))
    blocks = []
    for i, layer in enumerate(base.layers):
        a, m = layer.self_attn, layer.mlp
        blocks.append(Block(spec, i, SplitQKV(a.q_proj, a.k_proj, a.v_proj), a.o_proj, layer.input_layernorm,
                            layer.post_attention_layernorm,
                            GatedMLP(m.gate_proj, m.up_proj, m.down_proj, ACT2FN[config.hidden_act]), a.scaling))
    head = model.score if is_reward else model.lm_head
    return StaticRunner(spec, base.embed_tokens, blocks, final_norm=base.norm, head=head, is_reward=is_reward)


def _opt(model, is_reward):
    config = model.config
    decoder = model.model.decoder
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    spec = Spec(family="opt", n_heads=heads, n_kv_heads=heads, head_dim=head_dim,
                pre_norm=config.do_layer_norm_before, position_offset=decoder.embed_positions.offset)
    blocks = []
    for i, layer in enumerate(decoder.layers):
        a = layer.self_attn
        blocks.append(Block(spec, i, SplitQKV(a.q_proj, a.k_proj, a.v_proj), a.out_proj, layer.self_attn_layer_norm,
                            layer.final_layer_norm, PlainMLP(layer.fc1, layer.fc2, layer.activation_fn),
                            head_dim ** -0.5))
    # nn.Embedding.forward on the position table: indices already carry the +2 offset
    positions = _PlainEmbedding(decoder.embed_positions)
    head = model.score if is_reward else model.lm_head
    return StaticRunner(spec, decoder.embed_tokens, blocks, positions=positions, project_in=decoder.project_in,
                       final_norm=decoder.final_layer_norm, project_out=decoder.project_out, head=head,
                       is_reward=is_reward)


def _gpt2(model, is_reward):
    config, base = model.config, model.transformer
    heads = config.n_head
    head_dim = config.n_embd // heads
    spec = Spec(family="gpt2", n_heads=heads, n_kv_heads=heads, head_dim=head_dim)
    blocks = []
    for i, layer in enumerate(base.h):
        a = layer.attn
        blocks.append(Block(spec, i, PackedQKV(a.c_attn, (config.n_embd,) * 3), a.c_proj, layer.ln_1, layer.ln_2,
                            PlainMLP(layer.mlp.c_fc, layer.mlp.c_proj, layer.mlp.act), a.scaling))
    head = model.score if is_reward else model.lm_head
    return StaticRunner(spec, base.wte, blocks, positions=base.wpe, final_norm=base.ln_f, head=head,
                       is_reward=is_reward)


class _PlainEmbedding:
    """Calls ``nn.Embedding.forward`` of OPT's position table directly (its own forward derives
    positions from a mask; ours are given)."""

    def __init__(self, table):
        self.table = table

    def __call__(self, index):
        return self.table.weight[index]


def static_runner(model, role: str) -> StaticRunner:
    """The static runner for a Hugging Face ``model`` used as ``role`` ("lm" or "reward")."""
    reason = unsupported_reason(model, role)
    if reason is not None:
        raise ValueError(f"cannot run {type(model).__name__} as a static runner: {reason}")
    family = model.config.model_type
    build = _llama if family in LLAMA_FAMILY else _opt if family == "opt" else _gpt2
    return build(model, role == "reward").eval()
