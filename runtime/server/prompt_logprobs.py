"""vLLM's `prompt_logprobs` response field, shared by completions and chat completions."""
from __future__ import annotations

from infernetes.runtime.outputs import RequestOutput


def prompt_logprobs_json(output: RequestOutput) -> list[dict | None] | None:
    """Per prompt token: None for the first, else token id -> logprob, rank and text, for the
    prompt's own token and the most likely alternatives."""
    if output.prompt_logprobs is None:
        return None
    return [None if position is None else {
        str(token_id): {"logprob": p.logprob, "rank": p.rank, "decoded_token": p.decoded_token}
        for token_id, p in position.items()} for position in output.prompt_logprobs]
