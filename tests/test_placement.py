"""Model placement: --policy-device / --reward-device / --device-map, and models split by a device_map.

On this CPU-only machine a split model is one whose later layers accelerate offloads to disk (their
weights on the meta device, streamed in per forward): the same hooks that spread a large model over
several GPUs. The hf and reference backends run it to the same tokens; the static engines refuse it."""
import pytest
import torch
from transformers import AutoModelForCausalLM

import args_fast
from args_fast.cli import main
from args_fast.loading import load_models
from tiny_models import make_chat_tokenizer, make_policy, make_reward, padded_prompts, save_models


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    policy = make_policy("llama", 91)
    policy.save_pretrained(root / "policy")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    offloaded = AutoModelForCausalLM.from_pretrained(root / "policy", device_map=device_map,
                                                     offload_folder=root / "offload").eval()
    assert {p.device.type for p in offloaded.parameters()} == {"cpu", "meta"}
    return policy, offloaded, make_reward("llama", 92)


@pytest.mark.parametrize("backend", ["hf", "reference", "auto"])
@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
def test_a_split_policy_runs_on_the_eager_backends(split, backend, mode):
    whole, offloaded, reward = split
    ids, mask = padded_prompts([5, 2, 7], seed=1)
    kw = dict(k=4, w=1.5, mode=mode, max_new_tokens=5, eos_token_id=[], pad_token_id=0, backend=backend)
    a = args_fast.generate(whole, reward, ids, mask, generator=torch.Generator().manual_seed(3), **kw)
    b = args_fast.generate(offloaded, reward, ids, mask, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.rewards, b.rewards, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["static", "static-triton", "static-csrc"])
def test_the_static_engines_refuse_a_split_model_saying_why(split, backend):
    _, offloaded, reward = split
    with pytest.raises(ValueError, match=f"backend='{backend}' cannot run these models"):
        args_fast.ARGSDecoder(offloaded, reward, k=4, backend=backend)
    if backend == "static":
        with pytest.raises(ValueError, match=r"spread over cpu, meta \(a device_map\): the static runners need each "
                                             r"model whole on one device; the hf and reference backends run it"):
            args_fast.ARGSDecoder(offloaded, reward, k=4, backend=backend)


def test_load_models_places_each_model(tmp_path):
    root = save_models(tmp_path, make_chat_tokenizer())
    loaded = load_models(str(root / "policy"), str(root / "reward"), policy_device="cpu", reward_device="cpu")
    assert loaded.policy.device.type == "cpu" and loaded.reward.device.type == "cpu"
    split = load_models(str(root / "policy"), str(root / "reward"), device_map="auto")   # one device here: all on it
    assert split.policy.device.type == "cpu" and split.reward.device.type == "cpu"
    ids, mask = padded_prompts([4, 2], seed=2)
    kw = dict(k=4, w=1.0, max_new_tokens=3, eos_token_id=[], pad_token_id=0, backend="hf")
    assert torch.equal(args_fast.generate(split.policy, split.reward, ids, mask, **kw).sequences,
                       args_fast.generate(loaded.policy, loaded.reward, ids, mask, **kw).sequences)


@pytest.mark.parametrize("argv, message", [
    (["--policy-device", "gpu7"], "--policy-device must be a torch device such as cpu, cuda or cuda:1, got 'gpu7'"),
    (["--reward-device", "nowhere"], "--reward-device must be a torch device"),
    (["--device-map", "auto"], "--device-map splits models given by path (--policy, --reward-model)"),
    (["--device-map", "auto", "--policy", "x", "--policy-device", "cpu"],
     "give --device-map or --policy-device / --reward-device, not both"),
    (["--reward-device", "meta"], "--reward-device: the default reward model is a head on the default policy's own "
                                  "backbone"),
])
@pytest.mark.parametrize("command", ["generate", "eval"])
def test_placement_errors_name_the_flag_before_loading(command, argv, message, capsys, monkeypatch):
    monkeypatch.setattr("args_fast.loading.load_models", lambda *a, **k: pytest.fail("loaded models"))
    if "--policy" in argv:   # a path that exists, so the placement check is what fails
        argv = [a if a != "x" else str(make_dir(monkeypatch)) for a in argv]
    prompt = ["--prompt", "hi"] if command == "generate" else []
    with pytest.raises(SystemExit) as exc:
        main([command, *prompt, *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def make_dir(monkeypatch):
    import tempfile
    from pathlib import Path
    path = Path(tempfile.mkdtemp())
    (path / "config.json").write_text("{}")
    return path
