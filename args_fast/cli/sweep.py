"""``args-fast sweep``: ARGS over a grid of w and k."""
from __future__ import annotations

import argparse

from ..validation import W_LIMIT
from .arguments import add_common_arguments


def _float_list(text):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = None
    if not values or any(v != v or abs(v) > W_LIMIT for v in values):
        raise argparse.ArgumentTypeError(f"--ws must be comma-separated finite numbers in [-{W_LIMIT:g}, {W_LIMIT:g}], "
                                         f"got {text!r}")
    return sorted(set(values))


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--ks must be comma-separated integers >= 1, got {text!r}")
    return sorted(set(values))


def add_sweep_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_common_arguments(parser, num_prompts=32, offset=200, max_new_tokens=32, out_dir="results/sweep")
    parser.add_argument("--ws", type=_float_list, default=_float_list("0,0.5,1,1.5,2,3,5"),
                        help="reward weights w (default 0,0.5,1,1.5,2,3,5)")
    parser.add_argument("--ks", type=_int_list, default=_int_list("5,10,20,40"), help="top-k sizes (default 5,10,20,40)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished cells of an identical earlier run (default: off, run every cell)")
    return parser
