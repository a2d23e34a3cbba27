"""``args-fast eval``: decoding methods x metrics over held-out prompts."""
from __future__ import annotations

import argparse

from ..evaluation.methods import available_methods
from .arguments import add_common_arguments, finite_float, positive_int, weight_float


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_common_arguments(parser, num_prompts=100, offset=0, max_new_tokens=64, out_dir="results/eval")
    offered = ",".join(available_methods())
    parser.add_argument("--methods", default=offered,
                        help=f"comma-separated subset of {offered} (default: all of them)")
    parser.add_argument("--k", type=positive_int("--k"), default=10,
                        help="ARGS top-k candidates, at most the policy's vocabulary (default 10)")
    parser.add_argument("--w", type=weight_float("--w"), default=1.0, help="ARGS reward weight (default 1.0)")
    parser.add_argument("--temperature", type=finite_float("--temperature", positive=True), default=0.7,
                        help="ARGS-stochastic temperature (default 0.7)")
    return parser
