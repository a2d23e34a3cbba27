"""Do positivity and relevance conflict? Single-objective ARGS optima on held-out prompts (issue 11, part 2).

    .venv/bin/python results/objectives/run_conflict.py      # writes results/objectives/conflict.{md,json}

Protocol, fixed before the first run:
- policy: the embedded SmolLM2-135M-Instruct (float32); rewards: the positivity head (the default
  reward model, labeller VADER) and the relevance head (labeller: MiniLM cosine of the user's message
  and the reply), both on the policy's own backbone (`args_fast/data/`, `args_fast/data/objectives/`).
- normalisation: each reward's mean and std over the policy's greedy replies (48 tokens) to 64
  chitchat *val* contexts (`reward_training.contexts_of("val", 64, seed=1)`), via `args_fast.calibrate`.
- prompts: 48 held-out prompts, `args_fast/data/eval_prompts.jsonl` offset 100 (test conversations;
  `eval` uses 0-99, `sweep` 200-231), chat template, 48 new tokens, batch 8.
- methods: greedy; ARGS-greedy k = 10 with normalised weights w = (1.5, 0) positivity only,
  (0, 1.5) relevance only, (0.75, 0.75) both.
- judges: positivity: VADER compound (the labeller, optimised) and MiniLM zero-shot positivity
  (held out); relevance: MiniLM cosine of message and reply (the labeller, optimised) and TF-IDF
  cosine (held out: sklearn TfidfVectorizer, English stop words, fitted on 5,000 chitchat train-split
  messages; no weights shared with anything trained or selected here). Means over prompts with the
  standard error; differences between the two single-objective runs paired by prompt.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import args_fast  # noqa: E402
from args_fast.decoding.inputs import cut_at_eos, encode_prompts  # noqa: E402
from args_fast.default_models import load_default_policy, load_default_reward  # noqa: E402
from args_fast.evaluation import metrics  # noqa: E402
from args_fast.data.prompts import load_prompts  # noqa: E402
from args_fast.training.reward_heads import contexts_of  # noqa: E402

OUT = Path(__file__).resolve().parent
NEW, BATCH, K = 48, 8, 10
METHODS = {"greedy": None, "positivity only": [1.5, 0.0], "relevance only": [0.0, 1.5], "both": [0.75, 0.75]}


def main():
    start = time.perf_counter()
    policy, tok = load_default_policy()
    rewards = [load_default_reward(policy=policy), load_default_reward(policy=policy, objective="relevance")]
    eos = policy.generation_config.eos_token_id
    calib_ids, calib_mask = encode_prompts(tok, contexts_of("val", 64, seed=1), chat_template=True)
    normalised = [args_fast.calibrate(policy, r, calib_ids, calib_mask, max_new_tokens=NEW, eos_token_id=eos)
                  for r in rewards]
    stats = {name: {"mean": n.mean, "std": n.std} for name, n in zip(("positivity", "relevance"), normalised)}
    print(f"calibrated {stats} ({time.perf_counter() - start:.0f}s)", file=sys.stderr)
    prompts = load_prompts()[100:148]
    messages = [p["prompt"] for p in prompts]
    embedder, tfidf = metrics.SentenceEmbedder(), metrics.TfidfRelevance()
    results, texts = {}, {}
    for name, w in METHODS.items():
        t0 = time.perf_counter()
        replies = []
        for i in range(0, len(messages), BATCH):
            ids, mask = encode_prompts(tok, messages[i:i + BATCH], chat_template=True)
            if w is None:
                out = policy.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                                      eos_token_id=eos, pad_token_id=policy.generation_config.pad_token_id)
                gen = out[:, ids.shape[1]:]
            else:
                out = args_fast.generate(policy, normalised, ids, mask, k=K, w=w, max_new_tokens=NEW, eos_token_id=eos)
                gen = out.sequences[:, ids.shape[1]:]
            rows, _ = cut_at_eos(gen, [eos] if isinstance(eos, int) else eos)
            replies += [tok.decode(r, skip_special_tokens=True) for r in rows]
        seconds = time.perf_counter() - t0
        vader, positivity = metrics.vader(replies), metrics.minilm_positivity(embedder, replies)
        relevance, tfidf_rel = embedder.coherence(messages, replies), tfidf(messages, replies)
        results[name] = {"w": w, "seconds": round(seconds, 1),
                         "per_prompt": {"vader": vader, "minilm_positivity": positivity, "minilm_relevance": relevance,
                                        "tfidf_relevance": tfidf_rel}}
        texts[name] = replies
        print(f"{name}: {seconds:.0f}s", file=sys.stderr)
    judges = ("vader", "minilm_positivity", "minilm_relevance", "tfidf_relevance")
    summary = {name: {j: metrics.mean_se(r["per_prompt"][j]) for j in judges} for name, r in results.items()}
    a, b = results["positivity only"]["per_prompt"], results["relevance only"]["per_prompt"]
    paired = {j: metrics.mean_se([x - y for x, y in zip(a[j], b[j])]) for j in judges}
    import transformers
    meta = {"command": "python results/objectives/run_conflict.py", "normalisation": stats,
            "machine": {"cpu_count": __import__("os").cpu_count(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "python": platform.python_version()},
            "total_seconds": round(time.perf_counter() - start, 1)}
    (OUT / "conflict.json").write_text(json.dumps({**meta, "summary": summary, "paired_pos_minus_rel": paired,
                                                   "results": results, "replies": texts}, indent=1) + "\n")
    lines = ["# Positivity vs relevance: single-objective ARGS optima (held-out prompts)", "",
             f"- command: `{meta['command']}` ({meta['total_seconds']:.0f} s on 2 CPU cores, torch {torch.__version__})",
             "- protocol: see the script's docstring (fixed before the run); 48 held-out prompts, 48 new tokens, "
             "ARGS-greedy k = 10, normalised rewards "
             + ", ".join(f"{n}: mean {s['mean']:.3f} std {s['std']:.3f}" for n, s in stats.items()), "",
             "| Method | w (pos, rel) | VADER (pos labeller) | MiniLM positivity (held out) | "
             "MiniLM relevance (rel labeller) | TF-IDF relevance (held out) |", "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        cells = " | ".join(f"{m:.3f} ± {se:.3f}" for m, se in (s[j] for j in judges))
        lines.append(f"| {name} | {results[name]['w'] or '-'} | {cells} |")
    cells = " | ".join(f"{m:+.3f} ± {se:.3f}" for m, se in (paired[j] for j in judges))
    lines += [f"| positivity only - relevance only (paired) | | {cells} |", "",
              "± = standard error over the 48 prompts."]
    (OUT / "conflict.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
