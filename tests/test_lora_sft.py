"""LoRA SFT (args_fast/training/lora_sft.py): an untrained adapter changes nothing, training lowers the loss,
the exported adapter merged by interpolate_lora is the trained model, and a cut run resumes to the
same adapter; adapters are saved in peft's format, which peft loads, and we load peft's."""
import copy
import json

import pytest
import torch

from args_fast.training.lora_sft import (PEFT_CONFIG, PEFT_WEIGHTS, add_lora, load_adapter, load_lora_state, lora_state,
                                         remove_lora, save_adapter, train_sft)
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


def random_adapter(model, r=4, alpha=8.0, seed=0):
    """An adapter with random A and B (a fresh one has B = 0, which would hide a swapped A / B)."""
    names = add_lora(model, r=r, alpha=alpha, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    load_lora_state(model, {n: (a, torch.randn(b.shape, generator=g) * 0.1, s)
                            for n, (a, b, s) in lora_state(model).items()})
    return names


def test_saved_adapter_round_trip_is_exact(tmp_path):
    model = make_model("llama-gqa-hd16", "lm", 0)
    random_adapter(model)
    adapter = remove_lora(model)
    save_adapter(tmp_path / "a", adapter, {"objective": "x", "steps": 3})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([PEFT_CONFIG, PEFT_WEIGHTS, "args_fast.json"])
    config = json.loads((tmp_path / "a" / PEFT_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0
    back, meta = load_adapter(tmp_path / "a")
    assert meta == {"objective": "x", "steps": 3, "scale": 2.0} and list(back) == sorted(adapter)
    for name, (a, b, scale) in adapter.items():
        assert torch.equal(back[name][0], a) and torch.equal(back[name][1], b) and back[name][2] == scale
    # the interpolation from the loaded adapters is the same, bit for bit, as from the in-memory ones
    other = {n: (a * 2, b - 1, s) for n, (a, b, s) in adapter.items()}
    save_adapter(tmp_path / "b", other, {})
    merged = []
    for adapters in ([adapter, other], [back, load_adapter(tmp_path / "b")[0]]):
        m = make_model("llama-gqa-hd16", "lm", 0)
        interpolate_lora(m, base_weights(m, sorted(adapter)), adapters, [0.25, 0.75])
        merged.append(m.state_dict())
    assert all(torch.equal(merged[0][k], merged[1][k]) for k in merged[0])


def test_peft_loads_ours_and_we_load_peft_s(tmp_path):
    peft = pytest.importorskip("peft")
    model = make_model("llama-gqa-hd16", "lm", 0)
    base = copy.deepcopy(model)
    random_adapter(model, r=4, alpha=8.0, seed=3)
    ids, _ = padded_prompts([7], seed=2)
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        plain = base(input_ids=ids).logits
    adapter = remove_lora(model)
    save_adapter(tmp_path / "ours", adapter, {})
    tuned = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    with torch.no_grad():
        theirs = tuned(input_ids=ids).logits
    # the same model (peft applies the scale after B, we before: rounding only)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)   # the adapter does change the model
    tuned.save_pretrained(tmp_path / "peft")
    back, meta = load_adapter(tmp_path / "peft")
    assert meta == {"scale": 2.0} and sorted(back) == sorted(adapter)
    for name, (a, b, scale) in adapter.items():
        assert torch.equal(back[name][0], a) and torch.equal(back[name][1], b) and back[name][2] == scale


def test_adapter_errors(tmp_path):
    model = make_model("llama-gqa-hd16", "lm", 0)
    random_adapter(model)
    adapter = remove_lora(model)
    with pytest.raises(ValueError, match="adapter_config.json is missing"):
        load_adapter(tmp_path / "none")
    mixed = dict(adapter)
    name = next(iter(mixed))
    mixed[name] = (mixed[name][0], mixed[name][1], 3.0)
    with pytest.raises(ValueError, match="one scale and one rank"):
        save_adapter(tmp_path / "mixed", mixed, {})
    save_adapter(tmp_path / "dora", adapter, {})
    config = json.loads((tmp_path / "dora" / PEFT_CONFIG).read_text())
    (tmp_path / "dora" / PEFT_CONFIG).write_text(json.dumps({**config, "use_dora": True, "bias": "all"}))
    with pytest.raises(ValueError, match=r"only plain LoRA .*\['bias', 'use_dora'\]"):
        load_adapter(tmp_path / "dora")
