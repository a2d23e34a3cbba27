"""The command line's conventional flags: --version, --dtype, model ids, --system-prompt and
--messages-file, --stream, --baseline, --quiet / TQDM_DISABLE, ``-`` for stdin, --backend without the
old names in --help, the one record schema, and user errors (one line, exit 2) against bugs (a traceback)."""
import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from args_fast import __version__
from args_fast.cli import build_parser, main
from args_fast.cli import generate as cli_generate
from args_fast.decoding.inputs import encode_prompts
from args_fast.engine.backends.registry import ALIASES, BACKENDS
from args_fast.integrations.run_files import RECORD_FIELDS, make_record, read_jsonl
from tiny_models import make_chat_tokenizer, save_models

SMALL = ["--max-new-tokens", "3", "--k", "3"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("models"), make_chat_tokenizer())


def models(saved):
    return ["--policy", str(saved / "policy"), "--reward-model", str(saved / "reward")]


def one_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err.strip().splitlines()[-1]


# --------------------------------------------------------------------------------------- --version
def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"args-fast {__version__}\n"


# --------------------------------------------------------------------------------------- --dtype
def test_dtype_loads_the_models_in_it(saved):
    from args_fast.loading import load_user_models
    loaded = load_user_models(str(saved / "policy"), str(saved / "reward"), dtype=torch.bfloat16, policy_device="cpu")
    assert {p.dtype for p in loaded.policy.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in loaded.reward.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("command", ["generate", "eval", "sweep", "pareto"])
def test_every_model_command_takes_dtype(command):
    extra = ["--prompt", "x"] if command == "generate" else []
    assert build_parser().parse_args([command, *extra]).dtype == "float32"
    assert build_parser().parse_args([command, *extra, "--dtype", "bfloat16"]).dtype == "bfloat16"


def test_generate_in_bfloat16(saved, capsys, monkeypatch):
    import args_fast.loading as loading
    seen = []
    load = loading.load_models
    monkeypatch.setattr(loading, "load_models", lambda *a, **kw: (seen.append(kw["dtype"]), load(*a, **kw))[1])
    assert main(["generate", *models(saved), "--prompt", "hi", *SMALL, "--dtype", "bfloat16", "--quiet"]) == 0
    assert seen == [torch.bfloat16]
    assert "--- ARGS-greedy (k=3, w=1.0): reward" in capsys.readouterr().out


# --------------------------------------------------------------------------------------- model ids
def test_a_model_id_is_not_refused_as_a_missing_folder():
    from args_fast.loading import check_model_dir
    check_model_dir("--policy", "HuggingFaceTB/SmolLM2-135M-Instruct")   # an id: checked when it loads


@pytest.mark.parametrize("path, says", [("./nope", "no such directory"), ("~/surely/not/here", "no such directory"),
                                        ("bad id with spaces", "not a Hugging Face model id")])
def test_paths_that_look_local_keep_their_errors(path, says, capsys):
    err = one_error(capsys, ["generate", "--policy", path, "--prompt", "hi"])
    assert err.startswith(f"args-fast generate: error: --policy {path}: ") and says in err


def test_tilde_is_expanded(saved, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(saved))
    assert main(["generate", "--policy=~/policy", "--reward-model=~/reward", "--prompt", "hi", *SMALL, "-q"]) == 0


def test_offline_miss_is_one_line_naming_the_flag(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-m", "args_fast", "generate", "--policy", "nobody/no-such-model",
                          "--prompt", "hi", "--quiet"], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr
    assert line.startswith("args-fast generate: error: --policy nobody/no-such-model: not a local folder")
    assert "HF_HUB_OFFLINE" in line


# --------------------------------------------------------------------------------------- chat inputs
def test_encode_prompts_takes_conversations_and_a_system_prompt():
    tok = make_chat_tokenizer()
    plain, _ = encode_prompts(tok, ["hi"])   # the old call still works
    assert tok.decode(plain[0]).endswith("hi")
    ids, mask = encode_prompts(tok, ["hi"], chat_template=True, system_prompt="be kind")
    text = tok.decode(ids[0][mask[0].bool()])
    assert text.index("be kind") < text.index("hi") and text.endswith("assistant\n")
    talk = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
            {"role": "user", "content": "three"}]
    ids, mask = encode_prompts(tok, [talk, "solo"], chat_template=True)
    text = tok.decode(ids[0][mask[0].bool()])
    assert text.index("one") < text.index("two") < text.index("three")
    with pytest.raises(ValueError, match="chat_template=True"):
        encode_prompts(tok, [talk])
    with pytest.raises(ValueError, match="its own system message"):
        encode_prompts(tok, [[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]],
                       chat_template=True, system_prompt="t")


@pytest.mark.parametrize("line, says", [
    ("not json", "line 2 is not JSON"),
    ('{"msgs": []}', 'line 2 must be a JSON object with a non-empty list "messages"'),
    ('{"messages": []}', 'line 2 must be a JSON object with a non-empty list "messages"'),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "line 2, message 1: role must be one of system, user"),
    ('{"messages": [{"role": "user", "content": 3}]}', 'line 2, message 1: "content" must be a string'),
    ('{"messages": [{"role": "user"}]}', 'line 2, message 1: must be an object with exactly "role" and "content"'),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, '
     '{"role": "user", "content": "c"}]}', "line 2, message 2: a system message may only come first"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
     "line 2: the last message must be the user's"),
])
def test_messages_file_errors_name_file_and_line(line, says, tmp_path, capsys):
    path = tmp_path / "chats.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "fine"}]}\n' + line + "\n")
    err = one_error(capsys, ["generate", "--messages-file", str(path)])
    assert err.startswith(f"args-fast generate: error: --messages-file {path}: ") and says in err, err


def test_system_prompt_needs_the_chat_template(capsys):
    err = one_error(capsys, ["generate", "--prompt", "hi", "--system-prompt", "be kind", "--chat-template", "off"])
    assert err == "args-fast generate: error: --system-prompt needs the chat template: drop --chat-template off"


def test_system_prompt_and_a_conversation_with_its_own(tmp_path, capsys):
    path = tmp_path / "chats.jsonl"
    path.write_text('{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}\n')
    err = one_error(capsys, ["generate", "--messages-file", str(path), "--system-prompt", "t"])
    assert "--system-prompt: conversation 1 of --messages-file" in err


def test_generate_multi_turn_with_a_system_prompt(saved, tmp_path, capsys):
    chats = tmp_path / "chats.jsonl"
    talk = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hey you"},
            {"role": "user", "content": "and now?"}]
    chats.write_text(json.dumps({"messages": talk}) + "\n")
    out_file = tmp_path / "out.jsonl"
    assert main(["generate", *models(saved), "--messages-file", str(chats), "--prompt", "plain",
                 "--system-prompt", "be brief", *SMALL, "--output", str(out_file), "-q"]) == 0
    out = capsys.readouterr().out
    assert "=== prompt 1: plain" in out and "=== prompt 2: and now?" in out
    records = read_jsonl(out_file)
    conversation = [r for r in records if r["index"] == 1]
    assert [r["method"] for r in conversation] == ["greedy", "args-greedy"]
    for r in conversation:
        assert r["messages"] == talk and r["system_prompt"] == "be brief"
        p = r["prompt"]
        assert p.index("be brief") < p.index("hello") < p.index("hey you") < p.index("and now?")
    assert records[0]["user_message"] == "plain" and "be brief" in records[0]["prompt"]


# --------------------------------------------------------------------------------------- stdin
def fake_stdin(monkeypatch, data: bytes):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_prompts_file_dash_reads_stdin(monkeypatch):
    fake_stdin(monkeypatch, "\ufeffone\r\n\r\ntwo\n".encode())
    args = build_parser().parse_args(["generate", "--prompts-file", "-"])
    assert cli_generate._read_prompts(args) == ["one", "two"]


def test_messages_file_dash_reads_stdin(monkeypatch):
    fake_stdin(monkeypatch, b'{"messages": [{"role": "user", "content": "hey"}]}\n')
    args = build_parser().parse_args(["generate", "--messages-file", "-"])
    assert cli_generate._read_prompts(args) == [[{"role": "user", "content": "hey"}]]


def test_stdin_read_once(capsys):
    err = one_error(capsys, ["generate", "--prompts-file", "-", "--messages-file", "-"])
    assert "only one of them can read standard input" in err


def test_stdin_errors_name_the_flag(monkeypatch, capsys):
    fake_stdin(monkeypatch, b"caf\xe9\n")
    err = one_error(capsys, ["generate", "--prompts-file", "-"])
    assert err == "args-fast generate: error: --prompts-file -: not UTF-8 text: byte 0xe9 at offset 3 (line 1)"


# --------------------------------------------------------------------------------------- --baseline, --stream
def test_baseline_none_runs_args_alone(saved, capsys, monkeypatch, tmp_path):
    from args_fast.decoding.decoder import ARGSDecoder
    built = []
    init = ARGSDecoder.__init__
    monkeypatch.setattr(ARGSDecoder, "__init__",
                        lambda self, *a, **kw: (built.append(kw["k"]), init(self, *a, **kw))[1])
    out_file = tmp_path / "out.jsonl"
    assert main(["generate", *models(saved), "--prompt", "hi", *SMALL, "--baseline", "none", "--output",
                 str(out_file)]) == 0
    out = capsys.readouterr().out
    assert built == [3] and "--- greedy" not in out and "--- ARGS-greedy (k=3, w=1.0): reward" in out
    assert [r["method"] for r in read_jsonl(out_file)] == ["args-greedy"]


def test_stream_prints_the_same_text_as_it_comes(saved, capsys, tmp_path, monkeypatch):
    argv = ["generate", *models(saved), "--prompt", "hi", "--prompt", "yo", "--max-new-tokens", "5", "--k", "3"]
    assert main(argv + ["--output", str(tmp_path / "plain.jsonl"), "-q"]) == 0
    capsys.readouterr()
    writes = []
    call = cli_generate._Stream.__call__

    def spy(self, tokens):   # what stdout holds after each token
        call(self, tokens)
        writes.append(self.shown)
    monkeypatch.setattr(cli_generate._Stream, "__call__", spy)
    assert main(argv + ["--stream", "--output", str(tmp_path / "streamed.jsonl")]) == 0
    out, err = capsys.readouterr()
    plain, streamed = read_jsonl(tmp_path / "plain.jsonl"), read_jsonl(tmp_path / "streamed.jsonl")
    assert [r["result"] for r in streamed] == [r["result"] for r in plain]   # the same tokens
    for r in streamed:
        assert f"--- {'greedy' if r['method'] == 'greedy' else 'ARGS-greedy (k=3, w=1.0)'}:\n{r['result']}\n" in out
    assert len(writes) >= 4 and any(0 < len(w) < len(max(writes, key=len)) for w in writes)   # grew step by step
    assert out.count("=== prompt") == 2
    assert "backend: " in err and "tok/s" not in err and "prompt/s" not in err   # no bar cuts into the text


def test_stream_refuses_batches(capsys):
    err = one_error(capsys, ["generate", "--prompt", "hi", "--stream", "--batch-size", "2"])
    assert err == ("args-fast generate: error: --stream prints one prompt at a time: give --batch-size 1 or leave it "
                   "out, not 2")


def test_stream_holds_back_half_characters():
    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return {1: "a", 2: "a\ufffd", 3: "a\u00e9"}[len(ids)]
    shown = []
    stream = cli_generate._Stream(Tok(), [0])
    for t in (5, 6, 7, 0, 9):
        stream(torch.tensor([t]))
        shown.append(stream.shown)
    assert shown == ["a", "a", "a\u00e9", "a\u00e9", "a\u00e9"]


# --------------------------------------------------------------------------------------- --quiet, TQDM_DISABLE
def test_quiet_prints_nothing_on_stderr(saved, capsys):
    assert main(["generate", *models(saved), "--prompt", "hi", *SMALL, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "=== prompt 1: hi" in captured.out


def test_tqdm_disable_switches_the_token_bars_off(saved, capsys, monkeypatch):
    assert main(["generate", *models(saved), "--prompt", "hi", *SMALL]) == 0
    err = capsys.readouterr().err
    assert "tok/s" in err and "backend: " in err    # the bars and the info lines by default
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert main(["generate", *models(saved), "--prompt", "hi", *SMALL]) == 0
    err = capsys.readouterr().err
    assert "tok/s" not in err and "it/s" not in err and "backend: " in err   # transformers' bars too


def test_tqdm_disable_switches_the_prompt_bars_off(monkeypatch):
    from args_fast.integrations import parallel
    monkeypatch.setenv("TQDM_DISABLE", "1")
    progress = parallel._Progress(parallel.world(), "k", 3, "x")
    assert progress.bar.disable
    progress.close()


# --------------------------------------------------------------------------------------- --backend
def test_backend_help_lists_current_names_only(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    offered = set(re.findall(r"--backend \{([^}]*)\}", text)[0].split(","))
    assert offered == {"auto", *BACKENDS} and not offered & set(ALIASES)
    assert build_parser().parse_args(["generate", "--backend", "torch"]).backend == "torch"   # still taken
    err = one_error(capsys, ["generate", "--prompt", "x", "--backend", "bogus"])
    assert err.endswith(f"--backend must be one of {', '.join(['auto', *BACKENDS])}, got 'bogus'")


def test_old_backend_name_still_runs_with_its_warning(saved, capsys):
    with pytest.warns(DeprecationWarning, match="backend='torch' is deprecated"):
        assert main(["generate", *models(saved), "--prompt", "hi", *SMALL, "--backend", "torch", "-q"]) == 0


# --------------------------------------------------------------------------------------- records
def test_make_record_fields():
    r = make_record(id="p0", index=4, method="greedy", options={}, prompt="P", result="R", elapsed=0.5,
                    num_tokens=3, stopped=True, extra=1)
    assert tuple(r)[:len(RECORD_FIELDS)] == RECORD_FIELDS and r["extra"] == 1
    assert r["response"] == "PR" and r["steps"] == 4 and r["reward"] is None
    with pytest.raises(TypeError):
        make_record(id=0, index=0, method="m", options={}, prompt="", result="", elapsed=0, num_tokens=0,
                    stopped=False, response="x")


def test_generate_output_has_the_record_schema(saved, tmp_path):
    out_file = tmp_path / "out.jsonl"
    assert main(["generate", *models(saved), "--prompt", "hi", "--prompt", "a longer prompt", "--max-new-tokens", "4",
                 "--k", "3", "--output", str(out_file), "-q"]) == 0
    records = read_jsonl(out_file)
    assert [(r["index"], r["method"]) for r in records] == [(0, "greedy"), (0, "args-greedy"), (1, "greedy"),
                                                            (1, "args-greedy")]
    for r in records:
        assert tuple(r)[:len(RECORD_FIELDS)] == RECORD_FIELDS
        assert r["response"] == r["prompt"] + r["result"] and r["prompt"].endswith("assistant\n")
        assert r["steps"] == r["num_tokens"] + r["stopped"] and r["num_tokens"] <= 4   # per row, not averaged
        assert r["elapsed"] > 0 and isinstance(r["reward"], float)
    assert records[1]["options"] == {"k": 3, "w": 1.0}


# --------------------------------------------------------------------------------------- user errors and bugs
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_on_a_cpu_machine_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr("args_fast.loading.load_models", lambda *a, **k: pytest.fail("loaded before the check"))
    err = one_error(capsys, ["generate", "--prompt", "hi", "--policy-device", "cuda"])
    assert err.startswith("args-fast generate: error: --policy-device cuda: ") and "use --policy-device cpu" in err


def test_device_index_beyond_the_devices(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    err = one_error(capsys, ["generate", "--prompt", "hi", "--policy-device", "cuda:3"])
    assert err == "args-fast generate: error: --policy-device cuda:3: there are 1 cuda device(s) here (indices 0 to 0)"


@pytest.mark.parametrize("error, says", [
    (ModuleNotFoundError("No module named 'gguf'", name="gguf"), "pip install gguf"),
    (ImportError("the default models need the gguf package: pip install gguf"), "pip install gguf"),
])
def test_missing_optional_package_is_one_line(error, says, capsys, monkeypatch):
    def missing(*args, **kwargs):
        raise error
    monkeypatch.setattr("args_fast.loading.load_models", missing)
    err = one_error(capsys, ["generate", "--prompt", "hi", "-q"])
    assert err.startswith("args-fast generate: error: ") and says in err


def test_missing_module_of_our_own_is_a_bug(monkeypatch):
    def broken(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'args_fast.nothing'", name="args_fast.nothing")
    monkeypatch.setattr("args_fast.loading.load_models", broken)
    with pytest.raises(ModuleNotFoundError):
        main(["generate", "--prompt", "hi", "-q"])


# --------------------------------------------------------------------------------------- eval and sweep
@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": text}) + "\n"
                            for i, text in enumerate(["How was your day?", "Any plans?"])))
    return path


def study_argv(saved, prompts_file, out, *extra):
    return [*models(saved), "--prompts", str(prompts_file), "--num-prompts", "2", "--offset", "0",
            "--max-new-tokens", "3", "--out-dir", str(out), *extra]


def test_eval_prints_the_backend_line_and_writes_the_record_schema(saved, prompts_file, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", *study_argv(saved, prompts_file, out, "--methods", "greedy,args-greedy,args-stochastic",
                                     "--k", "3")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("backend: ")]
    assert len(lines) == 1, err   # both ARGS methods run the same engine: said once
    for method in ("greedy", "args-greedy", "args-stochastic"):
        records = read_jsonl(out / f"{method}.jsonl")
        assert [(r["id"], r["index"], r["method"]) for r in records] == [("p0", 0, method), ("p1", 1, method)]
        for r in records:
            assert tuple(r)[:len(RECORD_FIELDS)] == RECORD_FIELDS
            assert r["steps"] == r["num_tokens"] + r["stopped"] and r["response"] == r["prompt"] + r["result"]
            assert isinstance(r["reward"], float) and r["user_message"] in r["prompt"]


def test_sweep_prints_the_backend_line_and_quiet_silences_it(saved, prompts_file, tmp_path, capsys):
    argv = ["sweep", *study_argv(saved, prompts_file, tmp_path / "sweep", "--ks", "2,3", "--ws", "0,1")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if line.startswith("backend: ")]) == 1, err
    assert "prompt/s" in err or "prompt" in err   # its progress bars
    assert main(argv + ["--quiet"]) == 0
    err = capsys.readouterr().err
    assert "backend: " not in err and "prompt/s" not in err and "it/s" not in err, err


@pytest.mark.parametrize("argv, flag", [(["--samples", "1"], "--samples"), (["--margin", "2"], "--margin"),
                                        (["--max-new-tokens", "300"], "--max-new-tokens"),
                                        (["--prefix-weight", "-1"], "--prefix-weight"), (["--top-k", "0"], "--top-k")])
def test_train_rm_ranges_are_one_line_before_any_work(argv, flag, capsys, monkeypatch):
    monkeypatch.setattr("args_fast.training.reward_heads.train_reward_model", lambda **kw: pytest.fail("ran"))
    err = one_error(capsys, ["train-rm", *argv])
    assert err.startswith(f"args-fast train-rm: error: argument {flag}: {flag} must be"), err


# --------------------------------------------------------------------------------------- --compile
@pytest.mark.parametrize("command", ["generate", "eval", "sweep", "pareto"])
def test_every_decoding_command_takes_compile(command):
    extra = ["--prompt", "x"] if command == "generate" else []
    assert build_parser().parse_args([command, *extra]).compile == "auto"
    assert build_parser().parse_args([command, *extra, "--compile", "off"]).compile == "off"


def test_compile_on_with_another_backend_is_one_line(saved, capsys):
    err = one_error(capsys, ["generate", *models(saved), "--prompt", "hi", *SMALL, "--backend", "hf",
                             "--compile", "on", "-q"])
    assert err.startswith("args-fast generate: error: compile=True applies to backend='auto'")


def test_compile_on_runs_the_compiled_step_and_says_what_it_cost(saved, capsys):
    assert main(["generate", *models(saved), "--prompt", "hi", *SMALL, "--compile", "on", "--baseline", "none"]) == 0
    err = capsys.readouterr().err
    assert "backend: static-compiled (the whole step as one torch.compile graph" in err
    assert re.search(r"compiled the decoding step \(greedy, batch 1, 256 cache slots\) in its first call: [\d.]+ s", err)
