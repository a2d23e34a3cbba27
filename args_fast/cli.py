"""The ``args-fast`` command line: generate (greedy vs ARGS side by side), train-rm, eval, sweep.

Errors in what the user gave (an option's value, a path, a file's contents) end the command with one
line, ``args-fast <command>: error: ...`` naming the flag, and exit status 2; Ctrl-C ends it with
``args-fast <command>: interrupted`` and status 130. Options that need no model are checked by
argparse; those that depend on the models (``--k`` against the policy's vocabulary) right after
loading them, before any decoding.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from .decoder import BACKENDS, MODES, T_MAX, T_MIN, W_LIMIT, ARGSDecoder, decode_continuations, encode_prompts
from .models import DEVICE_MAPS, check_placement, load_models


# --------------------------------------------------------------------------------------- argparse types
def int_at_least(flag: str, low: int, high: int | None = None):
    """argparse type: an int >= ``low`` (and <= ``high``); the error names the flag and the range."""
    span = f">= {low}" if high is None else f"in [{low}, {high}]"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer {span}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{flag} must be an integer {span}, got {value}")
        return value
    return parse


def positive_int(flag: str):
    return int_at_least(flag, 1)


def seed_int(flag: str = "--seed"):
    return int_at_least(flag, 0, 2**64 - 1)     # what torch.Generator.manual_seed takes


def finite_float(flag: str, *, positive: bool = False, limit: float | None = None):
    """argparse type: a finite float (> 0 with ``positive``; |value| <= ``limit``); the error names the flag.
    The default limits are the decoder's (float32 scores stay finite): |w| <= 1e30, T in [1e-30, 1e30]."""
    low, high = (T_MIN, limit or T_MAX) if positive else (-(limit or math.inf), limit or math.inf)
    span = " > 0" if positive else ""
    if limit is not None or positive:
        span += f" (in [{low:g}, {high:g}])"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or value > high:
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number{span}, got {text}")
        return value
    return parse


def weight_float(flag: str = "--w"):
    return finite_float(flag, limit=W_LIMIT)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default: ``(default: X)`` is appended unless the help already
    says it (``default ...``); flags that are off unless given show ``(default: off)``."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.default is False and action.nargs == 0:
            return f"{text} (default: off)"
        if action.default is None:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


# --------------------------------------------------------------------------------------- user inputs
def check_model_dir(flag: str, path: str | None) -> None:
    """A ``--policy`` / ``--reward-model`` path, checked before anything loads (transformers would take a
    missing path for a hub repository id and fail deep inside with a traceback)."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{flag} {path}: no such directory")
    if not p.is_dir():
        raise ValueError(f"{flag} {path}: not a directory (give the folder written by save_pretrained)")
    if not os.access(p, os.R_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: permission denied")
    config = p / "config.json"
    if not config.is_file():
        raise ValueError(f"{flag} {path}: no config.json there (not a model saved with save_pretrained)")
    if not os.access(config, os.R_OK):
        raise ValueError(f"{flag} {config}: permission denied")


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy-device", metavar="DEVICE",
                        help="where the policy runs, e.g. cpu, cuda, cuda:1 (default: this process's GPU when there "
                             "is one, cuda:LOCAL_RANK under torchrun, else the CPU)")
    parser.add_argument("--reward-device", metavar="DEVICE",
                        help="where the reward model runs (default: the policy's device)")
    parser.add_argument("--device-map", choices=DEVICE_MAPS,
                        help="spread --policy / --reward-model paths too large for one device over the devices "
                             "(accelerate's device_map); the hf and reference backends run them (default: none)")


def placement(args) -> dict:
    """The load_models placement keywords of the flags; the default device is the GPU of this process
    (``cuda:LOCAL_RANK`` under torchrun) where CUDA is available, else the CPU."""
    from . import parallel
    device_map = getattr(args, "device_map", None)
    policy_device, reward_device = getattr(args, "policy_device", None), getattr(args, "reward_device", None)
    if device_map is None and policy_device is None:
        policy_device = str(parallel.world().device())
    return {"policy_device": policy_device, "reward_device": reward_device, "device_map": device_map}


def load_user_models(policy: str | None, reward_model: str | None, **kw):
    """:func:`load_models` after checking the user's paths; an OSError while loading a user-given model
    (a file missing or unreadable in its folder) becomes a ValueError naming the flags."""
    check_model_dir("--policy", policy)
    check_model_dir("--reward-model", reward_model)
    try:
        return load_models(policy, reward_model, **kw)
    except OSError as err:
        given = [(flag, path) for flag, path in (("--policy", policy), ("--reward-model", reward_model)) if path]
        if not given:
            raise
        named = [(flag, path) for flag, path in given if str(Path(path)) in str(err) or path in str(err)] or given
        raise ValueError(f"could not load {' / '.join(f'{flag} {path}' for flag, path in named)}: {err}") from err


def add_vocab_reward_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for the vocabulary-level rewards (``args_fast.vocab_rewards``), instead of --reward-model."""
    parser.add_argument("--implicit-reference", metavar="PATH",
                        help="reward = the implicit DPO/AIHF reward beta * sum log(pi_policy / pi_ref) of the policy "
                             "(the tuned model) against this reference causal LM (local path); instead of "
                             "--reward-model (default: none)")
    parser.add_argument("--token-reward", metavar="PATH",
                        help="reward = GenARM-style token rewards: log-softmax of this autoregressive reward LM "
                             "(local path), summed over the response; instead of --reward-model (default: none)")
    parser.add_argument("--beta", type=finite_float("--beta", limit=W_LIMIT), default=1.0,
                        help="beta of --implicit-reference")
    parser.add_argument("--reward-scale", type=finite_float("--reward-scale", limit=W_LIMIT), default=1.0,
                        help="scale of --token-reward's token rewards")


def check_reward_flags(args) -> None:
    """At most one reward source; the vocabulary-level ones need the policy's vocabulary (checked later)."""
    given = [flag for flag, value in (("--reward-model", args.reward_model),
                                      ("--implicit-reference", args.implicit_reference),
                                      ("--token-reward", args.token_reward)) if value]
    if len(given) > 1:
        raise ValueError(f"give one reward source, not {' and '.join(given)}")
    check_model_dir("--implicit-reference", args.implicit_reference)
    check_model_dir("--token-reward", args.token_reward)


def load_reward(args, loaded):
    """The reward the flags ask for: ``loaded.reward`` (the default or --reward-model), or an
    ImplicitReward / TokenReward on the causal LM at --implicit-reference / --token-reward."""
    flag, path = (("--implicit-reference", args.implicit_reference) if args.implicit_reference else
                  ("--token-reward", args.token_reward) if args.token_reward else (None, None))
    if path is None:
        return loaded.reward
    from transformers import AutoModelForCausalLM

    from .vocab_rewards import ImplicitReward, TokenReward
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=next(loaded.policy.parameters()).dtype).eval()
    except (OSError, ValueError) as err:
        raise ValueError(f"could not load {flag} {path} as a causal LM: {str(err).splitlines()[0]}") from err
    lm.to(loaded.policy.device)
    if args.implicit_reference:
        reward = ImplicitReward(loaded.policy, lm, args.beta)
    else:   # summed, so the reward printed for a response is the whole response's
        reward = TokenReward(lm, scale=args.reward_scale, cumulative=True)
    try:
        reward.check(loaded.policy)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{flag} {path}: {err}") from None
    loaded.names["reward_model"] = f"{reward.describe(loaded.policy)} ({flag} {path})"
    return reward


def read_user_text(flag: str, path: str) -> str:
    """The text of a file the user named with ``flag``, as UTF-8 (a leading BOM dropped); every way it can
    fail (missing, a directory, unreadable, not UTF-8) is a ValueError naming the flag and the file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{flag} {path}: is a directory, not a file") from None
    except PermissionError:
        raise ValueError(f"{flag} {path}: permission denied") from None
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot read it: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{flag} {path}: not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} "
                         f"(line {line})") from None
    return text.removeprefix("\ufeff")


def text_lines(text: str) -> list[str]:
    """Lines as text-mode ``open`` reads them (``\\n``, ``\\r\\n`` and ``\\r`` end a line), without the ends."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file is not None:
        from_file = [line for line in text_lines(read_user_text("--prompts-file", args.prompts_file)) if line.strip()]
        if not from_file:
            raise ValueError(f"--prompts-file {args.prompts_file}: no prompts in it (empty or only blank lines)")
        prompts += from_file
    if not prompts:
        raise ValueError("give --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


# --------------------------------------------------------------------------------------- generate
def _final_rewards(rewards: torch.Tensor) -> list[float]:
    """Reward of each row's whole response: its last step's reward (steps after EOS are nan)."""
    out = []
    for row in rewards:
        real = row[~row.isnan()]
        out.append(float(real[-1]) if len(real) else float("nan"))
    return out


def _fmt_reward(value: float) -> str:
    return f"{value:+.3f}" if math.isfinite(value) else "n/a"


def _generate_check(args, loaded, chat: bool) -> dict:
    """What --output's records depend on: unfinished work of a run with other settings is not reused."""
    keys = ("k", "w", "mode", "temperature", "max_new_tokens", "seed", "backend", "batch_size", "implicit_reference",
            "token_reward", "beta", "reward_scale")
    return {"models": loaded.names, "chat_template": chat, **{key: getattr(args, key) for key in keys}}


def run_generate(args) -> int:
    from tqdm import tqdm

    from . import parallel
    prompts = _read_prompts(args)
    check_model_dir("--policy", args.policy)
    check_model_dir("--reward-model", args.reward_model)
    check_reward_flags(args)
    output = Path(args.output) if args.output else None
    if output is not None and output.is_dir():
        raise ValueError(f"--output {args.output}: is a directory (give a .jsonl file path)")
    world = parallel.world()
    where = placement(args)
    check_placement(args.policy, args.reward_model, **where)
    if world.is_main:
        print("loading models ...", file=sys.stderr)
    loaded = load_user_models(args.policy, args.reward_model, **where)
    policy, tokenizer, reward_tokenizer = loaded.policy, loaded.tokenizer, loaded.reward_tokenizer
    reward = load_reward(args, loaded)
    vocab = policy.get_output_embeddings().out_features
    if args.k > vocab:
        raise ValueError(f"--k must be an int in [1, {vocab}] (the policy's vocabulary), got {args.k}")
    chat = args.chat_template == "on" or (args.chat_template == "auto" and tokenizer.chat_template is not None)
    common = dict(max_new_tokens=args.max_new_tokens, tokenizer=tokenizer, reward_tokenizer=reward_tokenizer)
    runs = [("greedy", dict(k=1, w=0.0, mode="greedy", backend=args.backend)),
            (f"ARGS-{args.mode} (k={args.k}, w={args.w})",
             dict(k=args.k, w=args.w, mode=args.mode, temperature=args.temperature, backend=args.backend))]
    # both decoders first: each checks its options at construction, so a bad one fails before any decoding
    decoders = [(name, ARGSDecoder(policy, reward, **options, **common)) for name, options in runs]
    if world.is_main:
        print(f"backend: {decoders[-1][1].backend_description}", file=sys.stderr)   # what runs, in words
    batches = [list(range(i, min(i + args.batch_size, len(prompts)))) for i in range(0, len(prompts), args.batch_size)]

    def one_batch(j: int) -> list[dict]:
        """Both decoders on batch j; a prompt's draws come from its own generator (its index, the seed)."""
        rows = batches[j]
        input_ids, attention_mask = encode_prompts(tokenizer, [prompts[i] for i in rows], chat_template=chat)
        records = [{"index": i, "prompt": prompts[i]} for i in rows]
        for key, (name, decoder) in zip(("greedy", "args"), decoders):
            with tqdm(total=args.max_new_tokens, desc=f"{name} [{decoder.backend}]", unit="tok", file=sys.stderr,
                      leave=False, disable=not world.is_main) as bar:
                start = time.perf_counter()
                out = decoder.generate(input_ids, attention_mask, generator=parallel.prompt_generators(args.seed, rows),
                                       progress=bar.update)
                elapsed = time.perf_counter() - start
            texts = decode_continuations(tokenizer, out.sequences[:, input_ids.shape[1]:], decoder.eos_token_id)
            for record, text, value in zip(records, texts, _final_rewards(out.rewards)):
                # the batch's time and steps are shared by its rows, so that sums over records are totals
                record[key] = {"method": name, "result": text, "reward": value, "seconds": elapsed / len(rows),
                               "steps": out.rewards.shape[1] / len(rows)}
        return records

    run = parallel.BatchedRun([[prompts[i] for i in rows] for rows in batches], [len(rows) for rows in batches],
                              [sum(len(prompts[i]) for i in rows) for rows in batches],
                              work_dir=None if output is None else output.with_name(output.name + ".partial"),
                              check=_generate_check(args, loaded, chat), desc="generate", w=world)
    args.interrupt_note = lambda: (f"{run.finished_prompts} of {run.total_prompts} prompts saved in {run.work_dir}; "
                                   "run the same command again to finish" if output is not None
                                   else "nothing saved (give --output FILE.jsonl to keep finished prompts)")
    if run.finished_prompts and world.is_main:
        print(f"resuming: {run.finished_prompts} of {run.total_prompts} prompts already done ({run.work_dir})",
              file=sys.stderr)
    records = run.run(one_batch)
    if records is None:    # another rank than 0: rank 0 prints and writes everything
        return 0
    if output is not None:
        from .evaluation.run import write_jsonl
        write_jsonl(output, records)
        shutil.rmtree(run.work_dir, ignore_errors=True)
    for i, record in enumerate(records):
        print(f"\n=== prompt {i + 1}: {record['prompt']}")
        for key in ("greedy", "args"):
            r = record[key]
            if args.max_new_tokens == 0:
                print(f"--- {r['method']}: reward n/a (no tokens generated: --max-new-tokens 0)")
            else:
                print(f"--- {r['method']}: reward {_fmt_reward(r['reward'])}")
            print(r["result"].strip())
    print()
    shape = f"batch {len(batches[0])}" + (f", {len(batches)} batches" if len(batches) > 1 else "")
    if world.distributed:
        shape += f", {world.size} processes: summed compute time"
    for key in ("greedy", "args"):
        values = [r[key] for r in records]
        mean = sum(v["reward"] for v in values) / len(values)
        elapsed, steps = sum(v["seconds"] for v in values), round(sum(v["steps"] for v in values))
        per_step = f"{1000 * elapsed / steps:.1f} ms/step" if steps else "no steps"
        print(f"{values[0]['method']:<40} mean final reward {_fmt_reward(mean)}   {elapsed:6.2f} s  ({per_step}, {shape})")
    if output is not None:
        print(f"wrote {len(records)} records to {output}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="args-fast", description="ARGS: alignment as reward-guided search",
                                     formatter_class=DefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="subcommand", required=True)
    about = "greedy vs ARGS continuations side by side, with rewards and times"
    gen = sub.add_parser("generate", help=about, description=about, formatter_class=DefaultsHelpFormatter)
    gen.add_argument("--prompt", action="append", help="a prompt (repeatable; default: none, give this or "
                                                       "--prompts-file)")
    gen.add_argument("--prompts-file", help="a UTF-8 file with one prompt per line, blank lines skipped "
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
    gen.add_argument("--backend", choices=BACKENDS, default="auto", help="which ARGS engine runs")
    gen.add_argument("--batch-size", type=positive_int("--batch-size"), default=8,
                     help="prompts decoded together (the unit that torchrun ranks share out)")
    gen.add_argument("--output", metavar="FILE.jsonl",
                     help="also write one JSON record per prompt (both continuations, rewards, times); finished "
                          "batches are kept in FILE.jsonl.partial/ so a rerun of an interrupted command resumes "
                          "(default: none)")
    gen.add_argument("--policy", help="local path of a causal LM (default: embedded SmolLM2-135M-Instruct)")
    gen.add_argument("--reward-model", help="local path of a 1-label sequence-classification model "
                                            "(default: the embedded args_fast reward model)")
    gen.add_argument("--chat-template", choices=("auto", "on", "off"), default="auto",
                     help="wrap prompts as a user turn (auto: when the tokenizer has a template)")
    add_vocab_reward_arguments(gen)
    add_placement_arguments(gen)
    gen.set_defaults(func=run_generate)
    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub):
    """Subcommands whose modules pull heavier dependencies are imported here, not at package import."""
    from .reward_training import add_train_rm_arguments, run_train_rm
    commands = [("train-rm", "train the default reward model (pairwise loss)", add_train_rm_arguments, run_train_rm)]
    from .evaluation.run import add_eval_arguments, run_eval
    commands.append(("eval", "decoding methods x metrics table over held-out prompts", add_eval_arguments, run_eval))
    from .evaluation.sweep import add_sweep_arguments, run_sweep
    commands.append(("sweep", "w x k sweep with plots (the paper's Figure 2)", add_sweep_arguments, run_sweep))
    from .evaluation.pareto import add_pareto_arguments, run_pareto
    commands.append(("pareto", "positivity-vs-relevance front: preference-weighted ARGS, Rewarded Soups, MOD, RiC",
                     add_pareto_arguments, run_pareto))
    for name, about, add_arguments, func in commands:
        command = sub.add_parser(name, help=about, description=about, formatter_class=DefaultsHelpFormatter)
        add_arguments(command)
        command.set_defaults(func=func)


def module_main(prog: str, doc: str | None, add_arguments, func, argv=None) -> int:
    """``python -m args_fast.<module>``: the subcommand's parser (``add_arguments``) and ``func`` run as
    ``args-fast <command>`` runs them (:func:`run_command`)."""
    parser = add_arguments(argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n")[0],
                                                   formatter_class=DefaultsHelpFormatter))
    return run_command(prog, func, parser.parse_args(argv))


def _one_line(err: BaseException) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def run_command(prog: str, func, args) -> int:
    """Run a parsed command: a bad input (ValueError / TypeError; the user-input checks above raise
    ValueError for missing or unreadable files too) ends it with one line and status 2, Ctrl-C (or
    SIGTERM, as torchrun sends its workers) with one line saying what was saved and status 130,
    never a traceback. Under torchrun only rank 0 prints the line."""
    from . import parallel
    # SIGTERM stops as Ctrl-C does; only where Python lets us (the main thread) and nobody else set it
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    else:
        previous = None
    try:
        return func(args)
    except (ValueError, TypeError) as err:  # bad options surface as one clear line, not a traceback
        if parallel.world().is_main:
            sys.stderr.write(f"{prog}: error: {_one_line(err)}\n")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        note = getattr(args, "interrupt_note", None)
        if parallel.world().is_main:
            sys.stderr.write(f"{prog}: interrupted" + (f"; {note()}" if note else "") + "\n")
        raise SystemExit(130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
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
