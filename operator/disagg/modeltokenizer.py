"""A model's own tokenizer and chat template, read from its files: the token ids vLLM would see.

Precise prefix routing only works if the gateway turns a request into exactly the token ids the
engine will hash.  vLLM tokenizes a completion prompt with the model's Hugging Face tokenizer
(special tokens added, e.g. Llama 3's ``<|begin_of_text|>``) and a chat request by rendering the
model's Jinja chat template (``add_generation_prompt=True``) and tokenizing that text *without*
adding special tokens again (the template writes them).  This module does the same from the files
a model directory holds -- ``tokenizer.json`` (Hugging Face ``tokenizers``, Rust: ~50 us per 1k
tokens), ``tokenizer_config.json`` (``chat_template``, ``bos_token``, ``eos_token``) or a
``chat_template.jinja`` beside it -- and never downloads anything.  The template runs in Jinja's
immutable sandbox with the helpers chat templates expect (``raise_exception``, ``strftime_now``,
``tojson``), as ``transformers`` renders it.

The simulator uses the same class when given ``--tokenizer`` (or a model directory with a
``tokenizer.json``), so that a simulated pool and the gateway agree as a real one would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from disagg.tokensegments import SegmentedEncoder

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"


class TokenizerError(ValueError):
    """The tokenizer files are missing or unusable (the message names the file)."""


def _special(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("content", ""))
    return "" if value is None else str(value)


def _raise(message: str) -> None:
    raise TokenizerError(f"chat template: {message}")


class ModelTokenizer:
    """Encode completion prompts and chat conversations the way vLLM does for this model."""

    def __init__(self, directory: str | Path) -> None:
        from tokenizers import Tokenizer

        self.directory = Path(directory)
        path = self.directory / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(f"no {TOKENIZER_FILE} in {self.directory}")
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exceptions
            raise TokenizerError(f"{path}: {exc}") from None
        config: dict[str, Any] = {}
        config_path = self.directory / CONFIG_FILE
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise TokenizerError(f"{config_path}: {exc}") from None
        template = config.get("chat_template")
        template_path = self.directory / TEMPLATE_FILE
        if template_path.is_file():
            template = template_path.read_text(encoding="utf-8")
        if isinstance(template, list):  # named templates: vLLM uses "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
            template = named.get("default")
        self.chat_template: str | None = template if isinstance(template, str) else None
        self.bos_token = _special(config.get("bos_token"))
        self.eos_token = _special(config.get("eos_token"))
        self._template: Any = None
        self._chat_ids = SegmentedEncoder(self._tokenizer)
        """Rendered chats, encoded piece by piece between special tokens (repeated system
        prompts come from a cache; ``disagg.tokensegments``)."""

    @classmethod
    def find(cls, *candidates: str | Path | None) -> ModelTokenizer | None:
        """The first candidate directory holding a ``tokenizer.json``, loaded; else None."""
        for candidate in candidates:
            if candidate and (Path(candidate) / TOKENIZER_FILE).is_file():
                return cls(candidate)
        return None

    @property
    def vocab_size(self) -> int:
        """Token ids at or above this are out of vocabulary (vLLM answers 400)."""
        return int(self._tokenizer.get_vocab_size())

    def encode_prompt(self, text: str) -> list[int]:
        """A completion prompt's ids: special tokens added, as vLLM does."""
        return list(self._tokenizer.encode(text, add_special_tokens=True).ids)

    def render_chat(self, messages: Sequence[Any]) -> str:
        """The chat template's text for ``messages`` plus the assistant's turn."""
        if self.chat_template is None:
            raise TokenizerError(
                f"{self.directory} has no chat template ({CONFIG_FILE} chat_template or "
                f"{TEMPLATE_FILE})"
            )
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
            env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent)
            self._template = env.from_string(self.chat_template)
        rendered: str = self._template.render(
            messages=list(messages),
            add_generation_prompt=True,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )
        return rendered

    def encode_chat(self, messages: Sequence[Any]) -> list[int]:
        """A chat request's ids: the rendered template, no special tokens added on top."""
        return self._chat_ids.encode(self.render_chat(messages))
