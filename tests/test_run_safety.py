"""Resumable runs that never reuse the wrong work: saved batches are tied to the content of the models'
files (not their paths), a corrupt or inconsistent part file stops the run with one line naming it,
and one output is written by one run at a time (a lock); every request is checked before any method
decodes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from args_fast.cli import main
from args_fast.decoding.decoder import ARGSDecoder
from args_fast.evaluation import run as eval_run
from args_fast.integrations import parallel, run_files
from args_fast.integrations.run_files import read_jsonl
from args_fast.loading import fingerprint, model_fingerprints
from tiny_models import make_chat_tokenizer, make_policy, make_reward, save_models

TIMES = {"elapsed", "seconds"}


@pytest.fixture
def models(tmp_path):
    """Tiny saved policy / reward model of this test's own (tests replace them)."""
    return save_models(tmp_path / "models", make_chat_tokenizer())


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("loaded models before checking the user's inputs")
    monkeypatch.setattr("args_fast.loading.load_models", refuse)


def error_line(capsys, argv, code=2) -> str:
    """``main(argv)`` ends with SystemExit(code); its last stderr line (no traceback anywhere)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return captured.err.strip().splitlines()[-1]


def without_times(record):
    if isinstance(record, dict):
        return {k: without_times(v) for k, v in record.items() if k not in TIMES}
    return record


def generate_argv(models, output, *extra):
    return ["generate", "--policy", str(models / "policy"), "--reward-model", str(models / "reward"),
            "--prompt", "hello there", "--prompt", "how are you", "--batch-size", "1", "--max-new-tokens", "3",
            "--k", "4", "--w", "3.0", "--output", str(output), *extra]


def count_decodes(monkeypatch, stop_at=None):
    """Count ARGSDecoder.generate calls (generate decodes twice per batch); Ctrl-C at call ``stop_at``."""
    real, calls = ARGSDecoder.generate, []

    def counted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)
    monkeypatch.setattr(ARGSDecoder, "generate", counted)
    return calls


def replace_reward(models, seed):
    shutil.rmtree(models / "reward")
    make_reward("llama", seed).save_pretrained(models / "reward")
    make_chat_tokenizer().save_pretrained(models / "reward")


# --------------------------------------------------------------------------------------- model identity
def test_fingerprint_follows_the_content_not_the_path_or_the_times(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    first = fingerprint(folder)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert fingerprint(copy) == first                       # same content elsewhere: the same model
    stat = (folder / "model.safetensors").stat()
    with open(folder / "model.safetensors", "r+b") as f:   # one byte, same size, same mtime
        f.write(b"\x01")
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint(folder) != first
    (copy / "extra.json").write_text("{}")                   # a new file counts too
    assert fingerprint(copy) != first
    assert set(model_fingerprints(policy=str(folder), reward_model=str(copy))) == {"policy", "reward_model"}


def test_generate_output_does_not_reuse_work_of_a_replaced_reward_model(models, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.jsonl"
    calls = count_decodes(monkeypatch, stop_at=3)          # batch 0 done (2 decodes), then Ctrl-C
    assert error_line(capsys, generate_argv(models, out), code=130).startswith("args-fast generate: interrupted")
    assert len(read_jsonl(next((tmp_path / "out.jsonl.partial").glob("part-*.jsonl")))) == 1
    replace_reward(models, seed=7)                         # another model at the same path
    calls = count_decodes(monkeypatch)
    assert main(generate_argv(models, out)) == 0
    assert len(calls) == 4                                   # both batches decoded again, none reused
    assert "resuming" not in capsys.readouterr().err
    fresh = tmp_path / "fresh.jsonl"
    assert main(generate_argv(models, fresh)) == 0
    assert [without_times(r) for r in read_jsonl(out)] == [without_times(r) for r in read_jsonl(fresh)]


def test_generate_output_reuses_work_of_the_same_models_copied_elsewhere(models, tmp_path, monkeypatch, capsys):
    """The identity is the content: work saved under identical files is reused (not recomputed)."""
    out = tmp_path / "out.jsonl"
    count_decodes(monkeypatch, stop_at=3)
    error_line(capsys, generate_argv(models, out), code=130)
    for name in ("policy", "reward"):   # rewritten: new files, new times, same bytes
        shutil.copytree(models / name, tmp_path / name)
        shutil.rmtree(models / name)
        shutil.copytree(tmp_path / name, models / name)
    calls = count_decodes(monkeypatch)
    assert main(generate_argv(models, out)) == 0
    assert len(calls) == 2 and "resuming: 1 of 2 prompts already done" in capsys.readouterr().err


def eval_argv(models, prompts, out, *extra):
    return ["eval", "--policy", str(models / "policy"), "--reward-model", str(models / "reward"), "--prompts",
            str(prompts), "--out-dir", str(out), "--batch-size", "1", "--num-prompts", "2", "--max-new-tokens", "2",
            "--methods", "greedy", *extra]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(["Hi", "Dogs?"])))
    return path


def test_eval_does_not_reuse_work_of_a_replaced_reward_model(models, prompts, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    real, calls = eval_run.Evaluation.generate_batch, []

    def counted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)
    monkeypatch.setattr(eval_run.Evaluation, "generate_batch", counted)
    error_line(capsys, eval_argv(models, prompts, out), code=130)
    replace_reward(models, seed=8)
    calls.clear()
    monkeypatch.setattr(eval_run.Evaluation, "generate_batch", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    assert main(eval_argv(models, prompts, out)) == 0
    assert len(calls) == 2 and "resuming" not in capsys.readouterr().err
    assert main(eval_argv(models, prompts, tmp_path / "fresh")) == 0
    strip = lambda p: [{k: v for k, v in r.items() if k != "elapsed"} for r in read_jsonl(p / "greedy.jsonl")]
    assert strip(out) == strip(tmp_path / "fresh")


# --------------------------------------------------------------------------------------- saved batches
def entry(batch, records, key=None, check=None):
    return {"batch": batch, "key": key if key is not None else [f"k{batch}"], "check": check or {"s": 1},
            "records": records}


def batched_run(work_dir, validate=None):
    return parallel.BatchedRun([["k0"], ["k1"]], [1, 1], [1, 1], work_dir=work_dir, check={"s": 1},
                               w=parallel.World(), validate=validate)


@pytest.mark.parametrize("line, problem", [
    ("[1, 2]", "is not a saved batch (a JSON list, not an object)"),
    ('{"batch": 0, "key": ["k0"], "check": {}}', "is not a saved batch (no records)"),
    ('{"batch": "0", "key": ["k0"], "check": {}, "records": []}', "is not a saved batch (batch '0' is not a batch index)"),
    ('{"batch": -1, "key": ["k0"], "check": {}, "records": []}', "is not a saved batch (batch -1 is not a batch index)"),
    ('{"batch": 0, "key": ["k0"], "check": {}, "records": [1]}', "is not a saved batch (records is not a list of objects)"),
    ("\xff\xfe", "is not JSON"),
])
def test_a_malformed_line_stops_the_run_naming_the_file(line, problem, tmp_path):
    part = tmp_path / "part-0.jsonl"
    part.write_bytes(line.encode("latin-1") + b"\n" + json.dumps(entry(1, [{"r": 1}])).encode() + b"\n")
    with pytest.raises(ValueError) as err:
        batched_run(tmp_path)
    assert str(err.value) == (f"{part}: line 1 {problem}: the saved partial results are corrupt; delete {part} to "
                              "run its batches again")


def test_a_batch_with_missing_records_stops_the_run(tmp_path):
    part = tmp_path / "part-0.jsonl"
    parallel.append_line(part, entry(0, [{"r": 1}]))
    parallel.append_line(part, entry(1, []))
    with pytest.raises(ValueError, match=f"^{part}: line 2 holds 0 records for the 1 prompts of batch 1: the saved "
                                         "partial results are corrupt"):
        batched_run(tmp_path)


def test_a_batch_with_records_of_other_prompts_stops_the_run(tmp_path):
    part = tmp_path / "part-0.jsonl"
    parallel.append_line(part, entry(0, [{"id": "k1"}]))
    validate = lambda j, records: None if records[0]["id"] == f"k{j}" else "a record of another prompt"
    with pytest.raises(ValueError, match=f"^{part}: line 1 batch 0: a record of another prompt: the saved"):
        batched_run(tmp_path, validate)


def test_a_batch_saved_twice(tmp_path):
    """Twice alike (a copied file): reused; twice with different records: which is right is unknown, so
    the run stops naming both places."""
    a, b = tmp_path / "part-0.jsonl", tmp_path / "part-1.jsonl"
    parallel.append_line(a, entry(0, [{"r": 1}]))
    parallel.append_line(b, entry(0, [{"r": 1}]))
    assert batched_run(tmp_path).done == {0: [{"r": 1}]}
    parallel.append_line(b, entry(0, [{"r": 2}]))
    with pytest.raises(ValueError, match=f"^{a}: line 1 and {b}: line 2 both hold batch 0 of this run, with "
                                         f"different records: the saved partial results are corrupt; delete {b}"):
        batched_run(tmp_path)


def test_work_of_other_settings_in_another_part_file_does_not_hide_this_runs(tmp_path):
    """A batch saved under other settings (part-1, read last) and again under these (part-0): reused."""
    parallel.append_line(tmp_path / "part-0.jsonl", entry(0, [{"r": "this run"}]))
    parallel.append_line(tmp_path / "part-1.jsonl", entry(0, [{"r": "old"}], check={"s": 0}))
    assert batched_run(tmp_path).done == {0: [{"r": "this run"}]}


def test_generate_with_a_corrupt_part_file_is_one_line_naming_it(models, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.jsonl"
    count_decodes(monkeypatch, stop_at=3)
    error_line(capsys, generate_argv(models, out), code=130)
    part = next((tmp_path / "out.jsonl.partial").glob("part-*.jsonl"))
    saved = json.loads(part.read_text())
    saved["records"][0]["index"] = 1                          # a record of the other prompt
    part.write_text(json.dumps(saved) + "\n")
    calls = count_decodes(monkeypatch)
    err = error_line(capsys, generate_argv(models, out))
    assert err == (f"args-fast generate: error: {part}: line 1 batch 0: records of (prompt, method) [(1, 'greedy'), "
                   "(0, 'args-greedy')], not [(0, 'greedy'), (0, 'args-greedy')]: the saved partial results are "
                   f"corrupt; delete {part} to run its batches again")
    assert not calls
    part.write_text('{"batch": 0}\n' + json.dumps(saved) + "\n")
    err = error_line(capsys, generate_argv(models, out))
    assert err.startswith(f"args-fast generate: error: {part}: line 1 is not a saved batch (no key, check, records)")
    part.unlink()                                            # as the message says: its batches run again
    assert main(generate_argv(models, out)) == 0 and len(calls) == 4


# --------------------------------------------------------------------------------------- one run per output
def test_a_second_run_on_one_output_is_refused_in_one_line(models, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    lock = run_files.lock_run("--output", out, tmp_path / "out.jsonl.lock")   # another run, in this process
    try:
        err = error_line(capsys, generate_argv(models, out))
        assert err == (f"args-fast generate: error: --output {out}: another run is writing it (process {os.getpid()} "
                       f"holds {tmp_path / 'out.jsonl.lock'}); wait for it to end or give another --output")
        assert not (tmp_path / "out.jsonl.partial").exists()
    finally:
        lock.release()
    assert main(generate_argv(models, out)) == 0
    assert not (tmp_path / "out.jsonl.lock").exists()        # released and removed when the run ends


def test_eval_out_dir_held_by_another_run_is_refused_before_loading(tmp_path, capsys, no_model_loading):
    lock = run_files.lock_run("--out-dir", tmp_path, tmp_path / ".lock")
    try:
        err = error_line(capsys, ["eval", "--num-prompts", "1", "--out-dir", str(tmp_path)])
    finally:
        lock.release()
    assert err.startswith(f"args-fast eval: error: --out-dir {tmp_path}: another run is writing it (process ")


def test_the_lock_is_released_when_a_run_fails_or_is_interrupted(models, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.jsonl"
    count_decodes(monkeypatch, stop_at=1)
    error_line(capsys, generate_argv(models, out), code=130)
    count_decodes(monkeypatch)
    assert main(generate_argv(models, out)) == 0


HOLD = """
import sys, time
from pathlib import Path
from args_fast.integrations import run_files
run_files.lock_run("--output", sys.argv[1], Path(sys.argv[1] + ".lock"))
print("locked", flush=True)
time.sleep(600)
"""


def test_another_process_holding_the_output_then_killed(models, tmp_path, capsys):
    """A live process's lock refuses the run; once it is killed (-9: no cleanup, its lock file stays
    behind) the next run goes ahead."""
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    env.pop("WORLD_SIZE", None)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = error_line(capsys, generate_argv(models, out))
        assert err.startswith(f"args-fast generate: error: --output {out}: another run is writing it (process "
                              f"{holder.pid} holds ")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "out.jsonl.lock").exists()            # stale: left by the killed process
    assert main(generate_argv(models, out)) == 0


def test_two_generate_processes_on_one_output(models, tmp_path):
    """Two real processes started together: one writes the output, the other is refused in one line."""
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    argv = generate_argv(models, out, "--max-new-tokens", "24")
    procs = [subprocess.Popen([sys.executable, "-m", "args_fast", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = sorted(code for _, _, code in results)
    if codes == [0, 0]:   # the first finished before the second started loading: nothing overlapped
        pytest.skip("the runs did not overlap on this machine")
    assert codes == [0, 2]
    refused = next(err for _, err, code in results if code == 2)
    assert "Traceback" not in refused
    assert refused.strip().splitlines()[-1].startswith(f"args-fast generate: error: --output {out}: another run is "
                                                        "writing it (process ")
    assert len(read_jsonl(out)) == 4   # 2 prompts x (greedy, ARGS)


# --------------------------------------------------------------------------------------- --output paths
def test_output_in_a_folder_that_does_not_exist_yet_is_created(models, tmp_path):
    out = tmp_path / "new" / "folder" / "out.jsonl"
    assert main(generate_argv(models, out)) == 0
    assert len(read_jsonl(out)) == 4   # 2 prompts x (greedy, ARGS)


@pytest.mark.parametrize("where, message", [
    (lambda tmp: tmp, "is a directory (give a .jsonl file path)"),
    (lambda tmp: tmp / "file" / "out.jsonl", "exists and is not a directory"),
    (lambda tmp: tmp / "file" / "sub" / "out.jsonl", "cannot create it"),
])
def test_output_paths_that_cannot_be_written(where, message, tmp_path, capsys, no_model_loading):
    (tmp_path / "file").write_text("x")
    out = where(tmp_path)
    err = error_line(capsys, ["generate", "--prompt", "hi", "--output", str(out)])
    assert err.startswith("args-fast generate: error: --output ") and message in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the mode")
def test_output_in_a_read_only_folder(tmp_path, capsys, no_model_loading):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    err = error_line(capsys, ["generate", "--prompt", "hi", "--output", str(folder / "out.jsonl")])
    assert err == f"args-fast generate: error: --output {folder}: not writable"


# --------------------------------------------------------------------------------------- requests before decoding
def test_eval_checks_the_context_of_every_batch_before_any_method_runs(tmp_path, prompts, monkeypatch, capsys):
    """A policy of 32 positions: the prompts (up to 24 tokens) fit, the prompts + --max-new-tokens do not.
    Refused whole, before greedy runs and writes its file."""
    models = tmp_path / "small"
    tokenizer = make_chat_tokenizer()
    for name, model in (("policy", make_policy("llama", 91, context=32)), ("reward", make_reward("llama", 92))):
        model.save_pretrained(models / name)
        tokenizer.save_pretrained(models / name)
    monkeypatch.setattr(eval_run.Evaluation, "generate_batch", lambda *a, **kw: pytest.fail("decoded"))
    out = tmp_path / "out"
    argv = eval_argv(models, prompts, out, "--max-new-tokens", "20")
    argv[argv.index("--methods") + 1] = "greedy,args-greedy"
    err = error_line(capsys, argv)
    assert err.startswith("args-fast eval: error: --max-new-tokens 20: prompt (") and "exceeds the policy's context of 32 positions" in err
    assert not (out / "greedy.jsonl").exists()


def test_eval_checks_the_reward_models_context_too(tmp_path, prompts, monkeypatch, capsys):
    models = tmp_path / "small"
    tokenizer = make_chat_tokenizer()
    for name, model in (("policy", make_policy("llama", 91)), ("reward", make_reward("llama", 92, context=32))):
        model.save_pretrained(models / name)
        tokenizer.save_pretrained(models / name)
    monkeypatch.setattr(eval_run.Evaluation, "generate_batch", lambda *a, **kw: pytest.fail("decoded"))
    err = error_line(capsys, eval_argv(models, prompts, tmp_path / "out", "--max-new-tokens", "20"))
    assert "exceeds the reward model's context of 32 positions" in err


def test_a_store_that_is_a_file_is_one_line(models, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.partial").write_text("x")
    err = error_line(capsys, generate_argv(models, out))
    assert err == (f"args-fast generate: error: {tmp_path / 'out.jsonl.partial'}: the store of this run's finished "
                   "batches is a file, not a folder; move it away")


def test_sweep_cells_of_close_weights_do_not_share_a_name():
    """Two weights of the grid that print alike (%g) would share a cell file and its saved work."""
    from args_fast.evaluation.sweep import _w_name
    assert [_w_name(w) for w in (0.0, 1.0, 0.5, 1.5, -2.0, 1e-5)] == ["0", "1", "0.5", "1.5", "-2", "1e-05"]
    assert _w_name(0.1) != _w_name(0.10000000001) and float(_w_name(0.10000000001)) == 0.10000000001


@pytest.mark.parametrize("command", ["eval", "sweep"])
def test_threads_beyond_the_limit_is_one_line_naming_the_flag(command, tmp_path, capsys, no_model_loading):
    err = error_line(capsys, [command, "--threads", str(2**40), "--out-dir", str(tmp_path / "out")])
    assert err == f"args-fast {command}: error: --threads must be an integer in [1, 4096], got {2**40}"


@pytest.mark.parametrize("content, problem", [
    (b'{"id": 1}\n[1]\n', "line 2 is not a JSON object"),
    (b'{"id": 1}\n\n{"id": \n', "line 3 is not JSON (Expecting value)"),
    (b'{"id": "\xe9"}\n', "not UTF-8 text"),
])
def test_a_damaged_result_file_is_named(content, problem, tmp_path):
    path = tmp_path / "cell.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        read_jsonl(path)
    assert str(err.value) == f"{path}: {problem}"


def test_sweep_resume_computes_a_damaged_cell_again(models, prompts, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--policy", str(models / "policy"), "--reward-model", str(models / "reward"), "--prompts",
            str(prompts), "--out-dir", str(out), "--num-prompts", "2", "--offset", "0", "--max-new-tokens", "2",
            "--ws", "0,1", "--ks", "2", "--resume"]
    assert main(argv) == 0
    cell = out / "cells" / "args-greedy_k2_w1.jsonl"
    whole = [without_times(r) for r in read_jsonl(cell)]
    cell.write_text(cell.read_text()[:-20] + "\n")             # the last record cut short
    capsys.readouterr()
    assert main(argv) == 0
    assert f"note: not reusing args-greedy_k2_w1: {cell}: line 2 is not JSON" in capsys.readouterr().err
    assert [without_times(r) for r in read_jsonl(cell)] == whole


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_model_file_is_one_line_naming_the_flag(models, tmp_path, capsys, no_model_loading):
    weights = next((models / "reward").glob("*.safetensors"))
    weights.chmod(0)
    err = error_line(capsys, generate_argv(models, tmp_path / "out.jsonl"))
    assert err == f"args-fast generate: error: --reward-model {models / 'reward'}: cannot read {weights}: Permission denied"


def test_generate_checks_every_prompt_before_decoding_any(tmp_path, monkeypatch, capsys):
    """The second prompt (its own batch) does not fit the policy's 32 positions with --max-new-tokens:
    refused before the first is decoded or saved."""
    models = tmp_path / "small"
    tokenizer = make_chat_tokenizer()
    for name, model in (("policy", make_policy("llama", 91, context=32)), ("reward", make_reward("llama", 92))):
        model.save_pretrained(models / name)
        tokenizer.save_pretrained(models / name)
    monkeypatch.setattr(ARGSDecoder, "generate", lambda *a, **kw: pytest.fail("decoded"))
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--policy", str(models / "policy"), "--reward-model", str(models / "reward"),
            "--prompt", "hi", "--prompt", "a much longer prompt than the first", "--batch-size", "1",
            "--max-new-tokens", "8", "--output", str(out)]
    err = error_line(capsys, argv)
    assert err.startswith("args-fast generate: error: --max-new-tokens 8: prompt (")
    assert "exceeds the policy's context of 32" in err
    assert not (tmp_path / "out.jsonl.partial").exists()
