"""How the held-out MiniLM positivity judge relates to VADER (the reward model's training label).

Texts: chitchat turns (>= 5 words) of the first six turns of VAL-split conversations, shuffled with
seed 0, first 600. Run: python results/judge_agreement.py
"""
import random

import numpy as np
from scipy.stats import spearmanr

from args_fast.data.chitchat import conversations
from args_fast.evaluation import metrics

texts = [t for _, c in conversations("val") for turn in c["messages"][:6]
         if len((t := " ".join(m["text"] for m in turn)).split()) >= 5]
random.Random(0).shuffle(texts)
texts = texts[:600]
v = np.array(metrics.vader(texts))
m = np.array(metrics.minilm_positivity(metrics.SentenceEmbedder(), texts))
# ties (VADER gives many texts 0.0) share their average rank
print(f"n={len(texts)} pearson={np.corrcoef(v, m)[0, 1]:.3f} spearman={spearmanr(v, m).statistic:.3f}")
