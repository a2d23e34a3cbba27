"""Checks of user-given numbers and ids, shared by every layer: each error names the argument and the
allowed range, before any work is done. :class:`UserError` marks the errors in what a user typed.

Numbers may be Python numbers, numpy scalars or one-element tensors; bools are refused (``True`` is not
a count or a weight).
"""
from __future__ import annotations

import math
import numbers

import numpy
import torch

# float32 scores are logit + w * reward, divided by T in stochastic mode: these bounds keep them finite
# for |logit|, |reward| up to 1e8 (a w or T outside them overflows or underflows float32).
W_LIMIT, T_MIN, T_MAX = 1e30, 1e-30, 1e30


def is_bool(value) -> bool:
    return isinstance(value, (bool, numpy.bool_)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool)


def scalar(value):
    """A Python number from an int / float, a numpy scalar or a one-element tensor; else the value as is."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() <= 1:
        return value.item()
    if isinstance(value, (numpy.generic, numpy.ndarray)) and value.ndim == 0:
        return value.item()
    return value


def as_int(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; ValueError naming ``name`` and the range otherwise."""
    span = f"[{low}, {high}]" if high is not None else f">= {low}"
    number = scalar(value)
    if is_bool(value) or isinstance(number, bool) or not isinstance(number, numbers.Integral):
        raise ValueError(f"{name} must be an int {span}, got {value!r}")
    number = int(number)
    if number < low or (high is not None and number > high):
        raise ValueError(f"{name} must be an int {span}, got {number}")
    return number


def as_float(name: str, value, low: float, high: float, *, open_low: bool = False) -> float:
    """``value`` as a finite float in [low, high] ((low, high] with ``open_low``); ValueError naming ``name``."""
    span = f"{'(' if open_low else '['}{low:g}, {high:g}]"
    number = scalar(value)
    if is_bool(value) or isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise ValueError(f"{name} must be a number in {span}, got {value!r}")
    number = float(number)
    if not math.isfinite(number) or number > high or number < low or (open_low and number == low):
        raise ValueError(f"{name} must be a finite number in {span}, got {number!r}")
    return number


def token_ids(name: str, value, vocab: int) -> list[int]:
    """One id or several (list, tuple, tensor, numpy array) as a list of ints in [0, vocab)."""
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        value = value.tolist()
    elif isinstance(value, numpy.ndarray) and value.ndim == 1:
        value = value.tolist()
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    return [as_int(name, i, 0, vocab - 1) for i in items]


class UserError(ValueError):
    """An input the user gave (a flag's value, a path, a file's contents, a missing optional package)
    cannot be used: the command line prints its message as one line and exits with status 2. Anything
    else that escapes a command is a bug of ours and keeps its traceback. A ValueError, so callers of
    the library that catch ValueError for bad arguments still catch it."""
