"""Recompute Spearman(reward, judge) of the shipped reward heads with scipy's tie-aware Spearman
(average ranks). The heads' reports were first written with ordinal ranks (ties broken by position).

The test replies are re-sampled exactly as `args-fast train-rm` sampled them (the same contexts,
the same seeded generator); the reward mean and std over them must equal the shipped report's,
which checks that these are the very replies the reports were computed on. Then the shipped JSON
files get the recomputed value (and the old one under `..._ordinal_ranks`).

    python results/recompute_spearman.py > results/logs/spearman_recomputed.txt
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from args_fast.default_models import load_default_policy
from args_fast.training import reward_heads as rt

HEADS = (  # (name, weights, report, objective, test-split settings of its own training run)
    ("positivity (default)", "args_fast/data/reward_score.safetensors", "args_fast/data/reward_model.json",
     "positivity", dict(contexts=200, max_new_tokens=64)),
    ("relevance", "args_fast/data/objectives/relevance/reward_score.safetensors",
     "args_fast/data/objectives/relevance/reward_model.json", "relevance", dict(contexts=200, max_new_tokens=64)),
    ("positivity v1", "results/v1/reward_score.safetensors", "results/v1/reward_model.json",
     "positivity", dict(contexts=60, max_new_tokens=24)),
)


def ordinal_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """What the reports used before: Pearson of ordinal ranks (ties broken by position)."""
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


def main() -> int:
    model, tokenizer = load_default_policy()
    write = "--write" in sys.argv
    for name, weights, report_path, objective, split in HEADS:
        cfg = rt.DataConfig(samples=4, temperature=1.0, top_k=10, seed=0, **split)
        data = rt.split_data(model, tokenizer, "test", cfg, objective=objective)
        w = load_file(weights)["score.weight"][0]
        rewards = (data["features"][..., -1, :] @ w).flatten()
        judge = data["judge"].flatten()
        report = json.loads(Path(report_path).read_text())
        res = report["results"]
        # within 1e-3: the positivity head's report was written by an earlier feature extraction whose
        # rewards differ in the fourth decimal on the same replies (relevance's, from the same cached
        # replies, match to all four)
        same = (abs(float(rewards.mean()) - res["test_reward_mean"]) <= 1e-3
                and abs(float(rewards.std()) - res["test_reward_std"]) <= 1e-3)
        new, old = round(rt._spearman(rewards, judge), 4), round(ordinal_spearman(rewards, judge), 4)
        tied = len(judge) - len(judge.unique())
        print(f"{name}: {len(judge)} test replies ({cfg.contexts} contexts, {cfg.max_new_tokens} tokens), "
              f"judge values tied: {tied}")
        print(f"  reward mean/std {float(rewards.mean()):.4f} / {float(rewards.std()):.4f}, "
              f"report {res['test_reward_mean']} / {res['test_reward_std']}: "
              f"{'the same replies (within 1e-3)' if same else 'DIFFERENT replies'}")
        print(f"  Spearman: scipy (average ranks) {new}, ordinal ranks {old}, in the report "
              f"{res.get('judge_vs_reward_spearman_test_ordinal_ranks', res['judge_vs_reward_spearman_test'])}")
        if not same:
            print("  not written: the replies differ from the report's")
            continue
        if write and "judge_vs_reward_spearman_test_ordinal_ranks" not in res:
            res["judge_vs_reward_spearman_test_ordinal_ranks"] = res["judge_vs_reward_spearman_test"]
            res["judge_vs_reward_spearman_test"] = new
            res["judge_vs_reward_spearman_recomputed_by"] = "python results/recompute_spearman.py --write"
            Path(report_path).write_text(json.dumps(report, indent=1) + "\n")
            print(f"  written to {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
