"""The bundled evaluation prompts: one user message from each held-out (test-split) chitchat conversation.

Recipe (``python -m args_fast.evaluation.prompts`` rebuilds ``args_fast/data/eval_prompts.jsonl``):
for each test conversation, in id order, take the first of its first three turns (a turn = consecutive
messages of one sender, joined by spaces) that has 8 to 60 whitespace words, so greetings such as
"hi!" are skipped; conversations with no such turn are skipped, and repeated texts are kept once.
The message is stored raw; it becomes one user turn of the policy's chat template when encoded.
Train and val conversations are never read here (the reward model trains on them).
"""
from __future__ import annotations

import json
from pathlib import Path

from .chitchat import conversations

PROMPTS_FILE = Path(__file__).resolve().parent.parent / "data" / "eval_prompts.jsonl"
MIN_WORDS, MAX_WORDS, FIRST_TURNS = 8, 60, 3


def build_prompts() -> list[dict]:
    prompts, seen = [], set()
    for cid, conv in conversations("test"):
        for index, turn in enumerate(conv["messages"][:FIRST_TURNS]):
            text = " ".join(m["text"].strip() for m in turn).strip()
            if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
                if text.lower() not in seen:
                    seen.add(text.lower())
                    prompts.append({"id": f"{cid}/turn{index}", "conversation_id": cid, "turn": index,
                                    "topic": conv.get("prompt"), "prompt": text})
                break
    return prompts


def write_prompts(path: Path = PROMPTS_FILE) -> int:
    prompts = build_prompts()
    meta = {"meta": {"source": "chitchat-dataset, split 'test' of args_fast.chitchat (sha256(id) % 10 == 9)",
                     "recipe": __doc__.split("Recipe", 1)[1].split("\n\n")[0].strip(), "count": len(prompts)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for record in [meta] + prompts:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(prompts)


def load_prompts(path: str | Path | None = None) -> list[dict]:
    """The prompt records (``id``, ``prompt``, ...) in their fixed order; the first line is metadata."""
    path = Path(path) if path else PROMPTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} not found (python -m args_fast.evaluation.prompts builds it)")
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    prompts = [r for r in records if "prompt" in r]
    if not prompts:
        raise ValueError(f"{path} holds no prompt records")
    return prompts


def select(prompts: list[dict], offset: int, count: int) -> list[dict]:
    if offset < 0 or count < 1 or offset + count > len(prompts):
        raise ValueError(f"--offset {offset} and --num-prompts {count} must select within the "
                         f"{len(prompts)} prompts (offset >= 0, num-prompts >= 1, offset + num-prompts <= {len(prompts)})")
    return prompts[offset:offset + count]


if __name__ == "__main__":
    print(f"wrote {write_prompts()} prompts to {PROMPTS_FILE}")
