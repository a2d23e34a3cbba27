"""The one mixing rule of several rewards (args_fast/rewards/kinds.py), per kind and wrapper, against a
literal oracle written here: each row alone, the policy's full forward for the logits, a full forward
of every candidate sequence through every reward for its raw reward, then the documented formula

    score = logit + sum_i w_i * (r_i - mean_i) / std_i,   reported: (r_i - mean_i) / std_i

in float64 (greedy argmax, or Gumbel-max on the same uniforms as the decoder draws). A RewardHead's
raw reward is its own scalar, mix . (W h + b), alone, in a list or normalised."""
import copy
import functools

import pytest
import torch

import args_fast
from args_fast import NormalizedReward, RewardHead, TokenReward, store_normalization
from tiny_models import make_chat_tokenizer, make_model, padded_prompts

VARIANT, K, STEPS, T = "llama-gqa-hd16", 3, 4, 0.7
LENGTHS = [3, 5]


@functools.lru_cache(maxsize=None)
def models():
    policy = make_model(VARIANT, "lm", 0, peaked="weights", attn="eager", context=64)
    hidden = policy.get_output_embeddings().in_features
    g = torch.Generator().manual_seed(7)
    head1 = RewardHead(policy, torch.randn(1, hidden, generator=g) * 2, torch.randn(1, generator=g), mix=[0.25])
    head3 = RewardHead(policy, torch.randn(3, hidden, generator=g) * 2, torch.randn(3, generator=g),
                       mix=[0.5, -1.0, 0.7])
    shared = make_model(VARIANT, "reward", 1, attn="eager", context=64)
    setattr(shared, shared.base_model_prefix, policy.base_model)
    separate = make_model(VARIANT, "reward", 2, attn="eager", context=64)
    lm = make_model(VARIANT, "lm", 3, peaked="weights", attn="eager", context=64)
    return policy, head1, head3, shared, separate, lm


def text_reward(prompts, responses):
    return [float(sum(map(ord, r)) % 97) / 40.0 - 1.0 for r in responses]


# ------------------------------------------------------------------ the oracle: raw rewards, literally
@torch.no_grad()
def raw_reward(reward, prompt: list[int], response: list[int], tok):
    """One reward's raw reward of prompt + response, from a full forward of the whole sequence."""
    seq = torch.tensor([prompt + response])
    if isinstance(reward, RewardHead):
        h = reward.policy.base_model(input_ids=seq).last_hidden_state[0, -1]
        out = reward.linear(h).float()
        return float(out @ reward.mix) if reward.mix is not None else float(out[0])
    if isinstance(reward, TokenReward):
        logp = torch.log_softmax(reward.lm(input_ids=seq).logits[0].double(), -1)
        return reward.scale * sum(float(logp[len(prompt) + j - 1, t]) for j, t in enumerate(response))
    if isinstance(reward, tuple):   # (model, reward_tokenizer): read as text
        model, rtok = reward
        enc = rtok([tok.decode(prompt, skip_special_tokens=True)], [tok.decode(response, skip_special_tokens=True)],
                   return_tensors="pt")
        return float(model(**enc).logits[0, 0])
    if isinstance(reward, torch.nn.Module):   # a score model: its head on the last hidden state
        h = reward.base_model(input_ids=seq).last_hidden_state[0, -1]
        return float(reward.score(h)[0])
    return text_reward([tok.decode(prompt, skip_special_tokens=True)],
                       [tok.decode(response, skip_special_tokens=True)])[0]


@torch.no_grad()
def oracle(policy, objectives, weights, mode, seed, tok):
    """objectives: [(reward as the oracle reads it, mean, std)]. -> (tokens (B, STEPS), reported (B, STEPS, n))."""
    ids, mask = padded_prompts(LENGTHS, seed=1)
    gen = torch.Generator().manual_seed(seed)
    rows = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    responses = [[] for _ in rows]
    reported = torch.zeros(len(rows), STEPS, len(objectives), dtype=torch.float64)
    for t in range(STEPS):
        uniforms = torch.rand((len(rows), K), generator=gen) if mode == "stochastic" else None
        for b, prompt in enumerate(rows):
            logits = policy(input_ids=torch.tensor([prompt + responses[b]])).logits[0, -1].float()
            top_logits, top_ids = torch.topk(logits, K)
            scores, normed = [], []
            for logit, v in zip(top_logits.tolist(), top_ids.tolist()):
                values = [(raw_reward(r, prompt, responses[b] + [v], tok) - m) / s for r, m, s in objectives]
                scores.append(logit + sum(w * x for w, x in zip(weights, values)))
                normed.append(values)
            scores = torch.tensor(scores, dtype=torch.float64)
            if uniforms is not None:
                u = uniforms[b].double().clamp(min=torch.finfo(torch.float32).tiny,
                                               max=1.0 - torch.finfo(torch.float32).eps)
                scores = scores / T - torch.log(-torch.log(u))
            j = int(scores.argmax())
            responses[b].append(top_ids[j].item())
            reported[b, t] = torch.tensor(normed[j], dtype=torch.float64)
    return torch.tensor(responses), reported


def decode(policy, reward_model, w, backend, mode, seed, tok, reward_tokenizer=None):
    ids, mask = padded_prompts(LENGTHS, seed=1)
    out = args_fast.generate(policy, reward_model, ids, mask, k=K, w=w, mode=mode, temperature=T,
                             max_new_tokens=STEPS, eos_token_id=[], pad_token_id=0, backend=backend, tokenizer=tok,
                             reward_tokenizer=reward_tokenizer, generator=torch.Generator().manual_seed(seed))
    return out.sequences[:, max(LENGTHS):], out.rewards


def check(reward_model, w, objectives, backends, reward_tokenizer=None):
    """Every backend and mode against the oracle: the same tokens, the same reported rewards."""
    policy, *_ = models()
    tok = make_chat_tokenizer()
    weights = w if isinstance(w, list) else [w]
    for mode in ("greedy", "stochastic"):
        want_tokens, want = oracle(policy, objectives, weights, mode, 5, tok)
        for backend in backends:
            tokens, got = decode(policy, reward_model, w, backend, mode, 5, tok, reward_tokenizer)
            assert torch.equal(tokens, want_tokens), (backend, mode, tokens, want_tokens)
            got = got.double() if got.dim() == 3 else got.double()[..., None]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, msg=f"{backend} {mode}")


HEADS = ("reference", "hf", "static")
MIXED = ("reference", "hf")


def test_a_head_with_its_own_mix_alone():
    _, head1, *_ = models()
    check(head1, 3.0, [(head1, 0.0, 1.0)], HEADS)


def test_a_list_of_one_head_keeps_its_mix():
    _, head1, *_ = models()
    check([head1], [3.0], [(head1, 0.0, 1.0)], HEADS)


def test_a_normalised_head_keeps_its_mix():
    _, head1, *_ = models()
    check(NormalizedReward(head1, 0.3, 0.5), 1.5, [(head1, 0.3, 0.5)], HEADS)
    check([NormalizedReward(head1, 0.3, 0.5)], [1.5], [(head1, 0.3, 0.5)], HEADS)


def test_a_multi_head_reward_head_is_one_objective_its_mixed_scalar():
    _, head1, head3, shared, *_ = models()
    check(head3, 1.2, [(head3, 0.0, 1.0)], HEADS)
    check([NormalizedReward(head3, -0.5, 2.0), head1, shared], [1.0, -0.8, 0.6],
          [(head3, -0.5, 2.0), (head1, 0.0, 1.0), (shared, 0.0, 1.0)], HEADS)


def test_a_large_mean_is_a_constant_shift():
    _, head1, _, shared, separate, _ = models()
    check(NormalizedReward(head1, 1e8, 0.5), 1.5, [(head1, 1e8, 0.5)], HEADS)
    check([NormalizedReward(separate, -3e9, 0.25), shared], [1.0, 1.0], [(separate, -3e9, 0.25), (shared, 0.0, 1.0)],
          MIXED)


def test_mixed_kinds():
    _, head1, head3, shared, separate, lm = models()
    token = TokenReward(lm, scale=0.5, cumulative=True)
    check([NormalizedReward(separate, -0.2, 0.5), token, text_reward, shared], [0.6, 0.8, 0.5, 1.0],
          [(separate, -0.2, 0.5), (token, 0.0, 1.0), (text_reward, 0.0, 1.0), (shared, 0.0, 1.0)], MIXED)
    # RewardHeads among other kinds run on reference only (hf refuses them with the reason)
    check([head3, NormalizedReward(head1, 0.1, 3.0), separate, text_reward], [0.7, 1.0, -0.4, 0.5],
          [(head3, 0.0, 1.0), (head1, 0.1, 3.0), (separate, 0.0, 1.0), (text_reward, 0.0, 1.0)], ("reference",))


def test_statistics_stored_in_the_config_and_their_override():
    _, _, _, shared, separate, _ = models()
    stored = copy.deepcopy(separate)
    store_normalization(stored, 0.7, 3.0)
    check(stored, 2.0, [(stored, 0.7, 3.0)], MIXED)
    check([stored, shared], [2.0, 1.0], [(stored, 0.7, 3.0), (shared, 0.0, 1.0)], MIXED)
    # statistics given by a NormalizedReward take the place of the stored ones
    check(NormalizedReward(stored, -1.0, 0.5), 2.0, [(stored, -1.0, 0.5)], MIXED)
    check(NormalizedReward(stored, 0.0, 1.0), 2.0, [(stored, 0.0, 1.0)], MIXED)


def test_a_model_read_through_reward_tokenizer_normalised():
    *_, separate, _ = models()
    tok = make_chat_tokenizer()
    check(NormalizedReward(separate, 0.1, 0.4), 2.0, [((separate, tok), 0.1, 0.4)], MIXED, reward_tokenizer=tok)
    stored = copy.deepcopy(separate)
    store_normalization(stored, 0.1, 0.4)
    check(stored, 2.0, [((stored, tok), 0.1, 0.4)], MIXED, reward_tokenizer=tok)


# ------------------------------------------------------------------ tokens do not depend on the means
@pytest.mark.parametrize("backend", HEADS)
def test_tokens_do_not_change_with_the_mean(backend):
    policy, head1, head3, shared, *_ = models()
    tok = make_chat_tokenizer()
    for mode in ("greedy", "stochastic"):
        outs = [decode(policy, NormalizedReward(head1, mean, 0.5), 1.5, backend, mode, 3, tok)
                for mean in (0.0, 1e8, -1e20, 1e29)]
        for (tokens, rewards), mean in zip(outs, (0.0, 1e8, -1e20, 1e29)):
            assert torch.equal(tokens, outs[0][0]), (mean, tokens, outs[0][0])
            want = (outs[0][1].double() - mean / 0.5).float()   # (r - mean) / std = r / std - mean / std
            torch.testing.assert_close(rewards, want, rtol=1e-6, atol=1e-4)
        many = [decode(policy, [NormalizedReward(head3, mean, 2.0), shared], [1.0, 0.5], backend, mode, 3, tok)[0]
                for mean in (0.0, 5e9)]
        assert torch.equal(many[0], many[1])


def test_the_mixing_rule_itself():
    from args_fast.rewards.kinds import Mixing
    mixing = Mixing([2.0, 0.0, -1.0], [1e8, 0.0, 3.0], [0.5, 1.0, 4.0], "cpu")
    raw = torch.tensor([[1e8 + 8.0, float("inf"), 7.0]])   # 1e8 + 8: exact in float32
    ranked, reported = mixing.apply(raw)
    # the means shift every candidate alike and are not ranked by; a zero weight's inf contributes nothing
    torch.testing.assert_close(ranked, torch.tensor([2.0 * (1e8 + 8.0) / 0.5 - 7.0 / 4.0]))
    assert reported[0, 0].item() == 16.0 and reported[0, 1].item() == float("inf") and reported[0, 2].item() == 1.0
