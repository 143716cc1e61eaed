"""SmolLM2-135M-Instruct from its GGUF: our conversion, chat template and engine against
transformers loading the same GGUF (dequantized) on its own."""
from __future__ import annotations

import pytest
import torch

from infernetes import SamplingParams
from infernetes.runtime.default_model import default_gguf_path

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain gravity in one sentence.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
    "Name a famous painter.",
    "Give me a tip for sleeping well.",
]
MAX_NEW = 24


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = default_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    return tokenizer, model.eval()


def _conversation(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def _hf_prompt_ids(tokenizer, question: str) -> list[int]:
    ids = tokenizer.apply_chat_template(_conversation(question), add_generation_prompt=True,
                                        tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_chat_template_tokens_match_transformers(smollm2, hf):
    tokenizer, _ = hf
    ours = smollm2.get_tokenizer()
    for question in QUESTIONS:
        text = ours.apply_chat_template(_conversation(question), add_generation_prompt=True)
        assert ours.encode(text, add_special_tokens=False) == _hf_prompt_ids(tokenizer, question)


def test_greedy_chat_and_logprobs_match_transformers(smollm2, hf):
    tokenizer, model = hf
    params = SamplingParams(temperature=0, max_tokens=MAX_NEW, logprobs=3)
    outputs = smollm2.chat([_conversation(q) for q in QUESTIONS], params)
    for question, output in zip(QUESTIONS, outputs):
        prompt = torch.tensor([_hf_prompt_ids(tokenizer, question)])
        with torch.no_grad():
            ref = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                 do_sample=False, max_new_tokens=MAX_NEW,
                                 output_logits=True, return_dict_in_generate=True,
                                 eos_token_id=smollm2.engine.tokenizer.eos_token_id)
        expected = ref.sequences[0, prompt.shape[1]:].tolist()
        completion = output.outputs[0]
        assert completion.token_ids == expected, question
        assert completion.text == tokenizer.decode(expected, skip_special_tokens=True)
        for step, (token_id, position) in enumerate(zip(expected, completion.logprobs)):
            ref_logprobs = torch.log_softmax(ref.logits[step][0].float(), dim=-1)
            assert abs(position[token_id].logprob - ref_logprobs[token_id].item()) < 1e-3
            assert position[token_id].rank == 1
            top = ref_logprobs.topk(3)
            for ref_id, ref_lp in zip(top.indices.tolist(), top.values.tolist()):
                assert abs(position[ref_id].logprob - ref_lp) < 1e-3
