"""The reasoning parsers as pure functions: the whole-text split, and the streamed split at
every point a tokenizer could cut the text (no tag, not even half of one, leaks into either
field, and the pieces always add up to the whole-text answer)."""
from __future__ import annotations

import pytest

from infernetes.runtime.server.reasoning import (
    REASONING_PARSERS, ReasoningDelta, ReasoningStream, get_reasoning_parser, split_reasoning)

DEEPSEEK = REASONING_PARSERS["deepseek_r1"]
QWEN3 = REASONING_PARSERS["qwen3"]

# (parser, generated text, reasoning_content, content)
CASES = [
    # DeepSeek-R1: the template opened the think block, the output only closes it.
    (DEEPSEEK, "Paris is the capital.\n</think>\n\nParis.", "Paris is the capital.\n",
     "\n\nParis."),
    (DEEPSEEK, "<think>\nhmm</think>answer", "\nhmm", "answer"),
    (DEEPSEEK, "still thinking when max_tokens hit", "still thinking when max_tokens hit", None),
    (DEEPSEEK, "<think>never closed", "never closed", None),
    (DEEPSEEK, "all reasoning</think>", "all reasoning", None),
    (DEEPSEEK, "</think>only an answer", None, "only an answer"),
    (DEEPSEEK, "r</think>a <think>x</think> b", "r", "a <think>x</think> b"),
    (DEEPSEEK, "a <think> inside</think>c", "a <think> inside", "c"),
    (DEEPSEEK, "x < y and </thin k> is no tag", "x < y and </thin k> is no tag", None),
    (DEEPSEEK, "ends on half a tag </thi", "ends on half a tag </thi", None),
    (DEEPSEEK, "", None, ""),
    # Qwen3: reasoning only in an output that opens with <think>.
    (QWEN3, "<think>\nLet me see.\n</think>\n\nParis.", "\nLet me see.\n", "\n\nParis."),
    (QWEN3, "Paris.", None, "Paris."),
    (QWEN3, "<think>\ncut off by max_tokens", "\ncut off by max_tokens", None),
    (QWEN3, "<think></think>Paris.", None, "Paris."),
    (QWEN3, "no tag</think>then one", None, "no tag</think>then one"),
    (QWEN3, " <think>a</think>b", None, " <think>a</think>b"),
    (QWEN3, "<thinking> is not the tag", None, "<thinking> is not the tag"),
    (QWEN3, "<thi", None, "<thi"),
    (QWEN3, "<", None, "<"),
    (QWEN3, "<think>r</think>content with <think> and </think>", "r",
     "content with <think> and </think>"),
    (QWEN3, "", None, ""),
]


def _case_id(case) -> str:
    return f"{case[0].name}:{case[1][:24]!r}"


def _streamed(parser, pieces: list[str]) -> tuple[list[ReasoningDelta], ReasoningDelta]:
    stream = ReasoningStream(parser)
    deltas = [stream.feed(piece) for piece in pieces] + [stream.finish()]
    total = ReasoningDelta()
    for delta in deltas:
        total += delta
    return deltas, total


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_whole_output_split(case) -> None:
    parser, text, reasoning, content = case
    split = split_reasoning(parser, text)
    assert (split.reasoning, split.content) == (reasoning, content)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_every_two_and_three_piece_stream_equals_the_whole(case) -> None:
    parser, text, reasoning, content = case
    cuts = [(i, j) for i in range(len(text) + 1) for j in range(i, len(text) + 1)]
    for i, j in cuts:
        deltas, total = _streamed(parser, [text[:i], text[i:j], text[j:]])
        assert total.reasoning == (reasoning or ""), (i, j)
        assert total.content == (content or ""), (i, j)
        # No piece holds a tag or a fragment the final fields do not have.
        for delta in deltas:
            assert delta.reasoning in (reasoning or ""), (i, j, delta)
            assert delta.content in (content or ""), (i, j, delta)


@pytest.mark.parametrize("parser", [DEEPSEEK, QWEN3], ids=lambda p: p.name)
def test_character_by_character_stream_sends_reasoning_before_content(parser) -> None:
    text = "<think>\nStep 1: <b>bold</b>. Step 2.\n</think>\n\nThe answer is 4."
    deltas, total = _streamed(parser, list(text))
    assert total == ReasoningDelta("\nStep 1: <b>bold</b>. Step 2.\n", "\n\nThe answer is 4.")
    kinds = [("r" if d.reasoning else "") + ("c" if d.content else "") for d in deltas]
    joined = "".join(kinds)
    assert joined == "r" * joined.count("r") + "c" * joined.count("c")


def test_text_is_held_back_only_while_it_may_be_a_tag() -> None:
    stream = ReasoningStream(DEEPSEEK)
    assert stream.feed("thinking </th") == ReasoningDelta(reasoning="thinking ")
    assert stream.feed("e") == ReasoningDelta(reasoning="</the")  # not a tag after all
    assert stream.feed("</think") == ReasoningDelta()
    assert stream.feed(">Answer") == ReasoningDelta(content="Answer")
    assert stream.finish() == ReasoningDelta()


def test_unknown_parser_names_the_flag_and_the_choices() -> None:
    assert get_reasoning_parser(None) is None
    assert get_reasoning_parser("qwen3") is QWEN3
    with pytest.raises(ValueError, match=r"--reasoning-parser.*'nope'.*deepseek_r1, qwen3"):
        get_reasoning_parser("nope")
