#!/usr/bin/env bash
# POST-HOC sensitivity check, run after results/eval was final: ARGS-greedy at larger w on the same
# 100 evaluation prompts. Not used to pick anything; the headline stays results/eval (w from the sweep slice).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for W in 2 3; do
  python -m args_fast.evaluation.run --offset 0 --num-prompts 100 --max-new-tokens 64 --batch-size 8 --seed 0 \
      --k 10 --w $W --methods greedy,args-greedy --out-dir results/eval_posthoc_w$W 2>results/logs/eval_posthoc_w$W.err
done
