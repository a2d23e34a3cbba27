#!/usr/bin/env bash
# The real-model evaluation behind results/: w chosen on a sweep slice, then the held-out eval, then
# the full w x k sweep. CPU-only; each step runs alone (2 shared cores). Run from the repo root:
#   nohup bash results/run_real.sh > results/logs/run_real.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p results/logs
SWEEP="--offset 200 --num-prompts ${SWEEP_PROMPTS:-8} --max-new-tokens ${SWEEP_TOKENS:-32} --batch-size 8 --seed 0 --out-dir results/sweep"

# 1. the k = 10 column of the sweep (prompts 200.., disjoint from the eval prompts 0..99) picks w
python -m args_fast.evaluation.sweep $SWEEP --ks 10 --ws 0,0.5,1,1.5,2,3,5 --resume 2>results/logs/sweep_k10.err
# rule: the w with the highest average reward among those whose coherence is within 0.05 of greedy's
W=$(python - <<'PY'
import json
cells = [c for c in json.load(open("results/sweep/sweep.json"))["cells"] if c["k"] == 10]
greedy = next(c for c in cells if c["w"] == 0)
ok = [c for c in cells if c["w"] > 0 and c["coherence"] >= greedy["coherence"] - 0.05] or [c for c in cells if c["w"] > 0]
print(f'{max(ok, key=lambda c: c["reward"])["w"]:g}')
PY
)
echo "chosen w = $W (k = 10, from results/sweep, prompts 200-$((200 + ${SWEEP_PROMPTS:-8} - 1)))" | tee results/logs/chosen_w.txt

# 2. the held-out evaluation: prompts 0..99, every method
python -m args_fast.evaluation.run --offset 0 --num-prompts ${EVAL_PROMPTS:-100} --max-new-tokens ${EVAL_TOKENS:-64} \
    --batch-size 8 --seed 0 --k 10 --w "$W" --out-dir results/eval 2>results/logs/eval.err

# 3. the full grid (reuses the k = 10 cells and the shared greedy run)
python -m args_fast.evaluation.sweep $SWEEP --ks 5,10,20,40 --ws 0,0.5,1,1.5,2,3,5 --resume 2>results/logs/sweep_full.err
echo done
