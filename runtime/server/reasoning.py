"""Reasoning parsers (`--reasoning-parser`): a chat completion's generated text split into the
reasoning (`reasoning_content`) and the answer (`content`) at the think tags.

    deepseek_r1  DeepSeek-R1 and its distills (and QwQ): their chat template ends the prompt
                 with `<think>\\n`, so generation starts inside the reasoning. Everything up
                 to the first `</think>` is reasoning, with or without an opening `<think>`
                 (stripped when the output starts with one); with no `</think>` at all, the
                 whole output is reasoning (a truncated or unfinished thought).
    qwen3        Qwen3: the reasoning is there only when the output starts with `<think>`
                 (thinking on); with `enable_thinking: false` the template pre-fills an empty
                 think block, no tag is generated and everything is content. An opened think
                 block runs to `</think>`, or to the end of the output if it never closes.

After the reasoning ends, the rest is content verbatim, tags included; a `<think>` that does
not start the output is ordinary text. These are vLLM's semantics, with one difference: for a
qwen3 output that opens a think block and never closes it, vLLM's non-streaming parser returns
the whole text (tag included) as content while its streaming parser returns it as reasoning;
here both return it as reasoning, so a streamed and a whole response always agree.

The parsing is one incremental state machine (`ReasoningStream`); the whole-text `split` is
the same machine fed once, so streaming and non-streaming cannot disagree. Text that might be
the start of a tag is held back until the next piece decides it, so a tag split across
deltas never shows in either field.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

THINK_START = "<think>"
THINK_END = "</think>"


@dataclass(frozen=True, slots=True)
class ReasoningParser:
    name: str
    starts_in_reasoning: bool  # reasoning before any tag, as with a template-opened <think>


REASONING_PARSERS: dict[str, ReasoningParser] = {
    "deepseek_r1": ReasoningParser("deepseek_r1", starts_in_reasoning=True),
    "qwen3": ReasoningParser("qwen3", starts_in_reasoning=False),
}


def get_reasoning_parser(name: str | None) -> ReasoningParser | None:
    """The parser called `name` (None: none). Raises ValueError naming the flag and the
    choices for an unknown name."""
    if name is None:
        return None
    try:
        return REASONING_PARSERS[name]
    except KeyError:
        raise ValueError(f"--reasoning-parser: unknown parser {name!r}; choose from "
                         f"{', '.join(sorted(REASONING_PARSERS))}") from None


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    reasoning: str = ""
    content: str = ""

    def __add__(self, other: ReasoningDelta) -> ReasoningDelta:
        return ReasoningDelta(self.reasoning + other.reasoning, self.content + other.content)


@dataclass(frozen=True, slots=True)
class ReasoningSplit:
    """A whole output: `reasoning` is None when it had none (or an empty one); `content` is
    None when there was reasoning and nothing after it, as vLLM returns them."""
    reasoning: str | None
    content: str | None


class _State(enum.Enum):
    START = "start"          # deciding whether the output opens with <think>
    REASONING = "reasoning"  # inside the think block, looking for </think>
    CONTENT = "content"      # after the reasoning, or an output without one


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ReasoningStream:
    """One choice's generated text, fed delta by delta, as reasoning and content deltas."""

    def __init__(self, parser: ReasoningParser):
        self.parser = parser
        self._state = _State.START
        self._pending = ""  # text that may still turn out to be (part of) a tag

    def feed(self, text: str) -> ReasoningDelta:
        self._pending += text
        out = ReasoningDelta()
        while self._pending:
            if self._state is _State.START:
                if self._pending.startswith(THINK_START):
                    self._pending = self._pending[len(THINK_START):]
                    self._state = _State.REASONING
                elif THINK_START.startswith(self._pending):
                    break  # "<thi": wait for the next piece to decide
                else:
                    self._state = _State.REASONING if self.parser.starts_in_reasoning \
                        else _State.CONTENT
            elif self._state is _State.REASONING:
                end = self._pending.find(THINK_END)
                if end >= 0:
                    out += ReasoningDelta(reasoning=self._pending[:end])
                    self._pending = self._pending[end + len(THINK_END):]
                    self._state = _State.CONTENT
                    continue
                keep = _partial_tag_suffix(self._pending, THINK_END)
                out += ReasoningDelta(reasoning=self._pending[:len(self._pending) - keep])
                self._pending = self._pending[len(self._pending) - keep:]
                break
            else:
                out += ReasoningDelta(content=self._pending)
                self._pending = ""
        return out

    def finish(self) -> ReasoningDelta:
        """The end of the output: held-back text was not a tag after all."""
        pending, self._pending = self._pending, ""
        if self._state is _State.START and self.parser.starts_in_reasoning:
            self._state = _State.REASONING
        if self._state is _State.REASONING:
            return ReasoningDelta(reasoning=pending)
        self._state = _State.CONTENT
        return ReasoningDelta(content=pending)


def split_reasoning(parser: ReasoningParser, text: str) -> ReasoningSplit:
    """A whole output, parsed exactly as the same text streamed would be."""
    stream = ReasoningStream(parser)
    whole = stream.feed(text) + stream.finish()
    if not whole.reasoning:
        return ReasoningSplit(None, whole.content)
    return ReasoningSplit(whole.reasoning, whole.content or None)
