"""argparse types and the flags several commands share. Each type's error names the flag and the
allowed range, so a bad value ends the command before anything loads."""
from __future__ import annotations

import argparse
import math

from ..data.prompts import PROMPTS_FILE
from ..engine.backends.registry import ALIASES, BACKENDS
from ..loading import DEVICE_MAPS, DTYPES
from ..validation import T_MAX, T_MIN, W_LIMIT


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


# --backend offers the current names; the old ones (ALIASES) are still taken, and the decoder warns
# that they are deprecated, but --help does not list them
BACKEND_CHOICES = ("auto",) + tuple(BACKENDS)


def backend_name(text: str) -> str:
    """argparse type of --backend: a current backend name, or an old one (kept working, not offered)."""
    if text in BACKEND_CHOICES or text in ALIASES:
        return text
    raise argparse.ArgumentTypeError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}, got {text!r}")


def add_backend_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--backend", type=backend_name, default="auto", metavar="{" + ",".join(BACKEND_CHOICES) + "}",
                        help=help)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--quiet, which every command takes."""
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars and no info lines on stderr (results, warnings and errors still "
                             "print); TQDM_DISABLE=1 switches the progress bars off alone")


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="the models' weights and compute dtype (float32: the same tokens on every machine; "
                             "bfloat16 / float16 halve the memory and are faster on GPUs, and may pick other tokens)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="compile the decoding step into one graph (torch.compile): on = always (backend "
                             "static-compiled, tens of seconds per new shape), off = never, auto = on CPU for "
                             "requests of at least 2048 new tokens in float32, 4096 in bfloat16/float16 "
                             "(ARGS_FAST_COMPILE_MIN_STEPS), where it pays")
    parser.add_argument("--policy-device", metavar="DEVICE",
                        help="where the policy runs, e.g. cpu, cuda, cuda:1 (default: this process's GPU when there "
                             "is one, cuda:LOCAL_RANK under torchrun, else the CPU)")
    parser.add_argument("--reward-device", metavar="DEVICE",
                        help="where the reward model runs (default: the policy's device)")
    parser.add_argument("--device-map", choices=DEVICE_MAPS,
                        help="spread --policy / --reward-model paths too large for one device over the devices "
                             "(accelerate's device_map); the hf and reference backends run them (default: none)")


def add_vocab_reward_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for the vocabulary-level rewards (``args_fast.rewards.vocab``), instead of --reward-model."""
    parser.add_argument("--implicit-reference", metavar="PATH",
                        help="reward = the implicit DPO/AIHF reward beta * sum log(pi_policy / pi_ref) of the policy "
                             "(the tuned model) against this reference causal LM (local folder or model id); "
                             "instead of "
                             "--reward-model (default: none)")
    parser.add_argument("--token-reward", metavar="PATH",
                        help="reward = GenARM-style token rewards: log-softmax of this autoregressive reward LM "
                             "(local folder or model id), summed over the response; instead of --reward-model "
                             "(default: none)")
    parser.add_argument("--beta", type=finite_float("--beta", limit=W_LIMIT), default=1.0,
                        help="beta of --implicit-reference")
    parser.add_argument("--reward-scale", type=finite_float("--reward-scale", limit=W_LIMIT), default=1.0,
                        help="scale of --token-reward's token rewards")


def add_common_arguments(parser: argparse.ArgumentParser, *, num_prompts: int, offset: int, max_new_tokens: int,
                         out_dir: str):
    parser.add_argument("--num-prompts", type=positive_int("--num-prompts"), default=num_prompts,
                        help=f"prompts to run, from --offset in the bundled held-out set (default {num_prompts})")
    parser.add_argument("--offset", type=int_at_least("--offset", 0), default=offset,
                        help=f"first prompt index (default {offset})")
    parser.add_argument("--batch-size", type=positive_int("--batch-size"), default=8, help="prompts per batch (default 8)")
    parser.add_argument("--max-new-tokens", type=positive_int("--max-new-tokens"), default=max_new_tokens,
                        help=f"tokens generated per prompt at most (default {max_new_tokens})")
    parser.add_argument("--seed", type=seed_int(), default=0, help="seed of every sampling method (default 0)")
    parser.add_argument("--out-dir", default=out_dir, help=f"where results go (default {out_dir})")
    parser.add_argument("--policy", help="a causal LM and its tokenizer: a local folder or a Hugging Face model id "
                                         "(default: the default policy)")
    parser.add_argument("--reward-model", help="a 1-label *ForSequenceClassification sharing the policy's tokenizer: "
                                               "a local folder or a model id (default: the default reward model)")
    parser.add_argument("--prompts", default=str(PROMPTS_FILE),
                        help="prompt JSONL, UTF-8, one record with \"id\" and \"prompt\" per line "
                             "(default: the bundled held-out set)")
    add_backend_argument(parser, "ARGS backend (default auto)")
    add_vocab_reward_arguments(parser)
    add_placement_arguments(parser)
    add_output_arguments(parser)
    parser.add_argument("--threads", type=positive_int("--threads"), help="torch CPU threads (default: torch's)")
