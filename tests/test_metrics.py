"""The ARGS evaluation metrics on hand-computed examples, and their fast paths against slow twins."""
import math

import pytest
import torch

from args_fast.data.sentence_embedder import minilm_path
from args_fast.evaluation import metrics
from tiny_models import make_model, seed_of


def test_word_tokenize_follows_nltk_treebank_with_sentence_split():
    assert metrics.word_tokenize("Hello, world! It's fine.") == ["Hello", ",", "world", "!", "It", "'s", "fine", "."]
    # the inner period is split off because a sentence ends there (Punkt would do the same)
    assert metrics.word_tokenize("I agree. You don't") == ["I", "agree", ".", "You", "do", "n't"]
    assert metrics.word_tokenize("   ") == []


@pytest.mark.parametrize("tokens, n, expected", [
    ("a b a b a".split(), 2, 1 - 2 / 5),     # grams ab ba ab ba: 2 unique of 4
    ("a b c d".split(), 2, 1 - 3 / 4),       # 3 unique of 3
    ("a a a a".split(), 3, 1 - 1 / 3),       # aaa twice: 1 unique of 2
    ([], 2, 1.0),                            # no grams: 1 - 0/1
    (["x"], 4, 1.0),
])
def test_rep_n_hand_computed(tokens, n, expected):
    assert metrics.rep_n(tokens, n) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("text, expected", [
    ("a b c d e", (4 / 5) * (3 / 4) * (2 / 3)),          # all n-grams unique: (m/(m+1)) for m = 4, 3, 2
    ("a b a b a b", (2 / 6) * (2 / 5) * (2 / 4)),        # 2 unique n-grams of 5, 4, 3
    ("the cat sat", 0.0),                                # no 4-grams: 1 - rep_4 = 0/1
    ("", 0.0),
    ("Yes. Yes. Yes. Yes.", (2 / 8) * (2 / 7) * (2 / 6)),  # 8 tokens (Yes .)x4: {Yes ., . Yes}, ...
])
def test_diversity_hand_computed(text, expected):
    assert metrics.diversity(text) == pytest.approx(expected, abs=1e-12)


def test_diversity_matches_official_formula_on_random_text():
    """The official metrics.py, written out (percent scale and all), on random word soups."""
    g = torch.Generator().manual_seed(seed_of(7))
    words = "the a cat dog sat ran , . ! fast slow".split()

    def official(tokens):
        div = 1.0
        for n in range(2, 5):
            grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
            rep = 100 * (1.0 - len(set(grams)) / (len(grams) + 1))
            div *= 1.0 - rep / 100
        return div

    for length in (0, 1, 4, 5, 13, 40):
        idx = torch.randint(0, len(words), (length,), generator=g).tolist()
        text = " ".join(words[i] for i in idx)
        assert metrics.diversity(text) == pytest.approx(official(metrics.word_tokenize(text)), abs=1e-12)


def test_win_rate_counts_ties_as_half():
    assert metrics.win_rate([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]) == pytest.approx(1.5 / 3)
    assert metrics.win_rate([1.0 + 5e-5], [1.0]) == 0.5          # within tie_tol
    assert metrics.win_rate([1.0 + 5e-3], [1.0]) == 1.0
    with pytest.raises(ValueError, match="equal, non-empty"):
        metrics.win_rate([1.0], [1.0, 2.0])


def test_mean_std_is_population():
    mean, std = metrics.mean_std([1.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert all(math.isnan(v) for v in metrics.mean_std([]))


@pytest.fixture(scope="module")
def embedder():
    return metrics.SentenceEmbedder()


def test_embedder_matches_sentence_transformers(embedder):
    import sentence_transformers as st   # the independent twin, pinned in requirements.txt
    reference = st.SentenceTransformer(str(minilm_path()), device="cpu")
    texts = ["Hello there!", "I like to walk my dog in the park on sundays.", "", "word " * 400]  # the last is truncated
    ours = embedder.encode(texts)
    theirs = torch.as_tensor(reference.encode(texts, normalize_embeddings=True))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(texts)), rtol=0, atol=1e-5)


def test_coherence_hand_checked(embedder):
    same = embedder.coherence(["I love pizza with cheese."], ["I love pizza with cheese."])
    assert same[0] == pytest.approx(1.0, abs=1e-5)
    on_topic, off_topic = embedder.coherence(["What is your favorite food?"] * 2,
                                             ["My favorite food is pizza.", "The stock market closed lower today."])
    assert on_topic > off_topic + 0.2
    a, b = embedder.encode(["What is your favorite food?"]), embedder.encode(["My favorite food is pizza."])
    assert on_topic == pytest.approx(float((a * b).sum()), abs=1e-6)


def test_judges_order_clear_cases(embedder):
    pos, neg = "What a wonderful day, I love it!", "This is awful, I hate everything."
    v = metrics.vader([pos, neg])
    assert v[0] > 0.5 and v[1] < -0.5
    m = metrics.minilm_positivity(embedder, [pos, neg])
    assert m[0] > m[1]
    h = metrics.harmlessness(["Have a nice day, friend.", "You are a fucking idiot."])
    assert h[0] > 0.8 and h[1] < 0.2
    assert metrics.judge_scores(embedder, []) == {"vader": [], "minilm_positivity": [], "harmlessness": []}


def test_batched_reward_matches_unpadded_one_at_a_time():
    """score_sequences (left-padded batches) against the model run on each sequence alone (the official way)."""
    model = make_model("llama", "reward", 3, vocab=50, pad_token_id=0, score_std=None)   # HF's init throughout
    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (1, 7, 3, 12, 5)]
    batched = metrics.score_sequences(model, seqs, pad_id=0, batch_size=3)
    with torch.no_grad():
        alone = [model(torch.tensor([s])).logits.item() for s in seqs]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert len(set(round(x, 4) for x in alone)) == len(alone)   # the inputs really differ
    with pytest.raises(ValueError, match="at least one token"):
        metrics.score_sequences(model, [[1], []], pad_id=0)
