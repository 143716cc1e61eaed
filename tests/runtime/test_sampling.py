"""Per-request sampling in one batch, on the default model."""
from __future__ import annotations

import pytest
import torch

from infernetes import SamplingParams
from infernetes.runtime.layers.penalties import apply_penalties

PROMPT = "Tell me a short story about a robot."


def _texts(outputs):
    return [c.text for o in outputs for c in o.outputs]


def test_seed_reproduces_per_request_whatever_the_batch(smollm2):
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=42, max_tokens=16, ignore_eos=True)
    alone = smollm2.generate(PROMPT, seeded)
    other = SamplingParams(temperature=1.2, max_tokens=16)
    mixed = smollm2.generate([PROMPT, "Hello", PROMPT], [other, other, seeded])
    assert mixed[2].outputs[0].token_ids == alone[0].outputs[0].token_ids


def test_different_seeds_differ(smollm2):
    outs = smollm2.generate([PROMPT] * 2, [SamplingParams(temperature=1.0, seed=s, max_tokens=16,
                                                          ignore_eos=True)
                                           for s in (1, 2)])
    assert outs[0].outputs[0].token_ids != outs[1].outputs[0].token_ids


def test_top_k_one_and_tiny_top_p_equal_greedy(smollm2):
    greedy = smollm2.generate(PROMPT, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    top_k = smollm2.generate(PROMPT, SamplingParams(temperature=1.0, top_k=1, max_tokens=12, ignore_eos=True))
    top_p = smollm2.generate(PROMPT, SamplingParams(temperature=1.0, top_p=1e-6, max_tokens=12, ignore_eos=True))
    min_p = smollm2.generate(PROMPT, SamplingParams(temperature=1.0, min_p=1.0, max_tokens=12, ignore_eos=True))
    expected = greedy[0].outputs[0].token_ids
    for out in (top_k, top_p, min_p):
        assert out[0].outputs[0].token_ids == expected


def test_n_samples(smollm2):
    out = smollm2.generate(PROMPT, SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=8,
                                                     ignore_eos=True))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    assert all(len(c.token_ids) == 8 for c in out.outputs)


def test_repetition_penalties_reduce_repeats(smollm2):
    prompt = "Repeat after me: la la la la la la la la"
    plain = smollm2.generate(prompt, SamplingParams(temperature=0, max_tokens=24,
                                                    ignore_eos=True))[0].outputs[0].token_ids
    for params in (SamplingParams(temperature=0, max_tokens=24, ignore_eos=True,
                                  repetition_penalty=2.0),
                   SamplingParams(temperature=0, max_tokens=24, ignore_eos=True,
                                  frequency_penalty=2.0)):
        penalized = smollm2.generate(prompt, params)[0].outputs[0].token_ids
        assert len(set(penalized)) > len(set(plain))


def test_penalty_definitions():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5], [2.0, -2.0, 1.0, 0.5]])
    out = apply_penalties(logits, [[0], [3]], [[1, 1], [2]],
                          repetition=torch.tensor([2.0, 1.0]),
                          presence=torch.tensor([0.0, 0.5]),
                          frequency=torch.tensor([0.0, 0.25]))
    # Row 0: repetition only, on prompt and output tokens (0 and 1); 2 and 3 unseen.
    assert out[0].tolist() == [1.0, -4.0, 1.0, 0.5]
    # Row 1: presence and frequency apply to output tokens only (token 2, once).
    assert out[1].tolist() == [2.0, -2.0, 0.25, 0.5]


def test_min_tokens_and_max_tokens(smollm2):
    eos = smollm2.get_tokenizer().eos_token_id
    question = [{"role": "user", "content": "What is the capital of France?"}]
    short = smollm2.chat(question, SamplingParams(temperature=0, max_tokens=64))[0].outputs[0]
    assert short.finish_reason == "stop" and short.token_ids[-1] == eos
    longer = smollm2.chat(question,
                          SamplingParams(temperature=0, max_tokens=64,
                                         min_tokens=len(short.token_ids) + 5))[0].outputs[0]
    assert len(longer.token_ids) >= len(short.token_ids) + 5
    assert eos not in longer.token_ids[:len(short.token_ids) + 4]
    capped = smollm2.chat(question, SamplingParams(temperature=0, max_tokens=5))[0].outputs[0]
    assert capped.finish_reason == "length" and len(capped.token_ids) == 5


def test_stop_strings_cut_text_and_never_leak(smollm2):
    base = smollm2.generate(PROMPT, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))[0].outputs[0]
    words = base.text.split()
    stop = words[len(words) // 2]
    out = smollm2.generate(PROMPT, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True,
                                                  stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert stop not in out.text and base.text.startswith(out.text)
    kept = smollm2.generate(PROMPT, SamplingParams(temperature=0, max_tokens=40, stop=[stop], ignore_eos=True,
                                                   include_stop_str_in_output=True))[0]
    assert kept.outputs[0].text.endswith(stop)


def test_stop_token_ids(smollm2):
    base = smollm2.generate(PROMPT, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0].outputs[0]
    stop_id = base.token_ids[5]
    out = smollm2.generate(PROMPT, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True,
                                                  stop_token_ids=[stop_id]))[0].outputs[0]
    assert out.token_ids == base.token_ids[:base.token_ids.index(stop_id) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id


def test_ignore_eos_runs_to_max_tokens(smollm2):
    out = smollm2.chat([{"role": "user", "content": "Say yes."}],
                       SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 40


def test_logprobs_shape(smollm2):
    out = smollm2.generate(PROMPT, SamplingParams(temperature=0.8, seed=3, max_tokens=6,
                                                  logprobs=4, ignore_eos=True))[0].outputs[0]
    assert len(out.logprobs) == 6
    for token_id, position in zip(out.token_ids, out.logprobs):
        assert token_id in position and 4 <= len(position) <= 5
        ranks = sorted(p.rank for t, p in position.items() if t != token_id or p.rank <= 4)
        assert ranks[:4] == [1, 2, 3, 4]
        assert all(p.logprob <= 0 for p in position.values())
    assert out.cumulative_logprob == pytest.approx(
        sum(pos[t].logprob for t, pos in zip(out.token_ids, out.logprobs)))


@pytest.mark.parametrize("field,value", [
    ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -2), ("min_p", 2.0),
    ("n", 0), ("max_tokens", 0), ("presence_penalty", 3.0), ("frequency_penalty", -3.0),
    ("repetition_penalty", 0.0), ("min_tokens", -1), ("logprobs", -1), ("stop", [""]),
])
def test_invalid_sampling_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_stop_string_on_the_last_allowed_token_reports_stop(smollm2):
    params = dict(temperature=0, max_tokens=10, ignore_eos=True)
    base = smollm2.generate(PROMPT, SamplingParams(**params))[0].outputs[0]
    text = base.text.rstrip()
    stop = next(text[-n:] for n in range(3, len(text) + 1) if text.find(text[-n:]) == len(text) - n)
    out = smollm2.generate(PROMPT, SamplingParams(**params, stop=[stop]))[0].outputs[0]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    assert out.text == text[:-len(stop)]


def test_a_vanishing_top_p_keeps_the_most_likely_token():
    """Fuzzing found top_p=7e-46: float rounding dropped every token and the NaN draw killed
    the engine loop. The most likely token always stays."""
    import torch

    from infernetes.runtime.layers.sampler import SamplingRow, sample
    logits = torch.randn(3, 500) * 5
    params = SamplingParams(temperature=1.0, top_p=6.9741346213797825e-46, min_p=0.005,
                            repetition_penalty=0.5)
    rows = [SamplingRow(params, [1, 2, 3], [], None) for _ in range(3)]
    expected = logits.clone()
    from infernetes.runtime.layers.penalties import apply_penalties
    apply_penalties(expected, [[1, 2, 3]] * 3, [[]] * 3, torch.tensor([0.5] * 3),
                    torch.zeros(3), torch.zeros(3))
    assert [t.token_id for t in sample(logits, rows)] == expected.argmax(dim=-1).tolist()
