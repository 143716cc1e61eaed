"""From per-step token updates to `RequestOutput`s: detokenize, find stop strings, gather the
n samples of a request, and produce cumulative, delta or final-only outputs."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from infernetes.runtime.engine.detokenizer import IncrementalDetokenizer
from infernetes.runtime.engine.scheduler import RequestUpdate
from infernetes.runtime.engine.scheduler_output import SampledToken
from infernetes.runtime.engine.stats import FinishedRequestStats, IterationStats
from infernetes.runtime.outputs import CompletionOutput, Logprob, LogprobsAtPosition, RequestOutput
from infernetes.runtime.request import RequestStatus
from infernetes.runtime.sampling_params import RequestOutputKind, SamplingParams
from infernetes.runtime.tokenizer import Tokenizer


@dataclass(slots=True)
class ParentRequest:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    completions: list[CompletionOutput]
    states: list[SequenceState] = field(default_factory=list)
    arrival_time: float = field(default_factory=time.monotonic)
    num_cached_tokens: int = 0
    num_finished: int = 0
    first_token_time: float | None = None
    prompt_logprobs: list[LogprobsAtPosition | None] | None = None

    @property
    def finished(self) -> bool:
        return self.num_finished == len(self.completions)


@dataclass(slots=True)
class SequenceState:
    parent: ParentRequest
    index: int
    detokenizer: IncrementalDetokenizer
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[LogprobsAtPosition] | None = None
    cumulative_logprob: float = 0.0
    num_sent_tokens: int = 0


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer | None):
        self.tokenizer = tokenizer
        self.parents: dict[str, ParentRequest] = {}
        self.sequences: dict[str, SequenceState] = {}

    def add_request(self, parent: ParentRequest, child_ids: list[str]) -> None:
        self.parents[parent.request_id] = parent
        for index, child_id in enumerate(child_ids):
            detok = IncrementalDetokenizer(self.tokenizer, parent.prompt_token_ids,
                                           parent.params) if self.tokenizer else None
            state = SequenceState(parent, index, detok,
                                  logprobs=[] if parent.params.logprobs is not None else None)
            parent.states.append(state)
            self.sequences[child_id] = state

    def child_ids(self, parent_id: str) -> list[str]:
        return [cid for cid, s in self.sequences.items() if s.parent.request_id == parent_id]

    def abort(self, parent_id: str) -> RequestOutput | None:
        parent = self.parents.pop(parent_id, None)
        if parent is None:
            return None
        for child_id in self.child_ids(parent_id):
            state = self.sequences.pop(child_id)
            completion = parent.completions[state.index]
            if completion.finish_reason is None:
                completion.finish_reason = "abort"
        return RequestOutput(parent.request_id, parent.prompt, parent.prompt_token_ids,
                             parent.completions, True, num_cached_tokens=parent.num_cached_tokens)

    def process(self, updates: list[RequestUpdate], stats: IterationStats | None = None
                ) -> tuple[list[RequestOutput], list[str]]:
        """-> (outputs to hand out, child ids stopped by a stop string: finish them).
        Timings and token counts go into `stats` when given."""
        touched: dict[str, tuple[ParentRequest, set[int]]] = {}
        stopped: list[str] = []
        now = time.monotonic()
        for update in updates:
            request = update.request
            state = self.sequences.get(request.request_id)
            if state is None:
                continue
            parent = state.parent
            if parent.first_token_time is None:
                parent.first_token_time = now
                parent.num_cached_tokens = max(request.num_cached_tokens, 0)
                if parent.params.prompt_logprobs is not None:
                    decode = _token_decoder(state)
                    parent.prompt_logprobs = [None] + [_position(s, decode)
                                                       for s in request.prompt_logprobs]
            if stats is not None:
                _record_token_timing(stats, request, len(update.new_token_ids), now)
            state.token_ids.extend(update.new_token_ids)
            self._record_logprobs(state, update)
            finished = update.finished
            status = request.status
            if state.detokenizer is not None:
                ended_by_token = finished and status == RequestStatus.FINISHED_STOPPED
                stop = state.detokenizer.update(update.new_token_ids, skip_last=ended_by_token)
                if stop is not None:
                    # A stop string wins over the length cap or EOS reached by the same token.
                    if not finished:
                        stopped.append(request.request_id)
                    finished = True
                    status = RequestStatus.FINISHED_STOPPED
                    request.stop_reason = stop
            completion = parent.completions[state.index]
            if finished:
                completion.finish_reason = status.finish_reason
                completion.stop_reason = request.stop_reason
                parent.num_finished += 1
                del self.sequences[request.request_id]
                if stats is not None:
                    stats.finished.append(FinishedRequestStats(
                        status.finish_reason, request.lora_name, request.num_prompt_tokens,
                        request.num_output_tokens, now - request.arrival_time,
                        (request.first_scheduled_time or now) - request.arrival_time))
            touched.setdefault(parent.request_id, (parent, set()))[1].add(state.index)
        outputs = [out for parent, indices in touched.values()
                   if (out := self._output(parent, indices)) is not None]
        for parent, _ in touched.values():
            if parent.finished:
                self.parents.pop(parent.request_id, None)
        return outputs, stopped

    def _record_logprobs(self, state: SequenceState, update: RequestUpdate) -> None:
        if state.logprobs is None:
            return
        decode = _token_decoder(state)
        for sample in update.new_samples:
            state.cumulative_logprob += sample.logprob
            state.logprobs.append(_position(sample, decode))

    def _output(self, parent: ParentRequest, indices: set[int]) -> RequestOutput | None:
        """indices: the samples this step advanced; a delta output carries only those."""
        kind = parent.params.output_kind
        if kind == RequestOutputKind.FINAL_ONLY and not parent.finished:
            return None
        if kind == RequestOutputKind.DELTA:
            completions = [self._fill(_copy(parent.completions[i]), parent.states[i], kind)
                           for i in sorted(indices)]
        else:
            completions = [self._fill(c, s, kind)
                           for c, s in zip(parent.completions, parent.states)]
        return RequestOutput(parent.request_id, parent.prompt, parent.prompt_token_ids,
                             completions, parent.finished,
                             num_cached_tokens=parent.num_cached_tokens,
                             prompt_logprobs=parent.prompt_logprobs,
                             metrics={"arrival_time": parent.arrival_time,
                                      "first_token_time": parent.first_token_time or 0.0})

    def _fill(self, completion: CompletionOutput, state: SequenceState,
              kind: RequestOutputKind) -> CompletionOutput:
        finished = completion.finish_reason is not None
        if kind == RequestOutputKind.DELTA:
            start = state.num_sent_tokens
            completion.token_ids = state.token_ids[start:]
            completion.text = state.detokenizer.delta(finished) if state.detokenizer else ""
            if state.logprobs is not None:
                completion.logprobs = state.logprobs[start:]
            state.num_sent_tokens = len(state.token_ids)
        else:
            completion.token_ids = state.token_ids
            completion.text = state.detokenizer.text if state.detokenizer else ""
            completion.logprobs = state.logprobs
        if state.logprobs is not None:
            completion.cumulative_logprob = state.cumulative_logprob
        return completion


def _token_decoder(state: SequenceState) -> Callable[[int], str | None]:
    return state.detokenizer.decode_token if state.detokenizer else lambda _: None


def _position(sample: SampledToken, decode: Callable[[int], str | None]) -> LogprobsAtPosition:
    """The chosen token and the top alternatives at one position."""
    position = {sample.token_id: Logprob(sample.logprob, sample.rank, decode(sample.token_id))}
    for rank, (token_id, logprob) in enumerate(sample.top_logprobs or (), start=1):
        if token_id not in position:
            position[token_id] = Logprob(logprob, rank, decode(token_id))
    return position


def _record_token_timing(stats: IterationStats, request, num_new_tokens: int,
                         now: float) -> None:
    stats.num_generation_tokens += num_new_tokens
    if request.last_token_time is None:
        stats.num_prompt_tokens += request.num_prompt_tokens
        stats.time_to_first_token.append((request.lora_name, now - request.arrival_time))
    else:
        stats.inter_token_latency.append((request.lora_name, now - request.last_token_time))
    request.last_token_time = now


def _copy(c: CompletionOutput) -> CompletionOutput:
    return CompletionOutput(c.index, c.text, c.token_ids, c.cumulative_logprob, c.logprobs,
                            c.finish_reason, c.stop_reason)
