"""`args-fast pareto` end to end on tiny random models: every cell, the report, the method identities,
resumption of a cut run, and errors before any work."""
import argparse
import json
import re

import pytest
import torch

from args_fast.evaluation import metrics, pareto
from args_fast.cli.pareto import add_pareto_arguments
from args_fast.evaluation.pareto import lambda_grid, run_pareto
from args_fast.integrations.run_files import read_jsonl
from args_fast.training.lora_sft import add_lora, load_adapter, remove_lora, save_adapter
from processes import run_processes
from tiny_models import make_chat_tokenizer, make_pair


def random_adapter(policy, seed):
    model = make_pair("llama", 0, context=1024, attn=None)[0]
    model.load_state_dict(policy.state_dict())
    add_lora(model, r=2, alpha=4.0, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "B") and isinstance(m.B, torch.nn.Parameter):
            with torch.no_grad():
                m.B.copy_(torch.randn(m.B.shape, generator=g) * 0.5)
    return remove_lora(model)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pareto")
    policy, reward = make_pair("llama", 0, context=1024, attn=None)
    relevance = make_pair("llama", 1, context=1024, attn=None)[1]
    tok = make_chat_tokenizer()
    for model, name in ((policy, "policy"), (reward, "reward"), (relevance, "relevance")):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    with open(root / "prompts.jsonl", "w") as f:
        for i, text in enumerate(["How was your day today?", "Tell me about dogs.", "Any plans?"]):
            f.write(json.dumps({"id": f"p{i}", "prompt": text}) + "\n")
    for seed, name in enumerate(("positivity", "relevance", "ric")):
        meta = {"lows": [-2.0, -1.5], "highs": [1.0, 1.25]} if name == "ric" else {}
        save_adapter(root / "adapters" / name, random_adapter(policy, seed + 1), {"objective": name, **meta})
    return root


def argv_list(tiny_dir, out, **extra):
    a = ["--policy", str(tiny_dir / "policy"), "--reward-model", str(tiny_dir / "reward"),
         "--relevance-reward-model", str(tiny_dir / "relevance"), "--prompts", str(tiny_dir / "prompts.jsonl"),
         "--out-dir", str(out), "--batch-size", "2", "--num-prompts", "3", "--offset", "0", "--max-new-tokens", "5",
         "--lambdas", "3", "--k", "3", "--calibration-prompts", "4", "--adapters", str(tiny_dir / "adapters")]
    for key, value in extra.items():
        a += [f"--{key.replace('_', '-')}", str(value)]
    return a


def argv(tiny_dir, out, **extra):
    return add_pareto_arguments(argparse.ArgumentParser()).parse_args(argv_list(tiny_dir, out, **extra))


def without_time(records):
    return [{k: v for k, v in r.items() if k != "elapsed"} for r in records]


@pytest.fixture(scope="module")
def full_run(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pareto_out")
    assert run_pareto(argv(tiny_dir, out)) == 0
    return out


def test_lambda_grid():
    assert lambda_grid(2) == [0.0, 1.0]
    assert lambda_grid(7)[1] == pytest.approx(1 / 6, abs=1e-6) and len(lambda_grid(7)) == 7


def test_adapter_round_trip(tiny_dir):
    adapter, meta = load_adapter(tiny_dir / "adapters" / "ric")
    assert meta["lows"] == [-2.0, -1.5] and meta["scale"] == 2.0
    a, b, scale = next(iter(adapter.values()))
    assert a.shape[0] == 2 and b.shape[1] == 2 and scale == 2.0
    with pytest.raises(ValueError, match="missing"):
        load_adapter(tiny_dir / "adapters" / "nothing")


def test_every_cell_scored_and_reported(full_run):
    cells = sorted(p.stem for p in (full_run / "cells").glob("*.jsonl"))
    expected = ["greedy"] + [f"{m}-lambda{x:.3f}" for m in ("args", "rs", "mod", "ric") for x in (0, 0.5, 1)]
    assert cells == sorted(expected)
    for name in expected:
        records = read_jsonl(full_run / "cells" / f"{name}.jsonl")
        assert [r["id"] for r in records] == ["p0", "p1", "p2"]
        for r in records:
            for field in ("prompt", "result", "response", "elapsed", "method", "reward", "reward_relevance",
                          "coherence", "vader", "minilm_positivity", "tfidf_relevance", "harmlessness", "lambda"):
                assert field in r, (name, field)
            assert r["response"] == r["prompt"] + r["result"] and r["num_tokens"] <= 5
            assert ("<rm1>" in r["prompt"]) == name.startswith("ric")
    report = json.loads((full_run / "pareto.json").read_text())
    assert len(report["cells"]) == len(expected)
    for space, h in report["hypervolume"].items():
        x, y = h["axes"]
        assert h["reference"] == [min(c[x][0] for c in report["cells"]), min(c[y][0] for c in report["cells"])]
        assert set(h["hypervolume"]) == {"greedy", "args", "rs", "mod", "ric"}
        assert all(v >= 0 for v in h["hypervolume"].values())
    assert set(report["costs"]) == {"greedy", "args", "rs", "mod", "ric"}
    assert report["costs"]["mod"]["weights_mb"] == pytest.approx(2 * report["costs"]["rs"]["weights_mb"])
    assert (full_run / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Hypervolume" in (full_run / "pareto.md").read_text()


def test_methods_agree_where_they_must(full_run):
    """At lambda = 1 (0) Rewarded Soups and MOD are both the positivity (relevance) policy alone; the soup
    at the ends carries one adapter, so the two decode the same tokens. ARGS' cells at the ends use one reward."""
    cell = lambda name: read_jsonl(full_run / "cells" / f"{name}.jsonl")  # noqa: E731
    for lam in ("0.000", "1.000"):
        assert [r["result"] for r in cell(f"rs-lambda{lam}")] == [r["result"] for r in cell(f"mod-lambda{lam}")]
    assert cell("args-lambda1.000")[0]["options"]["w"] == [1.5, 0.0]
    # the policies differ from the base policy: the adapters change what is decoded somewhere
    assert any(cell(f"rs-lambda{lam}") != cell("greedy") for lam in ("0.000", "0.500", "1.000"))


def test_a_finished_run_is_never_recomputed(tiny_dir, full_run, monkeypatch):
    before = {p.name: p.read_text() for p in (full_run / "cells").glob("*.jsonl")}

    def refuse(*a, **kw):
        raise AssertionError("a finished cell was decoded again")
    monkeypatch.setattr(pareto.ParetoEvaluation, "decode_batch", refuse)
    monkeypatch.setattr(pareto.ParetoEvaluation, "calibrate", lambda self, path: json.loads(path.read_text()))
    assert run_pareto(argv(tiny_dir, full_run)) == 0
    assert {p.name: p.read_text() for p in (full_run / "cells").glob("*.jsonl")} == before


def test_a_cut_run_resumes_to_the_same_cells(tiny_dir, full_run, tmp_path, monkeypatch):
    calls, real = [], pareto.ParetoEvaluation.decode_batch

    def cut(self, *a, **kw):
        calls.append(1)
        if len(calls) == 12:   # in the middle of a cell (two batches per cell)
            raise KeyboardInterrupt
        return real(self, *a, **kw)
    monkeypatch.setattr(pareto.ParetoEvaluation, "decode_batch", cut)
    with pytest.raises(KeyboardInterrupt):
        run_pareto(argv(tiny_dir, tmp_path, methods="greedy,args,rs,mod"))
    assert list((tmp_path / ".partial").glob("*/part-*.jsonl"))    # the cut cell's finished batch is kept
    monkeypatch.setattr(pareto.ParetoEvaluation, "decode_batch", real)
    run_pareto(argv(tiny_dir, tmp_path, methods="greedy,args,rs,mod"))
    for path in (tmp_path / "cells").glob("*.jsonl"):
        assert without_time(read_jsonl(path)) == without_time(read_jsonl(full_run / "cells" / path.name)), path.name
    assert not (tmp_path / ".partial").exists()


def test_another_setup_in_the_same_folder_is_refused(tiny_dir, full_run):
    with pytest.raises(ValueError, match="--out-dir .* another setup"):
        run_pareto(argv(tiny_dir, full_run, k=2))


@pytest.mark.parametrize("extra, message", [
    ({"methods": "args,soups"}, "--methods must be a comma-separated subset"),
    ({"adapters": "/nonexistent"}, "--adapters /nonexistent: positivity/adapter_config.json is missing"),
])
def test_bad_input_fails_before_models_load(tiny_dir, tmp_path, monkeypatch, extra, message):
    monkeypatch.setattr(pareto.Evaluation, "__init__", lambda *a: pytest.fail("models loaded before the check"))
    with pytest.raises(ValueError, match=message):
        run_pareto(argv(tiny_dir, tmp_path, **extra))


def test_one_reward_path_without_the_other_is_refused(tiny_dir, tmp_path):
    args = argv(tiny_dir, tmp_path)
    args.relevance_reward_model = None
    with pytest.raises(ValueError, match="both --reward-model and --relevance-reward-model"):
        run_pareto(args)


def test_hypervolume_bootstrap_is_paired_and_centred():
    """Two methods with the same per-prompt values have identical bootstrap hypervolumes (paired draws),
    and a method dominating the other in every prompt is larger in every resample."""
    cells, per_prompt = [], {}
    g = torch.Generator().manual_seed(0)
    base = {m: torch.rand(20, generator=g).tolist() for m in pareto.MEASURES}
    for method, shift in (("a", 0.0), ("b", 0.0), ("c", 0.5)):
        for lam in (0.0, 1.0):
            name = f"{method}-lambda{lam:.3f}"
            values = {m: [v + shift + lam * (m in ("minilm_positivity", "vader", "reward")) for v in base[m]]
                      for m in pareto.MEASURES}
            per_prompt[name] = values
            cells.append({"cell": name, "method": method, "lambda": lam,
                          **{m: metrics.mean_se(v) for m, v in values.items()}})
    hv = pareto.hypervolumes(cells, per_prompt, resamples=200)
    for h in hv.values():
        assert h["hypervolume"]["a"] == h["hypervolume"]["b"]
        assert h["share_of_resamples_larger"]["a > b"] == 0.0 == h["share_of_resamples_larger"]["b > a"]
        assert h["share_of_resamples_larger"]["c > a"] == 1.0
        lo, hi = h["interval_95"]["c"]
        assert lo <= h["hypervolume"]["c"] <= hi


def test_torchrun_two_processes_write_the_cells_one_process_writes(tiny_dir, full_run, tmp_path):
    run_processes(["pareto", *argv_list(tiny_dir, tmp_path, methods="greedy,args,ric", threads=1)], 2, tmp_path)
    cells = sorted(p.name for p in (tmp_path / "cells").glob("*.jsonl"))
    assert len(cells) == 7
    for name in cells:   # the same tokens; scores within float noise (1 thread here, 2 in the fixture's run)
        got, want = read_jsonl(tmp_path / "cells" / name), read_jsonl(full_run / "cells" / name)
        assert [r["result"] for r in got] == [r["result"] for r in want], name
        for a, b in zip(got, want):
            for key, value in b.items():
                if isinstance(value, float) and key != "elapsed":
                    assert a[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (name, key)
    assert json.loads((tmp_path / "pareto.json").read_text())["machine"]["processes"] == 2
    assert not (tmp_path / ".partial").exists()


def test_default_adapter_folder_is_in_the_cache_not_the_working_directory(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ARGS_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    args = argv(tiny_dir, tmp_path / "out")
    args.adapters = None
    monkeypatch.setattr(pareto.Evaluation, "__init__", lambda *a: pytest.fail("models loaded before the check"))
    with pytest.raises(ValueError, match=re.escape(f"--adapters {tmp_path / 'cache' / 'adapters'} (the default): "
                                                   "positivity/adapter_config.json is missing")):
        run_pareto(args)
