"""The chitchat-dataset conversations (PyPI ``chitchat-dataset``) and their fixed train/val/test split.

The dataset has ~7k conversations but only ~34 distinct starter prompts, so the split is by
conversation (sha256 of its id, mod 10: 0-7 train, 8 val, 9 test). The reward model trains on train
(and selects on val) conversations only; evaluation prompts come from test conversations only.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from functools import lru_cache

SPLITS = ("train", "val", "test")


def split_of(conversation_id: str) -> str:
    bucket = int(hashlib.sha256(conversation_id.encode("utf-8")).hexdigest(), 16) % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


@lru_cache(maxsize=1)
def load_conversations() -> dict:
    """{conversation id: {"prompt", "ratings", "messages": [[{"text", "sender", ...}, ...], ...]}}.

    Each entry of "messages" is one turn: consecutive messages of one sender."""
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or spec.origin is None:
        raise ImportError("chitchat-dataset is not installed: pip install chitchat-dataset")
    with open(os.path.join(os.path.dirname(spec.origin), "dataset.json")) as f:
        return json.load(f)


def conversations(split: str) -> list[tuple[str, dict]]:
    """(id, conversation) pairs of one split, sorted by id (a fixed order)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return sorted((cid, c) for cid, c in load_conversations().items() if split_of(cid) == split)
