"""``args-fast train-rm``: train a reward head on the policy's own backbone from labelled preferences."""
from __future__ import annotations

import argparse

from ..training.reward_heads import OBJECTIVES
from .arguments import finite_float, int_at_least, positive_int, seed_int


def _margin(text):
    """argparse type of --margin: a number in (0, 2) (both labellers' scores lie in [-1, 1])."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < 2:
        raise argparse.ArgumentTypeError(f"--margin must be a number in (0, 2) (the labellers' scores lie in [-1, 1]), "
                                         f"got {text!r}")
    return value


def _non_negative(flag):
    def parse(text):
        value = finite_float(flag)(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number >= 0, got {text}")
        return value
    return parse


def add_train_rm_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser.add_argument
    p("--train-contexts", type=positive_int("--train-contexts"), default=800,
      help="train-split contexts (one per conversation)")
    p("--val-contexts", type=positive_int("--val-contexts"), default=150,
      help="val-split contexts (choose the L2 strength)")
    p("--test-contexts", type=positive_int("--test-contexts"), default=200,
      help="test-split contexts (the reported accuracy)")
    p("--samples", type=int_at_least("--samples", 2), default=4, help="policy replies sampled per context (>= 2)")
    p("--max-new-tokens", type=int_at_least("--max-new-tokens", 1, 256), default=64,
      help="reply length cap when sampling (default 64)")
    p("--temperature", type=finite_float("--temperature", positive=True), default=1.0,
      help="sampling temperature of the policy replies")
    p("--top-k", type=positive_int("--top-k"), default=10, help="top-k filter when sampling the policy replies")
    p("--objective", choices=sorted(OBJECTIVES), default="positivity",
      help="what the labeller scores: positivity (VADER compound: the default reward model) or relevance "
           "(MiniLM cosine of the user's message and the reply); each ships its own head")
    p("--margin", type=_margin, default=None,
      help="min labeller difference for a preference pair (default: 0.3 positivity, 0.1 relevance)")
    p("--demonstrations", action="store_true",
      help="AIHF: also prefer each train context's human reply (the next chitchat turn) over the policy's own "
           "replies where the labeller rates it in the top quarter of those replies (default: off)")
    p("--prefix-weight", type=_non_negative("--prefix-weight"), default=1.0,
      help="weight of the equal-length prefix pairs in the loss")
    p("--seed", type=seed_int(), default=0, help="seed of the context choice, the sampling and the bootstrap")
    p("--batch-size", type=positive_int("--batch-size"), default=64, help="replies per forward (samples x contexts)")
    p("--cache-dir", default=None, help="default: $ARGS_FAST_CACHE or ~/.cache/args_fast")
    p("--out-dir", default=None, help="where reward_score.safetensors and reward_model.json go (default: "
                                       "reward_heads/<objective> in $ARGS_FAST_CACHE or ~/.cache/args_fast; the shipped "
                                       "heads, which load_default_reward reads, are args_fast/data and "
                                       "args_fast/data/objectives/<objective> in a checkout)")
    return parser
