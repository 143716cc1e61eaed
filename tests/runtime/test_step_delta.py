"""The engine-to-worker step messages of tensor parallelism: decoded on the worker side, every
step equals the engine's SchedulerOutput; a request's prompt travels once, so the message no
longer grows with the contexts in the batch."""
from __future__ import annotations

import pickle
from dataclasses import fields

from infernetes import LoRARequest, SamplingParams
from infernetes.runtime.engine.scheduler_output import ScheduledRequest, SchedulerOutput
from infernetes.runtime.parallel.step_delta import StepDecoder, StepEncoder


class _Request:
    """An engine-side request: its prompt and the output list that grows each step."""

    def __init__(self, request_id: str, prompt_len: int, lora: LoRARequest | None = None):
        self.request_id = request_id
        self.prompt = list(range(prompt_len))
        self.outputs: list[int] = []
        self.params = SamplingParams(temperature=0, repetition_penalty=1.1)
        self.lora = lora

    def chunk(self, start: int, length: int, sample: bool = True) -> ScheduledRequest:
        tokens = (self.prompt + self.outputs)[start:start + length]
        blocks = list(range(-(-(start + length) // 16)))
        return ScheduledRequest(self.request_id, tokens, start, blocks, sample, self.params,
                                self.prompt, self.outputs, self.lora.lora_int_id if self.lora
                                else 0, self.lora, -1)


def _assert_same(decoded: SchedulerOutput, sent: SchedulerOutput) -> None:
    assert [s.request_id for s in decoded.scheduled] == [s.request_id for s in sent.scheduled]
    for got, want in zip(decoded.scheduled, sent.scheduled):
        for f in fields(ScheduledRequest):
            assert getattr(got, f.name) == getattr(want, f.name), f.name
    for name in ("num_scheduled_tokens", "finished_request_ids", "preempted_request_ids",
                 "lora_ids_in_flight"):
        assert getattr(decoded, name) == getattr(sent, name)


def _through_a_pipe(encoder: StepEncoder, decoder: StepDecoder,
                    output: SchedulerOutput) -> tuple[SchedulerOutput, int]:
    message = pickle.dumps(encoder.encode(output))
    return decoder.decode(pickle.loads(message)), len(message)


def test_every_step_decodes_to_what_the_engine_scheduled():
    encoder, decoder = StepEncoder(), StepDecoder()
    a = _Request("a", 40)
    b = _Request("b", 7, LoRARequest("sql", 3, "/adapters/sql"))
    steps = [
        SchedulerOutput([a.chunk(0, 16, sample=False), b.chunk(0, 7)], 23),  # a in two chunks
        SchedulerOutput([a.chunk(16, 24)], 24),
    ]
    for step, output in enumerate(steps):
        decoded, _ = _through_a_pipe(encoder, decoder, output)
        _assert_same(decoded, output)
        if step == 0:
            b.outputs.append(101)  # b sampled in step 0, decodes from step 1
    a.outputs.append(7)
    for token in (8, 9, 10):
        output = SchedulerOutput([a.chunk(40 + len(a.outputs) - 1, 1),
                                  b.chunk(7 + len(b.outputs) - 1, 1)], 2,
                                 lora_ids_in_flight=frozenset({3}))
        _assert_same(_through_a_pipe(encoder, decoder, output)[0], output)
        a.outputs.append(token)
        b.outputs.append(token + 100)
    # b finishes; a new request takes its id: the workers get the new one whole.
    again = _Request("b", 5)
    output = SchedulerOutput([again.chunk(0, 5)], 5, finished_request_ids=["b"])
    _assert_same(_through_a_pipe(encoder, decoder, output)[0], output)
    # After a preemption the request is recomputed from its first token, outputs included.
    output = SchedulerOutput([a.chunk(0, 44)], 44, preempted_request_ids=[])
    _assert_same(_through_a_pipe(encoder, decoder, output)[0], output)


def test_a_decode_step_message_does_not_carry_the_contexts():
    encoder, decoder = StepEncoder(), StepDecoder()
    requests = [_Request(f"r{i}", 4000) for i in range(8)]
    first = SchedulerOutput([r.chunk(0, 4000) for r in requests], 32000)
    _, first_size = _through_a_pipe(encoder, decoder, first)
    for r in requests:
        r.outputs.append(1)
    decode = SchedulerOutput([r.chunk(4000, 1) for r in requests], 8)
    decoded, decode_size = _through_a_pipe(encoder, decoder, decode)
    _assert_same(decoded, decode)
    whole = len(pickle.dumps(decode))
    # The block tables remain (251 ids per request); the 32000 prompt tokens do not.
    assert decode_size * 4 < whole
    assert decode_size * 4 < first_size
