"""``args-fast pareto``: one positivity-vs-relevance front for preference-weighted ARGS and the
training-time baselines."""
from __future__ import annotations

import argparse

from ..evaluation.pareto import METHODS
from ..validation import W_LIMIT
from .arguments import add_common_arguments, finite_float, int_at_least, positive_int


def add_pareto_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    # the protocol of the committed run is these defaults: prompts 300-347 of the bundled held-out set
    # (no other command or study uses them), 48 new tokens, 7 lambdas, k 10, W 1.5 (the weight the
    # conflict study used before this command existed), 64 calibration contexts
    add_common_arguments(parser, num_prompts=48, offset=300, max_new_tokens=48, out_dir="results/pareto")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--lambdas", type=int_at_least("--lambdas", 2, 101), default=7,
                        help="points of the preference grid lambda = i / (n - 1) (weight of positivity)")
    parser.add_argument("--k", type=positive_int("--k"), default=10, help="ARGS top-k candidates")
    parser.add_argument("--w", type=finite_float("--w", positive=True, limit=W_LIMIT), default=1.5,
                        help="ARGS total weight W: w = W * (lambda, 1 - lambda) on the normalised rewards")
    parser.add_argument("--relevance-reward-model",
                        help="the relevance objective's 1-label sequence-classification model (a local folder or a "
                             "model id), with "
                             "--reward-model as the positivity one (default: the embedded relevance head)")
    parser.add_argument("--adapters", default=None,
                        help="folder of the LoRA adapters (peft format): positivity/ and relevance/ (rs, mod; "
                             "results/objectives/train_soups.py), ric/ (ric; results/objectives/train_ric.py); "
                             "default: adapters/ in $ARGS_FAST_CACHE or ~/.cache/args_fast (in a checkout: "
                             "results/objectives/adapters)")
    parser.add_argument("--calibration-prompts", type=positive_int("--calibration-prompts"), default=64,
                        help="chitchat val contexts whose greedy replies give each reward's mean and std")
    return parser
