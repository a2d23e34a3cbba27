"""LoRA SFT (args_fast/training/lora_sft.py): an untrained adapter changes nothing, training lowers the loss,
the exported adapter merged by interpolate_lora is the trained model, and a cut run resumes to the
same adapter."""
import copy

import pytest
import torch

from args_fast.training.lora_sft import add_lora, lora_state, remove_lora, train_sft
from args_fast.training.baselines import base_weights, interpolate_lora
from tiny_models import make_model, padded_prompts


def examples(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(2, 90, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist()
        reply = [5, 6, 7, 8, 9][: int(torch.randint(2, 6, (1,), generator=g))]    # a pattern to learn
        out.append((prompt, reply))
    return out


def test_fresh_adapter_is_a_no_op_and_training_lowers_the_loss():
    model = make_model("llama-gqa-hd16", "lm", 0)
    ids, _ = padded_prompts([6], seed=1)
    before = model(input_ids=ids).logits
    names = add_lora(model, r=4, alpha=8)
    assert names and all(n.endswith(("q_proj", "v_proj")) for n in names)
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.endswith((".A", ".B")))
    losses = train_sft(model, examples(), pad_id=0, lr=2e-2, batch_size=4, epochs=15, progress=False)
    assert len(losses) == 45 and sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3   # 4.6 -> 3.8 here


def test_exported_adapter_interpolated_at_one_is_the_trained_model():
    model = make_model("llama-gqa-hd16", "lm", 0)
    base_model = copy.deepcopy(model)
    names = add_lora(model, r=4, alpha=8)
    train_sft(model, examples(), pad_id=0, lr=3e-3, batch_size=4, epochs=2, progress=False)
    ids, _ = padded_prompts([7], seed=2)
    trained = model(input_ids=ids).logits
    adapter = remove_lora(model)
    assert set(adapter) == set(names) and not any(type(m).__name__ == "LoRALinear" for m in model.modules())
    torch.testing.assert_close(model(input_ids=ids).logits, base_model(input_ids=ids).logits, rtol=0, atol=0)
    interpolate_lora(model, base_weights(model, names), [adapter], [1.0])
    torch.testing.assert_close(model(input_ids=ids).logits, trained, rtol=0, atol=1e-4)


def test_a_cut_run_resumes_to_the_same_adapter(tmp_path):
    data = examples(20, seed=3)
    whole = make_model("opt-hd16", "lm", 1)
    add_lora(whole, r=2, alpha=4, seed=5)
    train_sft(whole, data, pad_id=0, lr=1e-3, batch_size=4, epochs=2, progress=False)
    cut = make_model("opt-hd16", "lm", 1)
    add_lora(cut, r=2, alpha=4, seed=5)
    train_sft(cut, data, pad_id=0, lr=1e-3, batch_size=4, epochs=2, work_dir=tmp_path, save_every=3, max_steps=5,
              progress=False)   # cut after step 5; the checkpoint holds step 3
    again = make_model("opt-hd16", "lm", 1)
    add_lora(again, r=2, alpha=4, seed=5)
    resumed = train_sft(again, data, pad_id=0, lr=1e-3, batch_size=4, epochs=2, work_dir=tmp_path, save_every=3,
                        progress=False)
    assert len(resumed) == 10 - 3
    for name, (a, b, _) in lora_state(whole).items():
        got_a, got_b, _ = lora_state(again)[name]
        torch.testing.assert_close(got_a, a, rtol=0, atol=1e-6)
        torch.testing.assert_close(got_b, b, rtol=0, atol=1e-6)


def test_errors():
    model = make_model("gpt2-hd16", "lm", 0)
    with pytest.raises(ValueError, match="no linear layer of the model ends with"):
        add_lora(model)      # GPT-2 uses Conv1D c_attn, no q_proj / v_proj
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_sft(model, examples(), pad_id=0)
