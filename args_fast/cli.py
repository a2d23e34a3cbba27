"""The ``args-fast`` command line: generate (greedy vs ARGS side by side), train-rm, eval, sweep."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from .decoder import BACKENDS, MODES, ARGSDecoder, decode_continuations, encode_prompts
from .models import load_models


def _final_rewards(rewards: torch.Tensor) -> list[float]:
    """Reward of each row's whole response: its last step's reward (steps after EOS are nan)."""
    out = []
    for row in rewards:
        real = row[~row.isnan()]
        out.append(float(real[-1]) if len(real) else float("nan"))
    return out


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise SystemExit("args-fast generate: give --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def run_generate(args) -> int:
    from tqdm import tqdm
    prompts = _read_prompts(args)
    print("loading models ...", file=sys.stderr)
    loaded = load_models(args.policy, args.reward_model)
    policy, tokenizer, reward, reward_tokenizer = loaded.policy, loaded.tokenizer, loaded.reward, loaded.reward_tokenizer
    chat = args.chat_template == "on" or (args.chat_template == "auto" and tokenizer.chat_template is not None)
    input_ids, attention_mask = encode_prompts(tokenizer, prompts, chat_template=chat)
    common = dict(max_new_tokens=args.max_new_tokens, tokenizer=tokenizer, reward_tokenizer=reward_tokenizer)
    runs = [("greedy", dict(k=1, w=0.0, mode="greedy", backend=args.backend)),
            (f"ARGS-{args.mode} (k={args.k}, w={args.w})",
             dict(k=args.k, w=args.w, mode=args.mode, temperature=args.temperature, backend=args.backend))]
    results = []
    for name, options in runs:
        decoder = ARGSDecoder(policy, reward, **options, **common)
        generator = torch.Generator().manual_seed(args.seed)
        with tqdm(total=args.max_new_tokens, desc=f"{name} [{decoder.backend}]", unit="tok",
                  file=sys.stderr, leave=False) as bar:
            start = time.perf_counter()
            out = decoder.generate(input_ids, attention_mask, generator=generator, progress=bar.update)
            elapsed = time.perf_counter() - start
        texts = decode_continuations(tokenizer, out.sequences[:, input_ids.shape[1]:], decoder.eos_token_id)
        results.append((name, texts, _final_rewards(out.rewards), elapsed, out.rewards.shape[1]))
    for i, prompt in enumerate(prompts):
        print(f"\n=== prompt {i + 1}: {prompt}")
        for name, texts, rewards, elapsed, steps in results:
            print(f"--- {name}: reward {rewards[i]:+.3f}")
            print(texts[i].strip())
    print()
    for name, _, rewards, elapsed, steps in results:
        mean = sum(rewards) / len(rewards)
        print(f"{name:<40} mean final reward {mean:+.3f}   {elapsed:6.2f} s  "
              f"({1000 * elapsed / max(steps, 1):.1f} ms/step, batch {len(prompts)})")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="args-fast", description="ARGS: alignment as reward-guided search")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="greedy vs ARGS continuations side by side, with rewards and times")
    gen.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    gen.add_argument("--prompts-file", help="a file with one prompt per line")
    gen.add_argument("--k", type=_positive_int, default=10, help="candidates per step (default 10)")
    gen.add_argument("--w", type=float, default=1.0,
                     help="reward weight (default 1.0: chosen for the default reward model, results/README.md)")
    gen.add_argument("--mode", choices=MODES, default="greedy")
    gen.add_argument("--temperature", type=float, default=0.7, help="for --mode stochastic (default 0.7)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--backend", choices=BACKENDS, default="auto")
    gen.add_argument("--policy", help="local path of a causal LM (default: embedded SmolLM2-135M-Instruct)")
    gen.add_argument("--reward-model", help="local path of a 1-label sequence-classification model "
                                            "(default: the embedded args_fast reward model)")
    gen.add_argument("--chat-template", choices=("auto", "on", "off"), default="auto",
                     help="wrap prompts as a user turn (auto: when the tokenizer has a template)")
    gen.set_defaults(func=run_generate)
    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub):
    """Subcommands whose modules pull heavier dependencies are imported here, not at package import."""
    from .reward_training import add_train_rm_arguments, run_train_rm
    train = sub.add_parser("train-rm", help="train the default reward model (pairwise loss)")
    add_train_rm_arguments(train)
    train.set_defaults(func=run_train_rm)
    from .evaluation.run import add_eval_arguments, run_eval
    ev = sub.add_parser("eval", help="decoding methods x metrics table over held-out prompts")
    add_eval_arguments(ev)
    ev.set_defaults(func=run_eval)
    from .evaluation.sweep import add_sweep_arguments, run_sweep
    sw = sub.add_parser("sweep", help="w x k sweep with plots (the paper's Figure 2)")
    add_sweep_arguments(sw)
    sw.set_defaults(func=run_sweep)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:  # bad options surface as one clear line, not a traceback
        parser.exit(2, f"args-fast {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
