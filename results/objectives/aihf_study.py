"""AIHF-style reward learning: preference pairs plus demonstrations, held-out accuracy vs the number of pairs.

    .venv/bin/python results/objectives/aihf_study.py     # writes results/objectives/aihf.{md,json}

Needs the replies and features `args-fast train-rm` samples (run `args-fast train-rm --objective
relevance` first with the defaults; this script reads its feature cache and samples nothing).

Protocol, fixed before the first run:
- data: the train-rm default splits (800 train / 150 val / 200 test chitchat contexts, 4 policy replies
  each, 64 new tokens) and, per objective (positivity: VADER; relevance: MiniLM cosine), the
  labeller's preference pairs (margin 0.3 / 0.1), complete replies only (no prefix pairs).
- demonstrations (AIHF, Li et al. 2025): the human turn that followed the context in the chitchat
  conversation (10-300 characters), kept when the labeller rates it at least the 75th percentile of
  the policy's own train replies; each is taken as preferred over every one of the policy's replies
  to its context, with no further labels. Features: the backbone's final hidden state at <|im_end|>
  after the chat-templated context + the human reply.
- fits: linear head, pairwise loss (ARGS eq. 1) on the preference pairs (+ the demonstration pairs,
  weight 1), L2 from the train-rm grid chosen on val pair accuracy; preference pairs subsampled to
  50, 100, 200, 400 and all, 5 random subsets each (seeds 0-4), with and without demonstrations;
  an "unbalanced" variant draws the subset only from pairs whose preferred reply is the longer one.
- measure: accuracy on the test split's labeller pairs (contexts never used in fitting), mean and
  sd over the 5 subsets.
"""
from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from args_fast.training import reward_heads as rt  # noqa: E402
from args_fast.default_models import load_default_policy  # noqa: E402

OUT = Path(__file__).resolve().parent
SIZES = (50, 100, 200, 400, None)
SEEDS = range(5)
SPLITS = {"train": 800, "val": 150, "test": 200}


def fit_select(train_diff, val_diff, scale):
    best = None
    for l2 in rt.L2_GRID:
        w = rt.fit_linear_pairwise(train_diff, train_diff[:0], l2, 0.0, scale)
        key = (rt.accuracy(val_diff, w), -float(rt.pairwise_loss(val_diff @ w, torch.zeros(len(val_diff)))))
        if best is None or key > best[0]:
            best = (key, w)
    return best[1]


def main():
    start = time.perf_counter()
    model, tok = load_default_policy()
    cfgs = {s: rt.DataConfig(n, 4, 64, 1.0, 10, 0, 64) for s, n in SPLITS.items()}
    report = {"command": "python results/objectives/aihf_study.py", "objectives": {}}
    contexts, replies = rt.contexts_of("train", SPLITS["train"], 0, with_replies=True)
    human = {"train": rt.human_features(model, tok, contexts, replies)}   # demonstrations: train contexts only
    lines = ["# AIHF-style learning: preference pairs + demonstrations (held-out pair accuracy)", "",
             "- command: `python results/objectives/aihf_study.py` (protocol in its docstring, fixed before the run)",
             "- test accuracy on the test split's labeller pairs, mean ± sd over 5 random subsets of the train pairs", ""]
    for objective in ("positivity", "relevance"):
        data = {s: rt.split_data(model, tok, s, cfgs[s], None, objective) for s in SPLITS}
        if not all(d["from_cache"] for d in data.values()):
            print("note: features were sampled now (no train-rm cache)", file=sys.stderr)
        margin = rt.OBJECTIVES[objective]["margin"]
        pairs = {s: rt.make_pairs(d, margin) for s, d in data.items()}
        diffs = {s: rt.pair_features(data[s], pairs[s])[0] for s in SPLITS}
        scale = data["train"]["features"].flatten(0, 2).std(0).clamp(min=1e-6)
        demo_diff, demo_info = rt.demonstration_pairs(data["train"], human["train"], objective)
        demos, kept, threshold = demo_info["demonstrations"], demo_info["human_replies_considered"], demo_info["threshold"]
        idx = pairs["train"]["idx"]
        lengths = data["train"]["lengths"]
        longer = (lengths[idx[:, 0], idx[:, 1]] > lengths[idx[:, 0], idx[:, 2]]).nonzero().flatten().tolist()
        table = {}
        for variant, pool in (("balanced", list(range(len(idx)))), ("unbalanced (preferred = longer)", longer)):
            for size in SIZES:
                if size is not None and size > len(pool):
                    continue
                for demo in (False, True):
                    accs = []
                    for seed in SEEDS if size is not None else [0]:
                        pick = pool if size is None else random.Random(seed).sample(pool, size)
                        train = diffs["train"][pick]
                        if demo:
                            train = torch.cat([train, demo_diff])
                        w = fit_select(train, diffs["val"], scale)
                        accs.append(rt.accuracy(diffs["test"], w))
                    key = f"{variant}|{size or 'all'}|{'with' if demo else 'without'}"
                    table[key] = {"mean": statistics.mean(accs), "sd": statistics.pstdev(accs), "runs": accs}
                    print(f"{objective} {key}: {table[key]['mean']:.4f}", file=sys.stderr)
        report["objectives"][objective] = {"pairs": {s: len(diffs[s]) for s in SPLITS}, "demonstrations": demos,
                                           "human_replies_considered": kept, "demo_threshold": threshold,
                                           "results": table}
        lines += [f"## {objective} (labeller: {rt.OBJECTIVES[objective]['judge']})", "",
                  f"train / val / test labeller pairs: {len(diffs['train'])} / {len(diffs['val'])} / "
                  f"{len(diffs['test'])}; demonstrations: {demos} of {kept} human replies (labeller >= "
                  f"{threshold:.3f}, the 75th percentile of the policy's train replies), each preferred over the "
                  f"policy's 4 replies ({len(demo_diff)} pairs)", "",
                  "| Subset | Pairs | Without demonstrations | With demonstrations | Gain |", "|---|---|---|---|---|"]
        for variant in ("balanced", "unbalanced (preferred = longer)"):
            for size in SIZES:
                a, b = (table.get(f"{variant}|{size or 'all'}|{d}") for d in ("without", "with"))
                if a is None:
                    continue
                lines.append(f"| {variant} | {size or 'all'} | {a['mean']:.3f} ± {a['sd']:.3f} | "
                             f"{b['mean']:.3f} ± {b['sd']:.3f} | {b['mean'] - a['mean']:+.3f} |")
        lines.append("")
    report["seconds"] = round(time.perf_counter() - start, 1)
    lines.append(f"Total {report['seconds']:.0f} s on 2 CPU cores (features from the train-rm cache).")
    (OUT / "aihf.json").write_text(json.dumps(report, indent=1) + "\n")
    (OUT / "aihf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
