"""`args-fast eval` / `sweep` end to end on tiny random models with a character tokenizer, in a temp dir."""
import argparse
import json

import pytest
import torch

from args_fast.data.chitchat import split_of
from args_fast.evaluation import methods as eval_methods
from args_fast.data.prompts import PROMPTS_FILE, build_prompts, load_prompts
from args_fast.cli.eval import add_eval_arguments
from args_fast.integrations.run_files import read_jsonl
from args_fast.evaluation.run import run_eval
from args_fast.cli.sweep import add_sweep_arguments
from args_fast.evaluation.sweep import run_sweep
from tiny_models import VOCAB, make_chat_tokenizer, make_pair


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A policy and a reward model (one Llama pair, HF's init, score head std 1) with the chat
    tokenizer, saved; and a prompts file."""
    root = tmp_path_factory.mktemp("tiny")
    policy, reward = make_pair("llama", 0, context=1024, attn=None)
    tok = make_chat_tokenizer()
    for model, name in ((policy, "policy"), (reward, "reward")):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    prompts = root / "prompts.jsonl"
    with open(prompts, "w") as f:
        f.write(json.dumps({"meta": {"note": "test prompts"}}) + "\n")
        for i, text in enumerate(["How was your day today?", "Tell me about dogs.", "Any plans?"]):
            f.write(json.dumps({"id": f"p{i}", "prompt": text}) + "\n")
    return root


def parse(add, argv):
    return add(argparse.ArgumentParser()).parse_args(argv)


def common_argv(tiny_dir, out, **extra):
    argv = ["--policy", str(tiny_dir / "policy"), "--reward-model", str(tiny_dir / "reward"),
            "--prompts", str(tiny_dir / "prompts.jsonl"), "--out-dir", str(out), "--batch-size", "2"]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def test_bundled_prompts_are_held_out_and_reproducible():
    prompts = load_prompts()
    assert len(prompts) >= 200
    assert all(split_of(p["conversation_id"]) == "test" for p in prompts)
    assert all(8 <= len(p["prompt"].split()) <= 60 for p in prompts)
    assert len({p["prompt"].lower() for p in prompts}) == len(prompts)
    assert [p["prompt"] for p in build_prompts()] == [p["prompt"] for p in prompts], \
        f"{PROMPTS_FILE} is stale: python -m args_fast.data.prompts"


def test_eval_end_to_end(tiny_dir, tmp_path, capsys):
    args = parse(add_eval_arguments, common_argv(tiny_dir, tmp_path, num_prompts=3, max_new_tokens=6, k=4, w=2.0))
    assert run_eval(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    ran = [m for m in eval_methods.METHODS if m != "contrastive" or not eval_methods.contrastive_unavailable()]
    for name in ran:
        records = read_jsonl(tmp_path / f"{name}.jsonl")
        assert [r["id"] for r in records] == ["p0", "p1", "p2"]
        for r in records:
            for field in ("prompt", "result", "response", "elapsed", "method", "reward", "diversity", "coherence",
                          "vader", "minilm_positivity", "harmlessness"):
                assert field in r, (name, field)
            assert r["method"] == name and r["response"] == r["prompt"] + r["result"]
            assert r["prompt"].startswith("<|im_start|>user\n") and r["prompt"].endswith("<|im_start|>assistant\n")
            assert r["num_tokens"] <= 6 and (r["stopped"] or r["num_tokens"] == 6)
        assert summary["methods"][name]["n"] == 3
    if eval_methods.contrastive_unavailable():
        assert "unavailable" in summary["methods"]["contrastive"]
        assert not (tmp_path / "contrastive.jsonl").exists()
    assert summary["methods"]["greedy"]["win_rate_vs_greedy"] == 0.5
    assert set(summary["args_greedy_vs_greedy"]) >= {"win rate vs greedy", "coherence - greedy"}
    for key in ("command", "models", "seed", "machine"):
        assert key in summary
    table = (tmp_path / "summary.md").read_text()
    assert "| args-greedy | k=4, w=2.0 |" in table and table in capsys.readouterr().out


def test_args_greedy_at_w0_is_greedy_and_runs_repeat(tiny_dir, tmp_path):
    """ARGS with w = 0 picks the top logit, so it must reproduce transformers' greedy decoding; a second
    run with the same seed reproduces the sampled methods."""
    argv = common_argv(tiny_dir, tmp_path, num_prompts=3, max_new_tokens=8, k=3, w=0.0,
                       methods="greedy,top-k,args-greedy,args-stochastic")
    run_eval(parse(add_eval_arguments, argv))
    first = {m: read_jsonl(tmp_path / f"{m}.jsonl") for m in ("greedy", "top-k", "args-greedy", "args-stochastic")}
    assert [r["result"] for r in first["args-greedy"]] == [r["result"] for r in first["greedy"]]
    run_eval(parse(add_eval_arguments, argv))
    for m in ("top-k", "args-stochastic"):
        assert [r["result"] for r in read_jsonl(tmp_path / f"{m}.jsonl")] == [r["result"] for r in first[m]]


def test_sweep_tiny_grid(tiny_dir, tmp_path):
    args = parse(add_sweep_arguments, common_argv(tiny_dir, tmp_path, num_prompts=2, offset=1, max_new_tokens=4,
                                                  ws="0,1.5", ks="2,3"))
    assert run_sweep(args) == 0
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    cells = {(c["k"], c["w"]) for c in sweep["cells"]}
    assert cells == {(2, 0.0), (2, 1.5), (3, 0.0), (3, 1.5)}
    greedy = [c for c in sweep["cells"] if c["w"] == 0.0]
    assert greedy[0]["reward"] == greedy[1]["reward"]   # w = 0 is the one shared greedy run
    for metric in ("reward", "diversity", "coherence", "vader", "minilm_positivity"):
        png = tmp_path / f"sweep_{metric}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| k | w |" in (tmp_path / "sweep.md").read_text()


@pytest.mark.parametrize("add, argv, message", [
    (add_eval_arguments, ["--num-prompts", "0"], "--num-prompts must be an integer >= 1"),
    (add_eval_arguments, ["--k", "x"], "--k must be an integer >= 1"),
    (add_eval_arguments, ["--w", "nan"], "--w must be a finite number"),
    (add_eval_arguments, ["--temperature", "0"], "--temperature must be a finite number > 0"),
    (add_sweep_arguments, ["--ws", "1,a"], "--ws must be comma-separated finite numbers"),
    (add_sweep_arguments, ["--ks", "0,5"], "--ks must be comma-separated integers >= 1"),
])
def test_bad_arguments_exit_with_a_clear_message(add, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(add, argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_bad_values_found_before_loading_models(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="--methods must be a comma-separated subset"):
        run_eval(parse(add_eval_arguments, common_argv(tiny_dir, tmp_path, methods="greedy,beam")))
    with pytest.raises(ValueError, match="must select within the 3 prompts"):
        run_eval(parse(add_eval_arguments, common_argv(tiny_dir, tmp_path, num_prompts=3, offset=1)))
    with pytest.raises(ValueError, match=rf"--k must be an int in \[1, {VOCAB}\]"):   # k above the tiny vocabulary
        run_eval(parse(add_eval_arguments, common_argv(tiny_dir, tmp_path, num_prompts=1, k=500,
                                                       methods="args-greedy")))


def test_baseline_generation_configs_use_only_their_own_filters():
    """transformers defaults to top_k=50: nucleus must switch it off, top-k must switch off top_p."""
    seen = {}

    class Recorder:
        device = torch.device("cpu")

        def generate(self, input_ids, attention_mask, generation_config):
            seen[self.name] = generation_config
            return torch.cat([input_ids, torch.full((input_ids.shape[0], 2), 2)], dim=1)

    ids, mask = torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.long)
    for method in eval_methods.make_methods(["greedy", "top-k", "nucleus"], k=10, w=1.0, temperature=0.7):
        policy = Recorder()
        policy.name = method.name
        rows, stops = eval_methods.run_batch(method, policy, None, None, ids, mask, max_new_tokens=2, eos_ids=[2],
                                             pad_id=1, generator=torch.Generator().manual_seed(0))
        assert rows == [[]] and stops == [[2]]
    assert not seen["greedy"].do_sample
    assert (seen["top-k"].do_sample, seen["top-k"].top_k, seen["top-k"].top_p, seen["top-k"].temperature) == (True, 40, 1.0, 0.7)
    assert (seen["nucleus"].do_sample, seen["nucleus"].top_k, seen["nucleus"].top_p, seen["nucleus"].temperature) == (True, 0, 0.95, 1.0)


def test_eval_with_an_implicit_reward(tiny_dir, tmp_path):
    """--implicit-reference: ARGS ranks by the implicit reward of the policy against that LM, and the
    reward column is that reward of the complete response (beta * summed log-ratio, recomputed here)."""
    import torch
    from transformers import AutoModelForCausalLM
    from tiny_models import make_model
    ref_dir = tmp_path / "ref"
    make_model("llama", "lm", 5, context=1024, attn=None).save_pretrained(ref_dir)
    argv = ["--policy", str(tiny_dir / "policy"), "--implicit-reference", str(ref_dir), "--beta", "0.5",
            "--prompts", str(tiny_dir / "prompts.jsonl"), "--out-dir", str(tmp_path / "out"), "--batch-size", "2",
            "--num-prompts", "2", "--max-new-tokens", "4", "--k", "3", "--methods", "greedy,args-greedy"]
    assert run_eval(parse(add_eval_arguments, argv)) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "implicit reward" in summary["models"]["reward_model"]
    policy = AutoModelForCausalLM.from_pretrained(tiny_dir / "policy").eval()
    ref = AutoModelForCausalLM.from_pretrained(ref_dir).eval()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_dir / "policy")
    for r in read_jsonl(tmp_path / "out" / "args-greedy.jsonl"):
        prompt = tok(r["prompt"], add_special_tokens=False).input_ids
        full = tok(r["response"], add_special_tokens=False).input_ids
        assert full[:len(prompt)] == prompt
        seq = torch.tensor(full + ([tok.convert_tokens_to_ids("<|im_end|>")] if r["stopped"] else []))
        with torch.no_grad():
            lp = torch.log_softmax(policy(seq[None]).logits[0], -1)
            lr = torch.log_softmax(ref(seq[None]).logits[0], -1)
        want = 0.5 * sum(float(lp[s - 1, seq[s]] - lr[s - 1, seq[s]]) for s in range(len(prompt), len(seq)))
        assert abs(r["reward"] - want) < 1e-3, (r["reward"], want)


def test_the_recorded_command_is_the_one_typed(monkeypatch):
    """Result files record the command line as typed (it was once just "eval": the subcommand's name)."""
    from args_fast.cli import build_parser
    from args_fast.integrations.run_files import command_line
    monkeypatch.setattr("sys.argv", ["/x/.venv/bin/args-fast", "sweep", "--ks", "2,3"])
    assert command_line("sweep") == "args-fast sweep --ks 2,3"
    assert not hasattr(build_parser().parse_args(["pareto"]), "command")
