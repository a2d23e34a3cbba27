"""Static runners (args_fast.runners) against the Hugging Face models they borrow weights from.

float32 on CPU, tiny random-init configs of every supported variant, left-padded batches; logits and
rewards must agree within 1e-4 for prefill, for decode steps and for the k-candidate reward pass.
"""
import pytest
import torch
from transformers import (GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, LlamaForSequenceClassification, MistralConfig, MistralForCausalLM,
                          MistralForSequenceClassification, OPTConfig, OPTForCausalLM, OPTForSequenceClassification,
                          Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification)

from args_fast import ops
from args_fast.backends.static_engine import sdpa_candidate_attention
from args_fast.runners import static_runner, unsupported_reason

VOCAB, PAD = 80, 1
ATOL = 1e-4
_LLAMA = dict(hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=6,
              num_key_value_heads=2, max_position_embeddings=256)
VARIANTS = {
    "llama-gqa": (LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, _LLAMA),
    "llama-linear-rope": (LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification,
                          dict(_LLAMA, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})),
    "llama3-rope-tied": (LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification,
                         dict(_LLAMA, tie_word_embeddings=True, rope_parameters={
                             "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16, "rope_theta": 500000.0})),
    "llama-yarn-bias-mha": (LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification,
                            dict(_LLAMA, num_key_value_heads=6, attention_bias=True, mlp_bias=True, rope_parameters={
                                "rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                "original_max_position_embeddings": 64})),
    "llama-dynamic-rope": (LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification,
                           dict(_LLAMA, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification, dict(_LLAMA, tie_word_embeddings=True)),
    "mistral": (MistralConfig, MistralForCausalLM, MistralForSequenceClassification,
                dict(_LLAMA, num_key_value_heads=3, head_dim=16, sliding_window=None)),
    "opt-pre-ln": (OPTConfig, OPTForCausalLM, OPTForSequenceClassification,
                   dict(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                        max_position_embeddings=256, word_embed_proj_dim=32)),
    "opt-post-ln-proj": (OPTConfig, OPTForCausalLM, OPTForSequenceClassification,  # OPT-350m's layout
                         dict(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                              max_position_embeddings=256, word_embed_proj_dim=24, do_layer_norm_before=False)),
    "gpt2": (GPT2Config, GPT2LMHeadModel, GPT2ForSequenceClassification,
             dict(n_embd=32, n_layer=2, n_head=4, n_positions=256)),
    "gpt2-inverse-layer-scale": (GPT2Config, GPT2LMHeadModel, GPT2ForSequenceClassification,
                                 dict(n_embd=32, n_layer=3, n_head=2, n_positions=256,
                                      scale_attn_by_inverse_layer_idx=True)),
}


def make(variant, role, seed):
    config_cls, lm_cls, rm_cls, kw = VARIANTS[variant]
    config = config_cls(vocab_size=VOCAB, pad_token_id=PAD, eos_token_id=2, bos_token_id=0,
                        attn_implementation="eager", **kw)
    if role == "reward":
        config.num_labels = 1
    torch.manual_seed(seed)
    model = (rm_cls if role == "reward" else lm_cls)(config).eval()
    with torch.no_grad():   # non-trivial norms, biases, score head and peaked attention, so a wrong mapping shows
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
            elif p.dim() == 2:   # HF's init (std 0.02) leaves attention almost uniform and RoPE invisible
                p.normal_(0, 0.15)
        if role == "reward":
            model.score.weight.normal_(0, 1.0)
    return model


def prompts(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(3, VOCAB, (n,), generator=g)
        mask[row, width - n:] = 1
    return ids, mask


def hf_positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


def hf_hidden(model, ids, mask):
    """HF's last hidden state with positions counted over real tokens (as generate does)."""
    out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask))
    return out.last_hidden_state


def unpadded(ids, mask):
    return [row[m.bool()] for row, m in zip(ids, mask)]


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_causal_lm_prefill_and_decode_match_hf(variant):
    hf = make(variant, "lm", seed=len(variant))
    runner = static_runner(hf, "lm")
    ids, mask = prompts([6, 1, 9, 4], seed=len(variant))
    steps = 4
    cache = runner.new_cache(ids.shape[0], ids.shape[1] + steps)
    logits = runner.outputs(runner.prefill(ids, mask, cache))
    expected = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], expected[real], rtol=0, atol=ATOL)
    assert cache.prefix_start.tolist() == (ids.shape[1] - mask.sum(-1)).tolist()
    # decode one token per row per step; compare with HF over the whole unpadded sequence
    rows = unpadded(ids, mask)
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        token = torch.randint(3, VOCAB, (ids.shape[0], 1), generator=g)
        got = runner.outputs(runner.decode(token, cache, ops.candidate_attention))[:, -1]
        cache.prefix_end += 1
        rows = [torch.cat([r, t]) for r, t in zip(rows, token)]
        want = torch.stack([hf(input_ids=r[None]).logits[0, -1] for r in rows])
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_reward_candidates_and_commit_match_hf(variant):
    """k candidates per row in one pass == HF's reward of each context + candidate; after committing
    a chosen candidate the next pass still matches (the winner's K/V moved into the prefix)."""
    hf = make(variant, "reward", seed=len(variant) + 1)
    runner = static_runner(hf, "reward")
    ids, mask = prompts([3, 8, 1, 5, 7], seed=3)
    k, steps = 5, 3
    cache = runner.new_cache(ids.shape[0], ids.shape[1] + steps + k)
    runner.prefill(ids, mask, cache)
    rows = unpadded(ids, mask)
    g = torch.Generator().manual_seed(11)
    for _ in range(steps):
        candidates = torch.randint(3, VOCAB, (ids.shape[0], k), generator=g)
        got = runner.outputs(runner.decode(candidates, cache, ops.candidate_attention))
        want = torch.stack([hf.score(hf_hidden(hf, torch.cat([r.expand(k, -1), c[:, None]], 1),
                                               torch.ones(k, len(r) + 1, dtype=torch.long))[:, -1]).squeeze(-1)
                            for r, c in zip(rows, candidates)])
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
        choice = torch.randint(0, k, (ids.shape[0],), generator=g)
        ops.commit_slots_(cache.keys, cache.values, cache.prefix_end, choice)
        cache.prefix_end += 1
        rows = [torch.cat([r, c[j].view(1)]) for r, c, j in zip(rows, candidates, choice)]


@torch.no_grad()
def test_hf_sequence_classification_pooling_agrees():
    """Our reward = score head on the last token, which is what HF's pooled logits are for a
    left-padded batch ending in a non-pad token."""
    hf = make("llama-gqa", "reward", seed=5)
    runner = static_runner(hf, "reward")
    ids, mask = prompts([4, 7, 2], seed=9)
    cache = runner.new_cache(3, ids.shape[1])
    got = runner.outputs(runner.prefill(ids, mask, cache))[:, -1]
    want = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits[:, 0]
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("hq,hkv,k", [(4, 4, 1), (6, 2, 5), (8, 1, 3)])
def test_sdpa_candidate_attention_matches_reference(hq, hkv, k):
    g = torch.Generator().manual_seed(hq * 10 + k)
    batch, slots, dim = 3, 17, 8
    q = torch.randn(batch, hq, k, dim, generator=g)
    kc, vc = torch.randn(2, batch, hkv, slots, dim, generator=g)
    start = torch.tensor([0, 4, 9])
    end = torch.tensor([10, 10, 12])
    for scale in (None, 0.3):
        torch.testing.assert_close(sdpa_candidate_attention(q, kc, vc, start, end, scale),
                                   ops.candidate_attention(q, kc, vc, start, end, scale), rtol=0, atol=1e-5)


def test_select_commit_reference_is_select_then_commit():
    """ops.select_commit (the fused contract's reference) = select_candidates + commit_slots_, in place."""
    g = torch.Generator().manual_seed(0)
    batch, k, layers, heads, slots, dim = 4, 3, 2, 2, 9, 4
    logits, rewards, u = torch.randn(batch, k, generator=g), torch.randn(batch, k, generator=g), torch.rand(batch, k, generator=g)
    ids = torch.randint(0, 50, (batch, k), generator=g)
    kc, vc = torch.randn(2, layers, batch, heads, slots, dim, generator=g)
    end = torch.tensor([3, 3, 5, 2])
    finished = torch.tensor([False, True, False, False])
    eos = ids[2, :].clone()   # every candidate of row 2 is an EOS
    want = ops.select_candidates(logits, ids, rewards, 0.7, u, 0.5, finished, eos, 0)
    kw, vw = kc.clone(), vc.clone()
    ops.commit_slots_(kw, vw, end, want[0])
    f2, e2, k2, v2 = finished.clone(), end.clone(), kc.clone(), vc.clone()
    got = ops.select_commit(logits, ids, rewards, u, 0.7, 0.5, f2, eos, 0, k2, v2, e2)
    for a, b in zip(got, want[:3]):
        torch.testing.assert_close(a, b, equal_nan=True)
    assert torch.equal(f2, want[3]) and f2[2] and torch.equal(e2, end + 1)
    assert torch.equal(k2, kw) and torch.equal(v2, vw)


def test_unsupported_models_are_refused_with_a_reason():
    lm, rm = make("llama-gqa", "lm", 0), make("llama-gqa", "reward", 1)
    assert unsupported_reason(lm, "lm") is None and unsupported_reason(rm, "reward") is None
    assert "ForSequenceClassification" in unsupported_reason(lm, "reward")
    with pytest.raises(ValueError, match="static runner"):
        static_runner(rm, "lm")
    bert_like = torch.nn.Linear(2, 2)
    assert "model_type" in unsupported_reason(bert_like, "lm")
    config_cls, lm_cls, _, kw = VARIANTS["mistral"]
    windowed = lm_cls(config_cls(vocab_size=VOCAB, **dict(kw, sliding_window=8))).eval()
    model = static_runner(windowed, "lm")
    model.new_cache(2, 8)
    with pytest.raises(ValueError, match="sliding-window"):
        model.new_cache(2, 9)


def test_runner_shares_the_hf_weights():
    hf = make("qwen2", "lm", 0)
    runner = static_runner(hf, "lm")
    hf_ptrs = {p.data_ptr() for p in hf.parameters()}
    assert {p.data_ptr() for p in runner.parameters()} <= hf_ptrs
