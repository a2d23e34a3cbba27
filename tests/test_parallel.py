"""Data-parallel runs (torchrun, gloo on CPU) and runs that lose nothing (args_fast.parallel).

A run's files must not depend on how many processes made it, nor on whether it was cut and restarted:
compared here field by field, all but the measured times (``elapsed``, ``seconds``) and the machine
description, which no two runs share."""
import json
import os
import signal
import subprocess
import time

import pytest
import torch

import args_fast
from args_fast.integrations import parallel
from args_fast.cli import main
from args_fast.evaluation import run as eval_run
from args_fast.cli.eval import add_eval_arguments
from args_fast.integrations.run_files import read_jsonl
from args_fast.evaluation.run import run_eval
from processes import process_command, run_processes
from tiny_models import make_chat_tokenizer, make_pair, padded_prompts, save_models

TIMES = {"elapsed", "seconds"}
METHODS = "greedy,top-k,args-greedy,args-stochastic"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = save_models(tmp_path_factory.mktemp("models"), make_chat_tokenizer())
    prompts = root / "prompts.jsonl"
    with open(prompts, "w") as f:
        for i, text in enumerate(["How was your day today?", "Tell me about dogs.", "Any plans?", "Hi there",
                                  "What is your favourite colour and why?"]):
            f.write(json.dumps({"id": f"p{i}", "prompt": text}) + "\n")
    return root


def eval_argv(tiny_dir, out, *extra):
    return ["--policy", str(tiny_dir / "policy"), "--reward-model", str(tiny_dir / "reward"), "--prompts",
            str(tiny_dir / "prompts.jsonl"), "--out-dir", str(out), "--batch-size", "2", "--num-prompts", "5",
            "--max-new-tokens", "6", "--k", "4", "--w", "2.0", "--methods", METHODS, *extra]


def without_times(value):
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in TIMES and not k.startswith("elapsed")}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def results_of(out):
    """Every result file of an eval run, parsed, times and machine left out."""
    files = {p.name: [without_times(r) for r in read_jsonl(p)] for p in sorted(out.glob("*.jsonl"))}
    summary = json.loads((out / "summary.json").read_text())
    for key in ("machine", "command"):
        summary.pop(key)
    files["summary.json"] = without_times(summary)
    return files


# --------------------------------------------------------------------------------------- the pieces
def test_assign_deals_every_batch_once_balanced_and_deterministic():
    costs = [5, 1, 9, 3, 3, 7, 2, 8]
    for size in (1, 2, 3, 4, 8, 11):
        shares = parallel.assign(costs, size)
        assert sorted(j for share in shares for j in share) == list(range(len(costs)))
        assert shares == parallel.assign(costs, size) and all(share == sorted(share) for share in shares)
        loads = [sum(costs[j] for j in share) for share in shares]
        assert max(loads) - min(loads) <= max(costs)
    assert parallel.assign(costs, 1) == [list(range(len(costs)))]


def test_prompt_seed_depends_on_the_seed_and_the_index_only():
    seeds = {parallel.prompt_seed(s, i) for s in range(4) for i in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert parallel.prompt_seed(3, 17) == parallel.prompt_seed(3, 17)


@pytest.mark.parametrize("backend", ["reference", "hf", "static"])
def test_per_row_generators_make_a_rows_draws_its_own(backend):
    """With one generator per row, a row's tokens are those it gets decoded alone with that generator."""
    policy, reward = make_pair("llama", 0, peaked="weights")
    lengths = [5, 2, 7]
    ids, mask = padded_prompts(lengths, seed=1)
    decoder = args_fast.ARGSDecoder(policy, reward, k=4, w=1.5, mode="stochastic", temperature=1.0,
                                    eos_token_id=[], pad_token_id=0, backend=backend)
    batch = decoder.generate(ids, mask, max_new_tokens=6, generator=parallel.prompt_generators(0, [10, 11, 12]))
    for b, n in enumerate(lengths):
        alone = decoder.generate(ids[b:b + 1, -n:], mask[b:b + 1, -n:], max_new_tokens=6,
                                 generator=parallel.prompt_generators(0, [10 + b]))
        assert torch.equal(batch.sequences[b, ids.shape[1]:], alone.sequences[0, n:])
        torch.testing.assert_close(batch.rewards[b], alone.rewards[0], rtol=0, atol=1e-4)
    other = decoder.generate(ids, mask, max_new_tokens=6, generator=parallel.prompt_generators(1, [10, 11, 12]))
    assert not torch.equal(other.sequences, batch.sequences)   # the seed matters
    with pytest.raises(TypeError, match=r"one torch.Generator per batch row \(3\), got 2 items"):
        decoder.generate(ids, mask, generator=parallel.prompt_generators(0, [1, 2]))


def saved(batch, records=(), key=None, check=None):
    return {"batch": batch, "key": key if key is not None else [f"p{batch}"], "check": check or {}, "records": list(records)}


def test_a_torn_last_line_is_dropped_and_the_owner_file_repaired(tmp_path):
    own, other = tmp_path / "part-0.jsonl", tmp_path / "part-1.jsonl"
    parallel.append_line(own, saved(0, [{"r": 1}]))
    parallel.append_line(other, saved(1, [{"r": 2}]))
    with open(own, "a") as f:
        f.write('{"batch": 2, "reco')
    with open(other, "a") as f:
        f.write('{"batch": 3}')   # whole JSON, but no newline: the write did not finish
    done = parallel.read_parts(tmp_path, repair_own=own)
    assert sorted(done) == [0, 1]
    assert own.read_text() == json.dumps(saved(0, [{"r": 1}])) + "\n"     # repaired: appends start clean
    assert other.read_text().endswith('{"batch": 3}')                  # not ours: left alone
    with open(own, "a") as f:
        f.write("not json\n")
    parallel.append_line(own, saved(4))
    with pytest.raises(ValueError, match=f"^{own}: line 2 is not JSON: the saved partial results are corrupt; "
                                         f"delete {own} to run its batches again$"):
        parallel.read_parts(tmp_path)


# --------------------------------------------------------------------------------------- eval, cut and resumed
def test_an_interrupted_eval_resumes_to_the_same_files(tiny_dir, tmp_path, monkeypatch, capsys):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run_eval(add_eval_arguments(__import__("argparse").ArgumentParser()).parse_args(
        eval_argv(tiny_dir, whole))) == 0
    real, calls = eval_run.Evaluation.generate_batch, []

    def dies_on_the_fifth_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:    # greedy's 3 batches done, then one of top-k's
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)
    monkeypatch.setattr(eval_run.Evaluation, "generate_batch", dies_on_the_fifth_batch)
    with pytest.raises(SystemExit) as exc:
        main(["eval", *eval_argv(tiny_dir, cut)])
    assert exc.value.code == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"args-fast eval: interrupted; saved prompts done: greedy 5/5, top-k 2/5 in {cut / '.partial'}; "
                    "run the same command again to finish the rest")
    assert not (cut / "top-k.jsonl").exists() and (cut / "greedy.jsonl").exists()
    # a crash in the middle of a write leaves a torn line behind
    with open(cut / ".partial" / "top-k" / "part-0.jsonl", "a") as f:
        f.write('{"batch": 1, "key": ["p2", "p3"], "records": [{"id": "p2", "res')
    monkeypatch.setattr(eval_run.Evaluation, "generate_batch", real)
    calls.clear()
    counted = []
    monkeypatch.setattr(eval_run.Evaluation, "generate_batch",
                        lambda self, *a, **kw: counted.append(1) or real(self, *a, **kw))
    assert main(["eval", *eval_argv(tiny_dir, cut)]) == 0
    assert len(counted) == 4 * 3 - 4      # only what had not finished ran again
    err = capsys.readouterr().err
    assert "greedy: resuming, 5 of 5 prompts already done" in err and "top-k: resuming, 2 of 5" in err
    assert "dropped a torn last line" in err
    assert results_of(cut) == results_of(whole)
    assert not (cut / ".partial").exists()


def test_unfinished_work_of_other_settings_is_not_reused(tiny_dir, tmp_path, monkeypatch):
    real, calls = eval_run.Evaluation.generate_batch, []

    def dies_on_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)
    monkeypatch.setattr(eval_run.Evaluation, "generate_batch", dies_on_the_second_batch)
    with pytest.raises(SystemExit):
        main(["eval", *eval_argv(tiny_dir, tmp_path, "--seed", "1")])
    monkeypatch.setattr(eval_run.Evaluation, "generate_batch", real)
    fresh = tmp_path / "fresh"
    main(["eval", *eval_argv(tiny_dir, tmp_path)])
    main(["eval", *eval_argv(tiny_dir, fresh)])
    assert results_of(tmp_path) == results_of(fresh)


# --------------------------------------------------------------------------------------- real processes
def kill_after_first_batches(argv, nproc, tmp_path, part_dir):
    """Start the command and SIGKILL all its processes (no cleanup runs) once a batch is on disk."""
    cmd, env = process_command(argv, nproc, tmp_path)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while not any(p.stat().st_size for p in part_dir.glob("part-*.jsonl")) if part_dir.is_dir() else True:
        assert proc.poll() is None and time.monotonic() < deadline, "finished or hung before the first batch"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_torchrun_two_processes_write_what_one_process_writes(tiny_dir, tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    a = run_processes(["eval", *eval_argv(tiny_dir, one, "--threads", "1")], 1, tmp_path)
    b = run_processes(["eval", *eval_argv(tiny_dir, two, "--threads", "1")], 2, tmp_path)
    assert results_of(two) == results_of(one)
    # killed (SIGKILL, both ranks) once top-k has a batch on disk, then run again: the same files
    kill_after_first_batches(["eval", *eval_argv(tiny_dir, killed, "--threads", "1")], 2, tmp_path,
                             killed / ".partial" / "top-k")
    assert not (killed / "summary.json").exists()
    c = run_processes(["eval", *eval_argv(tiny_dir, killed, "--threads", "1")], 2, tmp_path)
    assert "greedy: resuming, 5 of 5 prompts already done" in c.stderr
    assert results_of(killed) == results_of(one)
    assert json.loads((two / "summary.json").read_text())["machine"]["processes"] == 2
    # the same table, printed once (by rank 0), but for the times and the machine line
    strip = lambda text: [line.rsplit("|", 2)[0] for line in text.splitlines() if line.startswith("| ")]
    assert strip(b.stdout) == strip(a.stdout) and b.stdout.count("# ARGS evaluation") == 1
    assert not (two / ".partial").exists()


def test_torchrun_generate_output_matches_one_process(tiny_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello there\nhow are you\nwhat a day\nthe cat sat\nsing a song\n")
    argv = lambda out: ["generate", "--policy", str(tiny_dir / "policy"), "--reward-model", str(tiny_dir / "reward"),
                        "--prompts-file", str(prompts), "--k", "4", "--w", "2.0", "--mode", "stochastic",
                        "--max-new-tokens", "5", "--batch-size", "2", "--output", str(out)]
    a = run_processes(argv(tmp_path / "one.jsonl"), 1, tmp_path)
    b = run_processes(argv(tmp_path / "two.jsonl"), 2, tmp_path)
    records = [without_times(r) for r in read_jsonl(tmp_path / "one.jsonl")]
    assert [(r["index"], r["method"]) for r in records] == [(i, m) for i in range(5)
                                                            for m in ("greedy", "args-stochastic")]
    assert [without_times(r) for r in read_jsonl(tmp_path / "two.jsonl")] == records
    body = lambda text: text.split("\n\n")[:-1]   # every prompt's block, not the timing lines
    assert body(b.stdout) == body(a.stdout) and b.stdout.count("=== prompt 1:") == 1
