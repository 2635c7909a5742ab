"""The one rule for turning prompt text into tokens, shared by the simulator and the gateway.

The simulator tokenizes with it (so its counts are predictable by hand) and the gateway
approximates vLLM's tokens with it when it hashes prompt blocks for prefix affinity; sharing one
definition keeps the gateway's view of a prompt's blocks identical to the simulator's cache.

* a token is a run of optional whitespace followed by either up to 8 word characters
  (letters, digits, ``_``) or one other non-space character; trailing whitespace is one token;
* chat messages are flattened with a fixed ``<|role|>\\ncontent\\n`` template, then
  ``<|assistant|>\\n``; only ``text`` content parts count.

Pure: no I/O, nothing else of ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

TOKEN_PATTERN = r"\s*(?:\w{1,8}|[^\w\s])|\s+"
"""One token (the rule above), as a regular expression."""
_TOKEN_RE = re.compile(TOKEN_PATTERN)


def split_tokens(text: str) -> list[str]:
    """The token strings of ``text``; ``"".join(split_tokens(t)) == t`` always holds."""
    return _TOKEN_RE.findall(text)


def render_chat(messages: Sequence[Any]) -> str:
    """The fixed chat template over ``messages`` (entries that are not objects are skipped)."""
    out: list[str] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if isinstance(content, list):
            text = "".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "text"
            )
        else:
            text = "" if content is None else str(content)
        out.append(f"<|{message.get('role', 'user')}|>\n{text}\n")
    out.append("<|assistant|>\n")
    return "".join(out)
