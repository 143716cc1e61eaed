"""Tokenizer and chat template of a Hugging Face folder, on the `tokenizers` library alone.

Chat templates render with Jinja2 the way transformers renders them (trim_blocks, lstrip_blocks,
loop controls, `raise_exception`, `strftime_now`, a non-ASCII-safe `tojson`), so prompts match
token for token without importing transformers at serving time.
"""
from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path

from tokenizers import Tokenizer as FastTokenizer


class ChatTemplateError(ValueError):
    """The messages could not be rendered by the chat template."""


class Tokenizer:
    def __init__(self, folder: Path, chat_template: str | None = None):
        folder = Path(folder)
        config_path = folder / "tokenizer_config.json"
        self.config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        tokenizer_json = folder / "tokenizer.json"
        if tokenizer_json.is_file():
            self.backend = FastTokenizer.from_file(str(tokenizer_json))
        else:  # only a slow (sentencepiece) tokenizer: let transformers convert it
            from transformers import AutoTokenizer
            self.backend = AutoTokenizer.from_pretrained(str(folder)).backend_tokenizer
        self.chat_template = chat_template or self._find_chat_template(folder)
        self.bos_token = _token_text(self.config.get("bos_token"))
        self.eos_token = _token_text(self.config.get("eos_token"))
        self.eos_token_id = self.backend.token_to_id(self.eos_token) if self.eos_token else None
        self.bos_token_id = self.backend.token_to_id(self.bos_token) if self.bos_token else None

    def _find_chat_template(self, folder: Path) -> str | None:
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text()
        template = self.config.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default")
        return template

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        try:
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError as e:  # e.g. a lone UTF-16 surrogate, which no tokenizer accepts
            raise ValueError(f"the text cannot be tokenized: {e}") from e

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            continue_final_message: bool = False, tools: list | None = None,
                            chat_template: str | None = None,
                            template_kwargs: dict | None = None) -> str:
        """template_kwargs: extra variables for the template (chat_template_kwargs); they may
        not replace the ones this method sets."""
        template_kwargs = template_kwargs or {}
        reserved = sorted(set(template_kwargs) & _RESERVED_TEMPLATE_VARIABLES)
        if reserved:
            raise ChatTemplateError(f"chat_template_kwargs may not set {', '.join(reserved)}")
        template = chat_template or self.chat_template
        if template is None:
            raise ChatTemplateError(
                "the model has no chat template; pass one with --chat-template")
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError(
                "continue_final_message and add_generation_prompt cannot both be true")
        try:
            text = _compile(template).render(
                messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                **template_kwargs)
        except ChatTemplateError:
            raise
        except Exception as e:  # the template rejected the messages
            raise ChatTemplateError(f"chat template error: {e}") from e
        if continue_final_message:
            final = messages[-1].get("content")
            if isinstance(final, str) and final.strip():
                cut = text.rfind(final.strip())
                if cut >= 0:
                    text = text[:cut + len(final.strip())]
        return text


def _token_text(token) -> str | None:
    if isinstance(token, dict):
        return token.get("content")
    return token


_RESERVED_TEMPLATE_VARIABLES = frozenset({
    "messages", "tools", "add_generation_prompt", "bos_token", "eos_token",
    "continue_final_message", "chat_template"})


@functools.lru_cache(maxsize=32)  # requests may bring their own templates: keep a few
def _compile(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ChatTemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
