"""v1 vs v2 reward head on the SAME held-out data: the v2 test split (200 test-split contexts, 4 policy
replies each, up to 64 tokens; v1's 60 test contexts are its first 60, and neither head saw any test
conversation). Reads the cached features of `args-fast train-rm` (run that first).

    python results/compare_heads.py > results/logs/compare_heads.txt
"""
from safetensors.torch import load_file

from args_fast.training import reward_heads as rt
from args_fast.default_models import REWARD_WEIGHTS, load_default_policy

_, tokenizer = load_default_policy()
cfg = rt.DataConfig(contexts=200, samples=4, max_new_tokens=64, temperature=1.0, top_k=10, seed=0)
data = rt.split_data(None, tokenizer, "test", cfg)     # cached features: no model forward needed
pairs = rt.make_pairs(data, margin=0.3)
full, prefix = rt.pair_features(data, pairs)
print(f"test split: {cfg.contexts} contexts, {len(full)} complete-reply pairs, {len(prefix)} prefix pairs")
print("| head | complete-reply pair acc | prefix pair acc | acc at 2 / 4 / 8 / 16 / 32 / 48 tokens | "
      "Spearman(reward, vader) | reward std |")
print("|---|---|---|---|---|---|")
for name, path in (("v1 (160 contexts, 24 tokens)", "results/v1/reward_score.safetensors"),
                   ("v2 (800 contexts, 64 tokens)", str(REWARD_WEIGHTS))):
    w = load_file(path)["score.weight"][0]
    rewards = data["features"][..., -1, :] @ w
    by_len = " / ".join(f"{v['accuracy']:.3f}" for v in rt.per_length_accuracy(data, pairs, w).values())
    print(f"| {name} | {rt.accuracy(full, w):.3f} | {rt.accuracy(prefix, w):.3f} | {by_len} | "
          f"{rt._spearman(rewards.flatten(), data['judge'].flatten()):.3f} | {float(rewards.std()):.3f} |")
