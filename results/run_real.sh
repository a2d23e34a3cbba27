#!/usr/bin/env bash
# The real-model evaluation behind results/ (protocol v2; this file was written before any decoding
# with the v2 reward model ran, and the rule below was fixed then). CPU-only; each step runs alone.
# From the repo root:   nohup bash results/run_real.sh > results/logs/run_real.log 2>&1 &
#
# 1. Choose w (k = 10, the paper's default) on the SELECTION slice, prompts 200-247 (disjoint from the
#    evaluation prompts 0-99), with 64 new tokens as in the evaluation. Rule: among w > 0, the highest
#    average reward whose diversity >= greedy's and coherence >= greedy's - 0.05 (the issue's two
#    non-reward targets); if no w passes both, coherence alone; if none passes that, the highest reward.
# 2. The held-out evaluation: prompts 0-99, every method, 64 new tokens, k = 10, the chosen w.
# 3. The Figure-2 grid (w x k) on the selection slice, 32 new tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p results/logs
SLICE="--offset 200 --num-prompts ${SELECT_PROMPTS:-48} --batch-size 8 --seed 0"

# 1. selection of w
python -m args_fast.evaluation.sweep $SLICE --max-new-tokens ${EVAL_TOKENS:-64} --ks 10 --ws 0,0.5,1,1.5,2,3,5 \
    --out-dir results/select_w --resume 2>results/logs/select_w.err
W=$(python - <<'PY'
import json
cells = [c for c in json.load(open("results/select_w/sweep.json"))["cells"] if c["k"] == 10]
g = next(c for c in cells if c["w"] == 0)
args = [c for c in cells if c["w"] > 0]
both = [c for c in args if c["diversity"] >= g["diversity"] and c["coherence"] >= g["coherence"] - 0.05]
coherent = [c for c in args if c["coherence"] >= g["coherence"] - 0.05]
pool, why = ((both, "diversity >= greedy and coherence >= greedy - 0.05") if both else
             (coherent, "coherence >= greedy - 0.05 (no w kept diversity)") if coherent else (args, "highest reward (no w passed)"))
best = max(pool, key=lambda c: c["reward"])
print(f'{best["w"]:g} {why}')
PY
)
echo "chosen w = ${W%% *} by: ${W#* } (k = 10, results/select_w, prompts 200-$((200 + ${SELECT_PROMPTS:-48} - 1)))" | tee results/logs/chosen_w.txt
W=${W%% *}

# 2. the held-out evaluation
python -m args_fast.evaluation.run --offset 0 --num-prompts ${EVAL_PROMPTS:-100} --max-new-tokens ${EVAL_TOKENS:-64} \
    --batch-size 8 --seed 0 --k 10 --w "$W" --out-dir results/eval 2>results/logs/eval.err

# 3. the w x k grid (Figure 2)
python -m args_fast.evaluation.sweep $SLICE --max-new-tokens ${SWEEP_TOKENS:-32} --ks 5,10,20,40 --ws 0,0.5,1,1.5,2,3,5,10 \
    --out-dir results/sweep --resume 2>results/logs/sweep.err
echo done
