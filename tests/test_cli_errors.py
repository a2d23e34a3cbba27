"""Hardening of the command line: bad paths, files and option values end with one line naming the flag
(``args-fast <command>: error: ...``, exit 2, no traceback), checked before any model loads or any
decoding runs where possible; Ctrl-C ends every subcommand with one line and exit 130; ``--help``
shows every default; ``eval`` offers only the methods that can run here."""
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import args_fast.cli as cli
import args_fast.cli.generate as cli_generate
from args_fast.cli import main
from args_fast.evaluation import methods as eval_methods
from tiny_models import VOCAB, make_chat_tokenizer, save_models

BIN = Path(sys.executable).parent
COMMANDS = ("generate", "train-rm", "eval", "sweep")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny random policy / reward model (vocabulary VOCAB) with a chat tokenizer, saved."""
    return save_models(tmp_path_factory.mktemp("models"), make_chat_tokenizer())


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any model load fails the test: the error must come before it."""
    def refuse(*args, **kwargs):
        pytest.fail("loaded models before checking the user's inputs")
    monkeypatch.setattr("args_fast.loading.load_models", refuse)


def error_line(capsys, argv, code=2, loading=False) -> str:
    """Run ``main(argv)``, expect SystemExit(code) and return stderr, checked to be one line (after the
    progress line "loading models ..." with ``loading``, for errors found once the models are loaded)."""
    try:
        with pytest.raises(SystemExit) as exc:
            main(argv)
    except KeyboardInterrupt:   # left to propagate it would end the pytest session
        pytest.fail("KeyboardInterrupt escaped main()")
    assert exc.value.code == code
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err + captured.out
    if loading:
        assert err.startswith("loading models ...\n"), err
        err = err.removeprefix("loading models ...\n")
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err.strip()


def models_argv(saved):
    return ["--policy", str(saved / "policy"), "--reward-model", str(saved / "reward")]


# --------------------------------------------------------------------------------------- model paths
@pytest.mark.parametrize("command", ["generate", "eval", "sweep"])
@pytest.mark.parametrize("flag", ["--policy", "--reward-model"])
def test_missing_model_path_is_one_line(command, flag, tmp_path, capsys, no_model_loading):
    extra = ["--prompt", "hi"] if command == "generate" else ["--out-dir", str(tmp_path / "out")]
    err = error_line(capsys, [command, flag, str(tmp_path / "nope"), *extra])
    assert err == f"args-fast {command}: error: {flag} {tmp_path / 'nope'}: no such directory"


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("x"), "not a directory"),
    (lambda p: p.mkdir(), "no config.json"),
])
def test_model_path_that_is_not_a_saved_model(make, message, tmp_path, capsys, no_model_loading):
    path = tmp_path / "model"
    make(path)
    err = error_line(capsys, ["generate", "--policy", str(path), "--prompt", "hi"])
    assert err.startswith(f"args-fast generate: error: --policy {path}: ") and message in err


def test_model_folder_missing_its_weights(saved, tmp_path, capsys):
    broken = tmp_path / "policy"
    broken.mkdir()
    (broken / "config.json").write_text((saved / "policy" / "config.json").read_text())
    err = error_line(capsys, ["generate", "--policy", str(broken), "--reward-model", str(saved / "reward"),
                              "--prompt", "hi"], loading=True)
    assert err.startswith(f"args-fast generate: error: could not load --policy {broken}: ")


# --------------------------------------------------------------------------------------- prompt files
def test_prompts_file_missing(tmp_path, capsys, no_model_loading):
    path = tmp_path / "missing.txt"
    err = error_line(capsys, ["generate", "--prompts-file", str(path)])
    assert err == f"args-fast generate: error: --prompts-file {path}: no such file"


def test_prompts_file_is_a_directory(tmp_path, capsys, no_model_loading):
    err = error_line(capsys, ["generate", "--prompts-file", str(tmp_path)])
    assert err == f"args-fast generate: error: --prompts-file {tmp_path}: is a directory, not a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_prompts_file_unreadable(tmp_path, capsys, no_model_loading):
    path = tmp_path / "secret.txt"
    path.write_text("hi\n")
    path.chmod(0)
    err = error_line(capsys, ["generate", "--prompts-file", str(path)])
    assert err == f"args-fast generate: error: --prompts-file {path}: permission denied"


def test_prompts_file_not_utf8_names_file_and_offset(tmp_path, capsys, no_model_loading):
    path = tmp_path / "latin1.txt"
    path.write_bytes("first prompt\ncaf\xe9 au lait\n".encode("latin-1"))
    err = error_line(capsys, ["generate", "--prompts-file", str(path)])
    assert err == (f"args-fast generate: error: --prompts-file {path}: not UTF-8 text: byte 0xe9 at offset 16 "
                   "(line 2)")


@pytest.mark.parametrize("content", [b"", b"\n  \n\t\n"])
def test_prompts_file_empty(content, tmp_path, capsys, no_model_loading):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    err = error_line(capsys, ["generate", "--prompt", "hi", "--prompts-file", str(path)])
    assert err.startswith(f"args-fast generate: error: --prompts-file {path}: no prompts in it")


def test_no_prompt_at_all(capsys, no_model_loading):
    err = error_line(capsys, ["generate"])
    assert err == ("args-fast generate: error: give --prompt TEXT (repeatable), --prompts-file FILE or "
                   "--messages-file FILE.jsonl")


def test_prompts_file_read_as_text_mode_open(saved, tmp_path, capsys, monkeypatch):
    """CRLF line ends and a UTF-8 BOM do not leak into the prompts."""
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffone\r\n\r\ntwo\r\n".encode("utf-8"))
    args = cli.build_parser().parse_args(["generate", "--prompts-file", str(path)])
    assert cli_generate._read_prompts(args) == ["one", "two"]


@pytest.mark.parametrize("command", ["eval", "sweep"])
@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b'{"id": "a", "prompt": "caf\xe9"}\n', "not UTF-8 text: byte 0xe9 at offset 26 (line 1)"),
    (b"", "no prompt records in it"),
    (b'{"meta": {}}\n', "no prompt records in it"),
    (b'{"id": "a", "prompt": "x"}\nnot json\n', "line 2 is not JSON"),
    (b'{"prompt": "x"}\n', 'line 1 needs a string "prompt" and an "id"'),
])
def test_eval_prompts_file_errors(command, content, message, tmp_path, capsys, no_model_loading):
    path = tmp_path / "prompts.jsonl"
    if content is not None:
        path.write_bytes(content)
    err = error_line(capsys, [command, "--prompts", str(path), "--out-dir", str(tmp_path / "out")])
    assert err.startswith(f"args-fast {command}: error: --prompts {path}: ") and message in err, err


def test_eval_out_dir_that_cannot_be_created(tmp_path, capsys, no_model_loading):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = error_line(capsys, ["eval", "--num-prompts", "1", "--out-dir", str(blocker / "out")])
    assert err.startswith(f"args-fast eval: error: --out-dir {blocker / 'out'}: cannot create it")


# --------------------------------------------------------------------------------------- option values
@pytest.mark.parametrize("argv, flag", [
    (["--k", "0"], "--k"), (["--k", "x"], "--k"),
    (["--max-new-tokens", "-1"], "--max-new-tokens"),
    (["--temperature", "0"], "--temperature"), (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"), (["--temperature", "-1"], "--temperature"),
    (["--w", "nan"], "--w"), (["--w", "inf"], "--w"), (["--w", "1e38"], "--w"),
    (["--seed", "-1"], "--seed"),
])
def test_ranges_checked_by_argparse(argv, flag, capsys, no_model_loading):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--prompt", "hi", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"args-fast generate: error: argument {flag}: {flag} must be")


@pytest.mark.parametrize("argv, flag", [(["--w", "1e38"], "--w"), (["--temperature", "1e-39"], "--temperature")])
def test_eval_ranges_match_the_decoder(argv, flag, capsys, no_model_loading):
    with pytest.raises(SystemExit) as exc:
        main(["eval", *argv])
    assert exc.value.code == 2
    assert f"error: argument {flag}: {flag} must be a finite number" in capsys.readouterr().err


def test_k_above_vocabulary_fails_before_any_decoding(saved, capsys, monkeypatch):
    from args_fast.decoding.decoder import ARGSDecoder

    def decode(*args, **kwargs):
        pytest.fail("decoded before checking --k")
    monkeypatch.setattr(ARGSDecoder, "generate", decode)
    with pytest.raises(SystemExit) as exc:
        main(["generate", *models_argv(saved), "--prompt", "hi", "--k", "1000"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # after the progress of the model loading, the error is one line
    assert err.splitlines()[-1] == (f"args-fast generate: error: --k must be an int in [1, {VOCAB}] "
                                    "(the policy's vocabulary), got 1000")


def test_both_decoders_built_before_either_decodes(saved, capsys, monkeypatch):
    """Every option is checked at ARGSDecoder construction: both exist before the greedy baseline runs."""
    from args_fast.decoding.decoder import ARGSDecoder
    events = []
    init, generate = ARGSDecoder.__init__, ARGSDecoder.generate
    monkeypatch.setattr(ARGSDecoder, "__init__", lambda self, *a, **kw: (events.append("init"), init(self, *a, **kw))[1])
    monkeypatch.setattr(ARGSDecoder, "generate", lambda self, *a, **kw: (events.append("run"), generate(self, *a, **kw))[1])
    assert main(["generate", *models_argv(saved), "--prompt", "hi", "--max-new-tokens", "2", "--k", "3"]) == 0
    assert events == ["init", "init", "run", "run"]


# --------------------------------------------------------------------------------------- --max-new-tokens 0
def test_max_new_tokens_zero_says_so(saved, capsys):
    assert main(["generate", *models_argv(saved), "--prompt", "hi", "--prompt", "yo", "--max-new-tokens", "0"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out
    assert out.count("reward n/a (no tokens generated: --max-new-tokens 0)") == 4
    assert re.search(r"greedy\s+mean final reward n/a .*\(no steps, batch 2\)", out)


def test_normal_output_keeps_its_format(saved, capsys):
    assert main(["generate", *models_argv(saved), "--prompt", "hi", "--max-new-tokens", "3", "--k", "4"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^--- greedy: reward [+-]\d+\.\d{3}$", out, re.M)
    assert re.search(r"^--- ARGS-greedy \(k=4, w=1\.0\): reward [+-]\d+\.\d{3}$", out, re.M)
    assert re.search(r"mean final reward [+-]\d+\.\d{3} .* ms/token, batch 1\)", out)


# --------------------------------------------------------------------------------------- Ctrl-C
@pytest.mark.parametrize("command, module, func", [
    ("generate", "args_fast.cli", "run_generate"),
    ("train-rm", "args_fast.training.reward_heads", "run_train_rm"),
    ("eval", "args_fast.evaluation.run", "run_eval"),
    ("sweep", "args_fast.evaluation.sweep", "run_sweep"),
])
def test_ctrl_c_is_one_line_and_130(command, module, func, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(importlib.import_module(module), func, interrupted)
    err = error_line(capsys, [command], code=130)
    assert err == f"args-fast {command}: interrupted"


def test_ctrl_c_while_loading_models(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("args_fast.loading.load_models", interrupted)
    try:
        with pytest.raises(SystemExit) as exc:
            main(["generate", "--prompt", "hi"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "args-fast generate: interrupted" and "Traceback" not in err


# --------------------------------------------------------------------------------------- real bugs stay visible
# Only UserError (and a missing optional package) is one line: a ValueError from our own code is a bug,
# shown with its traceback, exit status 1.
def test_real_bugs_are_not_swallowed(monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr("args_fast.loading.load_models", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["generate", "--prompt", "hi"])


def test_a_bug_inside_decoding_keeps_its_traceback(saved, monkeypatch):
    from args_fast.decoding.decoder import ARGSDecoder

    def bug(*args, **kwargs):
        raise ValueError("an internal bug")
    monkeypatch.setattr(ARGSDecoder, "generate", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["generate", *models_argv(saved), "--prompt", "hi", "--max-new-tokens", "3", "--k", "3", "-q"])


def test_a_bug_exits_1_with_a_traceback(saved):
    code = ("import sys; from args_fast.decoding.decoder import ARGSDecoder\n"
            "def bug(*a, **k): raise ValueError('an internal bug')\n"
            "ARGSDecoder.generate = bug\n"
            "from args_fast.cli import main; sys.exit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "generate", *models_argv(saved), "--prompt", "hi",
                          "--max-new-tokens", "3", "--k", "3", "-q"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "ValueError: an internal bug" in out.stderr


def test_os_error_of_the_default_models_is_not_blamed_on_the_user(monkeypatch):
    def broken_cache(*args, **kwargs):
        raise PermissionError("cache not writable")
    monkeypatch.setattr("args_fast.loading.load_models", broken_cache)
    with pytest.raises(PermissionError):
        main(["generate", "--prompt", "hi"])


# --------------------------------------------------------------------------------------- --help
def option_blocks(help_text: str) -> dict[str, str]:
    """Each option's entry in ``--help`` (its first flag -> its text)."""
    section = help_text.split("options:", 1)[1]
    blocks, current = {}, None
    for line in section.splitlines():
        match = re.match(r"^  (-{1,2}[\w-]+)", line)
        if match:
            current = match.group(1)
            blocks[current] = line
        elif current and line.startswith("   "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_default(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    blocks = option_blocks(capsys.readouterr().out)
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices[command]
    flags = [a.option_strings[-1] if len(a.option_strings) == 1 else a.option_strings[0]
             for a in sub._actions if a.option_strings and "-h" not in a.option_strings]
    assert flags and set(flags) <= set(blocks)
    missing = [flag for flag in flags if "default" not in " ".join(blocks[flag].split())]
    assert not missing, f"args-fast {command} --help shows no default for {missing}"


# --------------------------------------------------------------------------------------- contrastive
@pytest.mark.skipif(not eval_methods.contrastive_unavailable(), reason="contrastive search runs here")
def test_eval_does_not_offer_contrastive_when_it_cannot_run(capsys, no_model_loading):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "contrastive" not in capsys.readouterr().out
    err = error_line(capsys, ["eval", "--methods", "greedy,contrastive"])
    assert err.startswith("args-fast eval: error: --methods: contrastive cannot run here: transformers")
    err = error_line(capsys, ["eval", "--methods", "beam"])
    assert "contrastive" not in err and "--methods must be a comma-separated subset of greedy," in err


def test_eval_offers_contrastive_when_it_can_run(monkeypatch, capsys):
    monkeypatch.setattr(eval_methods, "contrastive_unavailable", lambda: None)
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "contrastive" in capsys.readouterr().out
    assert [m.name for m in eval_methods.make_methods(["contrastive"], k=2, w=1.0, temperature=1.0)] == ["contrastive"]


# --------------------------------------------------------------------------------------- real processes
def test_console_script_bad_file_no_traceback(tmp_path):
    script = BIN / "args-fast"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "args_fast"]
    out = subprocess.run([*argv, "generate", "--prompts-file", str(tmp_path / "missing.txt")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr == f"args-fast generate: error: --prompts-file {tmp_path / 'missing.txt'}: no such file\n"


def test_eval_module_bad_file_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "args_fast", "eval", "--prompts", str(tmp_path / "x.jsonl")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr == f"args-fast eval: error: --prompts {tmp_path / 'x.jsonl'}: no such file\n"


# --------------------------------------------------------------------------------------- model kinds
def refused_after_loading(capsys, argv) -> str:
    """``main(argv)`` ends with status 2 and one error line after the loading progress (no traceback, no
    transformers load report): that line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out and "LOAD REPORT" not in captured.err
    lines = captured.err.splitlines()
    assert lines[0] == "loading models ..." and lines[-1].startswith("args-fast ") and lines[-1].count("error:") == 1
    return lines[-1]


def _saved_as(tmp_path, model, name="model", drop_architectures=False):
    """``model`` saved with the chat tokenizer under ``tmp_path/name``; ``drop_architectures`` removes the
    class names from config.json (as some exporters write it), leaving only the weights to judge by."""
    import json as _json
    path = tmp_path / name
    model.save_pretrained(path)
    make_chat_tokenizer().save_pretrained(path)
    if drop_architectures:
        config = _json.loads((path / "config.json").read_text())
        config.pop("architectures", None)
        (path / "config.json").write_text(_json.dumps(config))
    return path


def test_a_classifier_given_as_policy_is_refused(saved, capsys):
    """Loaded as a causal LM it would run with a random LM head (transformers only warns)."""
    err = refused_after_loading(capsys, ["generate", "--policy", str(saved / "reward"), "--reward-model", str(saved / "reward"),
                              "--prompt", "hi"])
    assert err == (f"args-fast generate: error: --policy {saved / 'reward'}: a LlamaForSequenceClassification "
                   "(config.json architectures), not a causal LM")


def test_a_classifier_without_architectures_given_as_policy_is_refused_by_its_missing_head(saved, tmp_path, capsys):
    from tiny_models import make_reward
    path = _saved_as(tmp_path, make_reward("llama", 3), drop_architectures=True)
    capsys.readouterr()
    err = refused_after_loading(capsys, ["generate", "--policy", str(path), "--reward-model", str(saved / "reward"),
                              "--prompt", "hi"])
    assert err.startswith(f"args-fast generate: error: --policy {path}: a LlamaForCausalLM whose files lack weights a "
                          "causal LM needs (lm_head.weight); they would be initialised at random")


def test_a_causal_lm_given_as_reward_model_is_refused(saved, capsys):
    err = refused_after_loading(capsys, ["generate", *models_argv(saved)[:2], "--reward-model", str(saved / "policy"),
                              "--prompt", "hi"])
    assert err == (f"args-fast generate: error: --reward-model {saved / 'policy'}: a LlamaForCausalLM (config.json "
                   "architectures), not a one-label score model (*ForSequenceClassification, num_labels=1)")


def test_a_causal_lm_without_architectures_given_as_reward_model_is_refused(saved, tmp_path, capsys):
    from tiny_models import make_policy
    path = _saved_as(tmp_path, make_policy("llama", 4), drop_architectures=True)
    capsys.readouterr()
    err = refused_after_loading(capsys, ["generate", "--policy", str(saved / "policy"), "--reward-model", str(path),
                              "--prompt", "hi"])
    # without its class names, an LM's config reads as 2 labels (transformers' default): refused either way
    assert err == (f"args-fast generate: error: --reward-model {path}: 2 labels (config.json id2label), not a one-label "
                   "score model (*ForSequenceClassification, num_labels=1)")


def test_a_two_label_classifier_given_as_reward_model_is_refused(saved, tmp_path, capsys):
    from tiny_models import make_reward
    path = _saved_as(tmp_path, make_reward("llama", 5, num_labels=2))
    capsys.readouterr()
    err = refused_after_loading(capsys, ["generate", "--policy", str(saved / "policy"), "--reward-model", str(path),
                              "--prompt", "hi"])
    assert err == (f"args-fast generate: error: --reward-model {path}: 2 labels (config.json id2label), not a one-label "
                   "score model (*ForSequenceClassification, num_labels=1)")


@pytest.mark.parametrize("flag", ["--token-reward", "--implicit-reference"])
def test_a_classifier_given_as_a_vocabulary_reward_is_refused(flag, saved, capsys):
    err = refused_after_loading(capsys, ["generate", "--policy", str(saved / "policy"), flag, str(saved / "reward"),
                              "--prompt", "hi"])
    assert err == (f"args-fast generate: error: {flag} {saved / 'reward'}: a LlamaForSequenceClassification "
                   "(config.json architectures), not a causal LM")


def test_eval_refuses_a_classifier_as_policy(saved, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--policy", str(saved / "reward"), "--reward-model", str(saved / "reward"),
              "--num-prompts", "1", "--out-dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (f"args-fast eval: error: --policy {saved / 'reward'}: a "
                                    "LlamaForSequenceClassification (config.json architectures), not a causal LM")


def test_load_models_api_names_the_role(saved):
    from args_fast.loading import load_models
    with pytest.raises(ValueError, match=f"^policy {saved / 'reward'}: a LlamaForSequenceClassification"):
        load_models(str(saved / "reward"), str(saved / "reward"))


def test_a_one_label_lm_config_as_reward_is_refused_by_its_missing_score_head(tmp_path):
    import json as _json

    from args_fast.loading import SCORE_MODEL, load_pretrained
    from tiny_models import make_policy
    path = _saved_as(tmp_path, make_policy("llama", 4), drop_architectures=True)
    config = _json.loads((path / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    (path / "config.json").write_text(_json.dumps(config))
    with pytest.raises(ValueError, match=r"^--reward-model .*: a LlamaForSequenceClassification whose files lack "
                                         r"weights a one-label score model .* needs \(score.weight\); they would be "
                                         "initialised at random$"):
        load_pretrained("--reward-model", path, SCORE_MODEL)


# --------------------------------------------------------------------------------------- what the decoder refuses
def test_a_backend_that_cannot_run_here_is_one_line(saved, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    err = error_line(capsys, ["generate", *models_argv(saved), "--prompt", "hi", "--backend", "static-triton", "-q"])
    assert err.startswith("args-fast generate: error: backend='static-triton' cannot run these models: ")


def test_a_prompt_longer_than_the_context_is_one_line(saved, capsys, monkeypatch):
    from args_fast.decoding.decoder import ARGSDecoder
    monkeypatch.setattr(ARGSDecoder, "generate", lambda *a, **k: pytest.fail("decoded before the check"))
    err = error_line(capsys, ["generate", *models_argv(saved), "--prompt", "x" * 200, "--max-new-tokens", "8", "-q"])
    assert err.startswith("args-fast generate: error: --max-new-tokens 8: prompt (")
    assert "exceeds the policy's context of 128 positions" in err
