"""A prefill worker that answers from before its restart: the "P restarted between the legs" case.

    python -m bench.gpu.replay --port 8400 --answers answers.json

To put a real decode worker behind a gateway in exactly the state "the prefill worker restarted
after it answered the prefill leg", this stands where the gateway expects a prefill worker and
answers every prefill leg with the answer the *previous* incarnation of the real prefill worker
gave for that prompt (captured before it was killed): its ``kv_transfer_params`` name an engine id
and blocks that no longer exist.  The decode leg then goes to the real decode worker, which has to
cope -- and so does the gateway.  Health, models and metrics answer like an idle vLLM.
Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def prompt_key(body: dict[str, Any]) -> str:
    """The prompt of a completions or chat body, as a key (the legs share it verbatim)."""
    prompt = body.get("messages") if "messages" in body else body.get("prompt")
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()


class Replay(BaseHTTPRequestHandler):
    answers: dict[str, Any] = {}
    served: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, b"", "text/plain")
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "llama-3.1-8b", "object": "model"}]})
        elif self.path == "/metrics":
            self._send(200, b"", "text/plain")
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        answer = self.answers.get(prompt_key(body))
        if answer is None:
            self._send(404, {"error": {"message": "no captured answer for this prompt"}})
            return
        self.served.append(prompt_key(body))
        self._send(200, answer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answers", type=Path, required=True, help="JSON: prompt key -> answer")
    args = parser.parse_args(argv)
    Replay.answers = json.loads(args.answers.read_text())
    ThreadingHTTPServer(("127.0.0.1", args.port), Replay).serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
