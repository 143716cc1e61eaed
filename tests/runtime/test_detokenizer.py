"""Incremental detokenization is exact for multi-byte characters; stop strings never leak."""
from __future__ import annotations

from infernetes import SamplingParams
from infernetes.runtime.engine.detokenizer import IncrementalDetokenizer

TEXT = "Café déjà vu — 你好, 世界! 🎉🚀 naïve Ωmega ünïcödé"


def test_token_by_token_equals_whole_decode(smollm2):
    tokenizer = smollm2.get_tokenizer()
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("Say:"), SamplingParams())
    pieces = []
    for token_id in ids:
        detok.update([token_id])
        pieces.append(detok.delta(finished=False))
    assert "".join(pieces) == TEXT == tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_split_across_tokens_is_held_back(smollm2):
    tokenizer = smollm2.get_tokenizer()
    ids = tokenizer.encode("alpha beta gamma delta", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [1], SamplingParams(stop=["gamma"]))
    streamed, found = "", None
    for token_id in ids:
        found = detok.update([token_id])
        streamed += detok.delta(finished=found is not None)
        if found:
            break
    assert found == "gamma"
    assert streamed == "alpha beta " and detok.text == "alpha beta "


def test_generated_multibyte_text_matches_decode(smollm2):
    out = smollm2.chat([{"role": "user", "content": f"Repeat exactly: {TEXT}"}],
                       SamplingParams(temperature=0, max_tokens=48))[0].outputs[0]
    tokenizer = smollm2.get_tokenizer()
    assert out.text == tokenizer.decode(out.token_ids)
    assert "\ufffd" not in out.text
