"""Incremental detokenization and stop strings, per generated sequence.

`tokenizers.decoders.DecodeStream` emits text only once a multi-byte character is complete,
and is seeded with the prompt's last tokens so that word-boundary spaces come out as they would
in context. Stop strings are searched only in the text that new tokens could have completed.
While a sequence is running, the last `max(len(stop)) - 1` characters are held back from
streamed output, so a stop string split across tokens never leaks.
"""
from __future__ import annotations

from tokenizers.decoders import DecodeStream

from infernetes.runtime.sampling_params import SamplingParams
from infernetes.runtime.tokenizer import Tokenizer

_PROMPT_CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int],
                 params: SamplingParams):
        self.tokenizer = tokenizer
        self.params = params
        self.stream = DecodeStream(ids=prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:],
                                   skip_special_tokens=params.skip_special_tokens)
        self.text = ""
        self.stop_hold = max((len(s) for s in params.stop), default=1) - 1
        self._sent = 0  # characters already handed out as deltas

    def update(self, new_token_ids: list[int], skip_last: bool = False) -> str | None:
        """Append tokens' text; return the stop string found, if any (text is cut there).

        skip_last: the last token ended the sequence as an EOS or stop token; its text is not
        part of the output unless include_stop_str_in_output asks for it.
        """
        if skip_last and not self.params.include_stop_str_in_output:
            new_token_ids = new_token_ids[:-1]
        before = len(self.text)
        for token_id in new_token_ids:
            piece = self.stream.step(self.tokenizer.backend, token_id)
            if piece:
                self.text += piece
        if not self.params.stop or len(self.text) == before:
            return None
        search_from = max(0, before - self.stop_hold)
        found: tuple[int, str] | None = None
        for stop in self.params.stop:
            at = self.text.find(stop, search_from)
            if at >= 0 and (found is None or at < found[0]):
                found = (at, stop)
        if found is None:
            return None
        at, stop = found
        self.text = self.text[:at + len(stop) if self.params.include_stop_str_in_output else at]
        return stop

    def delta(self, finished: bool) -> str:
        """Text not yet handed out; while running, withholds a possible stop-string prefix."""
        end = len(self.text) if finished or not self.params.stop else max(
            self._sent, len(self.text) - self.stop_hold)
        piece = self.text[self._sent:end]
        self._sent = end
        return piece

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)
