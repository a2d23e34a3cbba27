"""args_fast.custom_generate: ARGS as the decoding loop of transformers' ``generate``.

``policy.generate(..., custom_generate=args_fast.custom_generate, reward_model=rm, ...)`` must give
token for token what ``args_fast.generate`` gives (greedy and stochastic, left-padded batches, rows
stopping at different EOS steps), with the rewards under ``return_dict_in_generate``; feed a streamer
the prompt, each step's tokens and ``end()``; and refuse, naming them, the options it cannot honour
(from the call or from the policy's own generation_config).
"""
import functools

import pytest
import torch
from transformers import LogitsProcessorList, StoppingCriteriaList
from transformers.generation.logits_process import NoBadWordsLogitsProcessor
from transformers.generation.stopping_criteria import MaxTimeCriteria
from transformers.generation.streamers import BaseStreamer

import args_fast
from tiny_models import (PAD, assert_same_output, make_policy, make_reward, make_tokenizer, most_staggered_eos,
                         padded_prompts)

LENGTHS = [5, 2, 7, 1]
STEPS = 6
K, W = 4, 1.5


@functools.lru_cache(maxsize=None)
def models():
    return make_policy("llama", 0), make_reward("llama", 1)


@functools.lru_cache(maxsize=None)
def staggered_eos() -> int:
    """A token that ends the rows of the greedy and the seeded stochastic runs at different steps."""
    policy, reward = models()
    ids, mask = padded_prompts(LENGTHS, seed=0)
    out = args_fast.generate(policy, reward, ids, mask, k=K, w=W, max_new_tokens=STEPS, eos_token_id=[])
    return most_staggered_eos(out.sequences[:, ids.shape[1]:])


def hf(policy, reward, ids, mask, **kw):
    kw.setdefault("k", K)
    kw.setdefault("w", W)
    return policy.generate(input_ids=ids, attention_mask=mask, custom_generate=args_fast.custom_generate,
                           reward_model=reward, **kw)


class Recorder(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        assert not self.ended, "put after end()"
        self.puts.append(value.clone())

    def end(self):
        self.ended += 1


# ------------------------------------------------------------------ same output as args_fast.generate
@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "stochastic"])
def test_matches_args_fast_generate_with_staggered_eos(sample):
    policy, reward = models()
    ids, mask = padded_prompts(LENGTHS, seed=0)
    eos = staggered_eos()
    mode = dict(do_sample=True, temperature=0.7) if sample else {}
    want = args_fast.generate(policy, reward, ids, mask, k=K, w=W, mode="stochastic" if sample else "greedy",
                              temperature=0.7, max_new_tokens=STEPS, eos_token_id=[eos], pad_token_id=PAD,
                              generator=torch.Generator().manual_seed(3))
    assert want.rewards.isnan().any() and not want.rewards.isnan().all(), "test setup: rows stop at different steps"
    got = hf(policy, reward, ids, mask, max_new_tokens=STEPS, eos_token_id=eos, return_dict_in_generate=True,
             generator=torch.Generator().manual_seed(3), **mode)
    assert isinstance(got, args_fast.ARGSGenerateOutput)
    assert_same_output(got, want, atol=0)
    plain = hf(policy, reward, ids, mask, max_new_tokens=STEPS, eos_token_id=eos,
               generator=torch.Generator().manual_seed(3), **mode)
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, want.sequences)


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_other_families(family):
    policy, reward = make_policy(family, 0), make_reward(family, 1)
    ids, mask = padded_prompts(LENGTHS, seed=0)
    want = args_fast.generate(policy, reward, ids, mask, k=K, w=W, max_new_tokens=4)
    assert_same_output(hf(policy, reward, ids, mask, max_new_tokens=4, return_dict_in_generate=True), want, atol=0)


def test_stochastic_draws_come_from_the_generator():
    policy, reward = models()
    ids, mask = padded_prompts(LENGTHS, seed=0)
    runs = [hf(policy, reward, ids, mask, do_sample=True, temperature=2.0, max_new_tokens=STEPS, eos_token_id=None,
               generator=torch.Generator().manual_seed(seed)) for seed in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_defaults_and_unpadded_prompt():
    """No options at all: k=10, w=1, generate's default length (20 new tokens), the policy's EOS; a one-row
    prompt (generate drops its all-ones mask) and a call without attention_mask."""
    policy, reward = models()
    ids, mask = padded_prompts([6, 4], seed=1)
    want = args_fast.generate(policy, reward, ids, mask, max_new_tokens=20)
    with pytest.warns(UserWarning, match="max_length"):
        got = policy.generate(input_ids=ids, attention_mask=mask, custom_generate=args_fast.custom_generate,
                              reward_model=reward)
    assert torch.equal(got, want.sequences)
    one = ids[:1]
    want = args_fast.generate(policy, reward, one, k=K, w=W, max_new_tokens=STEPS)
    assert torch.equal(hf(policy, reward, one, None, max_new_tokens=STEPS), want.sequences)
    assert torch.equal(hf(policy, reward, one, torch.ones_like(one), max_new_tokens=STEPS), want.sequences)


def test_max_length_and_backend_pass_through():
    policy, reward = models()
    ids, mask = padded_prompts(LENGTHS, seed=0)
    want = args_fast.generate(policy, reward, ids, mask, k=K, w=W, max_new_tokens=3, eos_token_id=[],
                              backend="reference")
    got = hf(policy, reward, ids, mask, max_length=ids.shape[1] + 3, eos_token_id=None, backend="reference",
             return_dict_in_generate=True)
    assert_same_output(got, want, atol=0)
    with pytest.raises(ValueError, match="no-such-backend"):
        hf(policy, reward, ids, mask, max_new_tokens=2, backend="no-such-backend")


def test_ignored_options():
    policy, reward = models()
    ids, mask = padded_prompts(LENGTHS, seed=0)
    want = hf(policy, reward, ids, mask, max_new_tokens=STEPS)
    assert torch.equal(hf(policy, reward, ids, mask, max_new_tokens=STEPS, do_sample=False, top_p=0.5, top_k=2,
                          temperature=0.3), want)
    # a per-row shift of the logits: neither the top-k nor the winner changes
    assert torch.equal(hf(policy, reward, ids, mask, max_new_tokens=STEPS, renormalize_logits=True), want)


# ------------------------------------------------------------------ streamer
def test_streamer_gets_prompt_then_each_step_then_end():
    policy, reward = models()
    ids, mask = padded_prompts(LENGTHS, seed=0)
    eos = staggered_eos()
    streamer = Recorder()
    out = hf(policy, reward, ids, mask, max_new_tokens=STEPS, eos_token_id=eos, streamer=streamer)
    assert streamer.ended == 1
    assert torch.equal(streamer.puts[0], ids), "the prompt ids come first, as generate puts them"
    steps = streamer.puts[1:]
    assert all(s.shape == (len(LENGTHS),) for s in steps)
    assert torch.equal(torch.stack(steps, 1), out[:, ids.shape[1]:])
    # every row stopped before STEPS here: the stream ends with the output, not at max_new_tokens
    short = hf(policy, reward, ids, mask, max_new_tokens=STEPS, eos_token_id=[eos, int(out[0, -1])])
    streamer = Recorder()
    hf(policy, reward, ids, mask, max_new_tokens=STEPS, eos_token_id=[eos, int(out[0, -1])], streamer=streamer)
    assert len(streamer.puts) - 1 == short.shape[1] - ids.shape[1] and streamer.ended == 1


def test_decoder_on_step_hook():
    """ARGSDecoder.generate's optional on_step: each step's (B,) tokens, pad for finished rows; the output
    is unchanged by it."""
    policy, reward = models()
    ids, mask = padded_prompts(LENGTHS, seed=0)
    decoder = args_fast.ARGSDecoder(policy, reward, k=K, w=W, eos_token_id=[staggered_eos()], pad_token_id=PAD)
    seen = []
    out = decoder.generate(ids, mask, max_new_tokens=STEPS, on_step=seen.append)
    assert all(t.shape == (len(LENGTHS),) and t.dtype == torch.long for t in seen)
    assert torch.equal(torch.stack(seen, 1)[:, :out.rewards.shape[1]], out.sequences[:, ids.shape[1]:])
    assert (out.sequences[:, ids.shape[1]:] == PAD).any(), "test setup: some row finished early"
    assert_same_output(decoder.generate(ids, mask, max_new_tokens=STEPS), out, atol=0)


def test_streamer_ended_when_refused():
    policy, reward = models()
    ids, mask = padded_prompts([3], seed=0)
    streamer = Recorder()
    with pytest.raises(ValueError, match="repetition_penalty"):
        hf(policy, reward, ids, mask, max_new_tokens=2, repetition_penalty=1.2, streamer=streamer)
    assert streamer.ended == 1 and len(streamer.puts) == 1


# ------------------------------------------------------------------ refused options
REFUSED = {
    "num_beams": dict(num_beams=2),
    "repetition_penalty": dict(repetition_penalty=1.3),
    "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
    "min_new_tokens": dict(min_new_tokens=2),
    "bad_words_ids": dict(bad_words_ids=[[5]]),
    "suppress_tokens": dict(suppress_tokens=[5]),
    "forced_eos_token_id": dict(forced_eos_token_id=3),
    "max_time": dict(max_time=10.0),
    "guidance_scale": dict(guidance_scale=2.0),
    "output_scores": dict(output_scores=True, return_dict_in_generate=True),
    "top_p": dict(do_sample=True, top_p=0.9),
    "min_p": dict(do_sample=True, min_p=0.1),
    "top_k": dict(do_sample=True, top_k=2),
    "num_return_sequences": dict(do_sample=True, num_return_sequences=2),
    "logits_processor": dict(logits_processor=LogitsProcessorList([NoBadWordsLogitsProcessor([[5]], eos_token_id=2)])),
    "stopping_criteria": dict(stopping_criteria=StoppingCriteriaList([MaxTimeCriteria(10.0)])),
    "prefix_allowed_tokens_fn": dict(prefix_allowed_tokens_fn=lambda batch, ids: list(range(10))),
    "position_ids": dict(position_ids=torch.zeros(4, 7, dtype=torch.long)),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refuses_what_it_cannot_honour(name):
    policy, reward = models()
    ids, mask = padded_prompts(LENGTHS, seed=0)
    with pytest.raises(ValueError, match=name):
        hf(policy, reward, ids, mask, max_new_tokens=2, **REFUSED[name])


def test_top_k_at_least_k_is_a_no_op():
    """transformers' default top_k=50 (and any top_k >= k) keeps every ARGS candidate; a larger k must
    turn it off (top_k=0)."""
    policy, reward = models()
    ids, mask = padded_prompts(LENGTHS, seed=0)

    def run(**kw):
        return hf(policy, reward, ids, mask, do_sample=True, max_new_tokens=3,
                  generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(run(top_k=K), run(top_k=0))
    with pytest.raises(ValueError, match=r"top_k=50.*top_k=0"):
        run(k=60)
    run(k=60, top_k=0)


def test_prepared_processors_and_criteria_checked():
    """The backstop on what generate prepared: only the processors and criteria of honoured options pass."""
    from transformers import GenerationConfig
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper
    from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

    from args_fast.integrations import hf_generate
    config = GenerationConfig(do_sample=True, temperature=0.5, max_length=9, eos_token_id=2)
    ok = LogitsProcessorList([TemperatureLogitsWarper(0.5), TopKLogitsWarper(50)])
    assert hf_generate._check_processors(ok, config, 10) == []
    bad = LogitsProcessorList([TopKLogitsWarper(5), NoBadWordsLogitsProcessor([[5]], eos_token_id=2)])
    assert hf_generate._check_processors(bad, config, 10) == ["logits processor TopKLogitsWarper",
                                                            "logits processor NoBadWordsLogitsProcessor"]
    criteria = StoppingCriteriaList([MaxLengthCriteria(9), EosTokenCriteria(torch.tensor([2]))])
    assert hf_generate._check_criteria(criteria, config) == []
    criteria = StoppingCriteriaList([MaxLengthCriteria(12), EosTokenCriteria(torch.tensor([3])), MaxTimeCriteria(1.0)])
    assert hf_generate._check_criteria(criteria, config) == ["stopping criterion MaxLengthCriteria",
                                                             "stopping criterion EosTokenCriteria",
                                                             "stopping criterion MaxTimeCriteria"]


def test_assistant_model_and_model_inputs_refused():
    policy, reward = models()
    ids, mask = padded_prompts(LENGTHS, seed=0)
    with pytest.raises(ValueError, match="assistant_model"):
        hf(policy, reward, ids, mask, max_new_tokens=2, assistant_model=make_policy("llama", 5))
    gpt2 = make_policy("gpt2", 0)
    with pytest.raises(ValueError, match="token_type_ids"):
        hf(gpt2, make_reward("gpt2", 1), ids, mask, max_new_tokens=2, token_type_ids=torch.zeros_like(ids))


def test_missing_reward_model_and_direct_call():
    policy, _ = models()
    ids, mask = padded_prompts(LENGTHS, seed=0)
    with pytest.raises(ValueError, match="reward_model"):
        policy.generate(input_ids=ids, attention_mask=mask, custom_generate=args_fast.custom_generate,
                        max_new_tokens=2)
    with pytest.raises(TypeError, match="custom_generate=args_fast.custom_generate"):
        args_fast.custom_generate(policy, ids, reward_model=models()[1], attention_mask=mask)


def test_checkpoint_sampling_defaults():
    """A policy whose generation_config samples with top_p and a repetition penalty: refused with what to
    pass; the overrides give args_fast.generate's output."""
    policy, reward = make_policy("llama", 0), models()[1]
    policy.generation_config.update(do_sample=True, temperature=0.6, top_p=0.9, repetition_penalty=1.1)
    ids, mask = padded_prompts(LENGTHS, seed=0)
    with pytest.raises(ValueError, match=r"repetition_penalty=1\.1.*top_p=0\.9.*repetition_penalty=1\.0.*top_p=1\.0"):
        hf(policy, reward, ids, mask, max_new_tokens=STEPS)
    with pytest.raises(ValueError, match=r"repetition_penalty=1\.1") as error:
        hf(policy, reward, ids, mask, max_new_tokens=STEPS, do_sample=False)
    assert "top_p" not in str(error.value)
    greedy = args_fast.generate(policy, reward, ids, mask, k=K, w=W, max_new_tokens=STEPS)
    assert torch.equal(hf(policy, reward, ids, mask, max_new_tokens=STEPS, do_sample=False, repetition_penalty=1.0),
                       greedy.sequences)
    sampled = args_fast.generate(policy, reward, ids, mask, k=K, w=W, mode="stochastic", temperature=0.6,
                                 max_new_tokens=STEPS, generator=torch.Generator().manual_seed(1))
    got = hf(policy, reward, ids, mask, max_new_tokens=STEPS, top_p=1.0, repetition_penalty=1.0,
             generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, sampled.sequences)


def test_text_reward_needs_policy_tokenizer():
    policy, _ = models()
    tokenizer = make_tokenizer()

    def vowels(prompts, responses):
        return [float(sum(c in "aeiou" for c in r)) for r in responses]
    ids, mask = padded_prompts([4, 2], seed=2)
    with pytest.raises(ValueError, match="policy_tokenizer"):
        hf(policy, vowels, ids, mask, max_new_tokens=3)
    want = args_fast.generate(policy, vowels, ids, mask, k=K, w=W, max_new_tokens=3, tokenizer=tokenizer)
    got = hf(policy, vowels, ids, mask, max_new_tokens=3, policy_tokenizer=tokenizer, return_dict_in_generate=True)
    assert_same_output(got, want, atol=0)


def test_cache_keyword_of_either_transformers_version():
    """transformers 5.25 renamed the forward's ``past_key_values`` to ``cache`` (the old name warns):
    generate hands ARGS an empty ``cache`` there, which is not a user's model input; a filled one is refused."""
    from transformers import DynamicCache

    from args_fast import hf
    from args_fast.integrations.hf_generate import _check_model_kwargs

    ids = torch.tensor([[5, 6, 7]])
    for name in ("cache", "past_key_values"):
        assert _check_model_kwargs({name: DynamicCache(), "attention_mask": torch.ones_like(ids)}, ids) == []

    class NewStyle(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, use_cache=None):
            pass

    class OldStyle(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            pass

    assert hf.cache_kwarg(NewStyle()) == "cache" and hf.cache_kwarg(OldStyle()) == "past_key_values"
    # a real model: the keyword it takes and the cache it returns, whichever the installed version names them
    policy = make_policy("llama")
    filled = hf.output_cache(policy(input_ids=ids, use_cache=True))
    assert filled.get_seq_length() == 3
    name = hf.cache_kwarg(policy)
    assert _check_model_kwargs({name: filled}, ids) == [f"{name} (a filled cache: ARGS prefills its own from the "
                                                         "whole prompt)"]
