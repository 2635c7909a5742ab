"""Client side of the GPU tier: requests through the official ``openai`` client, and metrics.

Each request records what a user would see -- HTTP status, text, ``finish_reason``, the error the
client raised, our gateway's ``X-Disagg-Route`` -- and never asserts: the suite keeps running
whatever a gateway or an engine does, and the report judges the counts.  A stream is ``ok`` only
if it carried text, ended with a ``finish_reason`` and raised nothing: vLLM 0.26 answers a failed
KV load on a stream with HTTP 200, no tokens, no error and ``[DONE]`` (FAULTS.md), which a client
that only checks the status would take for an empty answer.
"""

from __future__ import annotations

import random
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import openai
from prometheus_client.parser import text_string_to_metric_families

MODEL = "llama-3.1-8b"
"""The served name the tier's resources render (``--served-model-name``)."""


def prompt_text(rng: random.Random, words: int) -> str:
    """Text no other request shares (so no prefix cache and no prefix affinity interferes)."""
    return " ".join(f"w{rng.randrange(10**7)}" for _ in range(words))


def client(base_url: str, timeout_s: float = 120.0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url + "/v1", api_key="none", timeout=timeout_s, max_retries=0
    )


def openai_request(
    api: openai.OpenAI,
    kind: str,
    stream: bool,
    prompt: str,
    max_tokens: int = 16,
    on_token: Callable[[int], None] | None = None,
    greedy: bool = False,
) -> dict[str, Any]:
    """One chat or completions request; ``on_token(n)`` is called after the n-th text chunk.
    ``greedy`` (temperature 0) makes the answer a function of the prompt alone, so that two
    paths through the system can be compared; its text is then kept in the result."""
    start = time.perf_counter()
    out: dict[str, Any] = {"kind": kind, "stream": stream, "ok": False, "status": None}
    extra: dict[str, Any] = {"ignore_eos": True}
    if greedy:
        extra["temperature"] = 0.0
    text: list[str] = []
    finish = None
    try:
        if kind == "chat":
            raw = api.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                stream=stream,
                extra_body=extra,
            )
        else:
            raw = api.completions.with_raw_response.create(
                model=MODEL, prompt=prompt, max_tokens=max_tokens, stream=stream, extra_body=extra
            )
        out["status"] = raw.status_code
        out["route"] = raw.headers.get("x-disagg-route")
        out["reason"] = raw.headers.get("x-disagg-reason")
        parsed: Any = raw.parse()
        if not stream:
            choice = parsed.choices[0]
            text.append((choice.message.content if kind == "chat" else choice.text) or "")
            finish = choice.finish_reason
            out["completion_tokens"] = parsed.usage.completion_tokens if parsed.usage else None
        else:
            for chunk in parsed:
                for choice in chunk.choices:
                    piece = (choice.delta.content if kind == "chat" else choice.text) or ""
                    if piece:
                        if not text:
                            out["ttft_s"] = round(time.perf_counter() - start, 4)
                        text.append(piece)
                        if on_token:
                            on_token(len(text))
                    finish = choice.finish_reason or finish
            out["chunks"] = len(text)
    except openai.APIStatusError as exc:
        out["status"] = exc.status_code
        out["route"] = exc.response.headers.get("x-disagg-route")
        out["reason"] = exc.response.headers.get("x-disagg-reason")
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    except openai.APIError as exc:  # connection errors, errors inside a stream
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    out["seconds"] = round(time.perf_counter() - start, 4)
    out["text_chars"] = len("".join(text))
    if greedy:
        out["text"] = "".join(text)
    out["finish_reason"] = finish
    out["ok"] = bool(out.get("status") == 200 and text and finish and "error" not in out)
    if out.get("status") == 200 and not text and finish is None and "error" not in out:
        out["silent_empty"] = True  # the failure that looks like an answer
    return out


def scrape(base_url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """Every sample of an engine's ``/metrics`` as ``name{label=value,...}`` -> value."""
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError as exc:
        return {"scrape_error": 1.0, f"error:{exc}": 0.0}
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            if "le" in sample.labels:
                continue  # histogram buckets: sums and counts are enough here
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels`` (over engines, models)."""
    wanted = [f"{k}={v}" for k, v in labels.items()]
    found = 0.0
    for key, value in samples.items():
        metric, _, rest = key.partition("{")
        if metric == name and all(w in rest.rstrip("}").split(",") for w in wanted):
            found += value
    return found


def prompt_sources(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """How many prompt tokens an engine computed, found cached, and pulled, between scrapes."""
    name = "vllm:prompt_tokens_by_source_total"
    return {
        source: total(after, name, source=source) - total(before, name, source=source)
        for source in ("local_compute", "local_cache_hit", "external_kv_transfer")
    }


def nixl_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """NIXL transfers between scrapes: count, mean time (ms), bytes, failures."""

    def delta(name: str) -> float:
        return total(after, name) - total(before, name)

    count = delta("vllm:nixl_xfer_time_seconds_count")
    return {
        "transfers": count,
        "xfer_ms_mean": round(delta("vllm:nixl_xfer_time_seconds_sum") / count * 1e3, 3)
        if count
        else None,
        "bytes": delta("vllm:nixl_bytes_transferred_sum"),
        "failed": delta("vllm:nixl_num_failed_transfers_total"),
    }
