"""A scripted model server on loopback for driving the real agent CLIs in tests.

It speaks just enough of three APIs for a client to run a scripted turn:

* Anthropic Messages (``POST /v1/messages``, streamed as server-sent events): Claude Code,
  with ``ANTHROPIC_BASE_URL=http://127.0.0.1:PORT``;
* OpenAI Responses (``POST /v1/responses``, streamed): Codex, through a ``model_providers``
  entry with ``base_url = "http://127.0.0.1:PORT/v1"`` and ``wire_api = "responses"``;
* Gemini (``POST /v1beta/models/M:streamGenerateContent`` and ``:generateContent``): Gemini
  CLI, with ``GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:PORT``.

A script is a list of steps: `Call` (the model calls a tool with these arguments) and `Say`
(the model answers in words, ending the turn); `Observe` runs a test's function mid-session.
Each request that offers tools (the agent's main loop) takes the next step; when the script
is used up the model says "done". Requests without tools (titles, summaries, routing, "who
speaks next") get a short answer of the shape they ask for and take no step, so a client's
side calls cannot eat the script.

Every request is recorded (`requests`), so a test can assert on what the model was told: the
tool results (`tool_results`) carry the guard's deny reason or its added context.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Call:
    """The model calls tool *name* with *arguments* (a dict; for a freeform tool, a string)."""

    name: str
    arguments: dict[str, Any] | str


@dataclass(frozen=True)
class Say:
    """The model answers with *text* and ends its turn."""

    text: str


@dataclass(frozen=True)
class Observe:
    """Not a model step: the server calls *fn* when the script reaches it, while the client
    waits for its answer (so a test can look at dibs mid-session), then takes the next step."""

    fn: Callable[[], None]


Step = Call | Say | Observe


@dataclass
class Request:
    """One request as the client sent it."""

    method: str
    path: str
    body: Any
    main: bool = False  # offered tools: the agent's own loop, which takes script steps


@dataclass
class _State:
    script: list[Step]
    requests: list[Request] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def next_step(self) -> Call | Say:
        while True:
            with self.lock:
                step = self.script.pop(0) if self.script else Say("done")
            if not isinstance(step, Observe):
                return step
            try:
                step.fn()  # outside the lock: it may take a while (it runs dibs)
            except Exception as exc:  # noqa: BLE001 - raised again by ModelServer.close
                self.errors.append(exc)

    def new_id(self, prefix: str) -> str:
        with self.lock:
            return f"{prefix}_{next(self.ids):04d}"


class ModelServer:
    """The server, on 127.0.0.1 and a free port, serving from a thread until `close`."""

    def __init__(self, script: list[Step]):
        self._state = _State(list(script))
        state = self._state

        class Handler(_Handler):
            shared = state

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Request]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def left(self) -> list[Step]:
        """The steps not taken yet."""
        with self._state.lock:
            return list(self._state.script)

    def main_requests(self) -> list[Request]:
        return [r for r in self.requests if r.main]

    def tool_results(self) -> list[str]:
        """Every tool result the client sent back to the model, as text, in order, deduplicated
        (a client resends the whole conversation on every request)."""
        seen: list[str] = []
        for request in self.main_requests():
            for text in _tool_results(request.body):
                if text not in seen:
                    seen.append(text)
        return seen

    def told(self) -> str:
        """Everything the main loop sent, as one JSON text (for broad 'was it said' checks)."""
        return "\n".join(json.dumps(r.body) for r in self.main_requests())

    def close(self) -> None:
        """Stop serving; raise the first error an `Observe` step's function raised."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
        if self._state.errors:
            raise self._state.errors[0]

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tool_results(body: Any) -> Iterator[str]:
    """Tool results in a request body of any of the three APIs."""
    if not isinstance(body, dict):
        return
    for message in body.get("messages") or []:  # Anthropic
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                yield _text(block.get("content"))
    for item in body.get("input") or [] if isinstance(body.get("input"), list) else []:
        if isinstance(item, dict) and item.get("type") in (
            "function_call_output",
            "custom_tool_call_output",
        ):
            yield _text(item.get("output"))
    for content in body.get("contents") or []:  # Gemini
        for part in content.get("parts") or [] if isinstance(content, dict) else []:
            if isinstance(part, dict) and "functionResponse" in part:
                yield _text(part["functionResponse"].get("response"))


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_text(v.get("text") if isinstance(v, dict) else v) for v in value)
    if isinstance(value, dict) and isinstance(value.get("content"), list | str):
        return _text(value["content"])
    return json.dumps(value)


class _Handler(BaseHTTPRequestHandler):
    shared: _State
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # quiet: the requests are recorded instead

    def _read(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding") == "gzip":
            import gzip

            raw = gzip.decompress(raw)
        elif self.headers.get("Content-Encoding") == "zstd":
            return {"undecoded": "zstd"}
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode(errors="replace")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _events(self, events: list[tuple[str | None, Any]]) -> None:
        chunks = []
        for name, data in events:
            head = f"event: {name}\n" if name else ""
            chunks.append(f"{head}data: {json.dumps(data)}\n\n")
        self._send(200, "".join(chunks).encode(), "text/event-stream")

    def do_GET(self) -> None:
        self.shared.requests.append(Request("GET", self.path, None))
        if "/models" in self.path:
            self._json({"data": [], "models": [], "object": "list"})
        else:
            self._json({})

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        body = self._read()
        path = self.path.split("?", 1)[0]
        request = Request("POST", self.path, body)
        with self.shared.lock:
            self.shared.requests.append(request)
        if path.endswith("/messages/count_tokens"):
            self._json({"input_tokens": 10})
        elif path.endswith("/messages"):
            self._anthropic(request)
        elif path.endswith("/responses"):
            self._responses(request)
        elif path.endswith(":countTokens"):
            self._json({"totalTokens": 10})
        elif ":streamGenerateContent" in path or ":generateContent" in path:
            self._gemini(request, stream=":streamGenerateContent" in path)
        else:
            self._json({"error": {"message": f"the test model server has no {path}"}}, 404)

    # Anthropic Messages ------------------------------------------------------------------

    def _anthropic(self, request: Request) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        request.main = bool(body.get("tools"))
        step = self.shared.next_step() if request.main else Say("ok")
        message_id = self.shared.new_id("msg")
        usage = {"input_tokens": 10, "output_tokens": 1}
        start = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "test-model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        if isinstance(step, Call):
            block = {
                "type": "tool_use",
                "id": self.shared.new_id("toolu"),
                "name": step.name,
                "input": {},
            }
            delta = {"type": "input_json_delta", "partial_json": json.dumps(step.arguments)}
            stop = "tool_use"
        else:
            block = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": step.text}
            stop = "end_turn"
        if not body.get("stream"):
            whole = dict(block)
            if isinstance(step, Call):
                whole["input"] = step.arguments
            else:
                whole["text"] = step.text
            self._json({**start, "content": [whole], "stop_reason": stop})
            return
        self._events(
            [
                ("message_start", {"type": "message_start", "message": start}),
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": block},
                ),
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                ),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop, "stop_sequence": None},
                        "usage": {"output_tokens": 1},
                    },
                ),
                ("message_stop", {"type": "message_stop"}),
            ]
        )

    # OpenAI Responses --------------------------------------------------------------------

    def _responses(self, request: Request) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        tools = {
            t.get("name"): t.get("type") for t in body.get("tools") or [] if isinstance(t, dict)
        }
        request.main = bool(tools)
        step = self.shared.next_step() if request.main else Say("ok")
        response_id = self.shared.new_id("resp")
        if isinstance(step, Call):
            call_id = self.shared.new_id("call")
            if tools.get(step.name) == "custom" or isinstance(step.arguments, str):
                raw = step.arguments
                if not isinstance(raw, str):
                    raw = str(raw.get("input", ""))
                item: dict[str, Any] = {
                    "type": "custom_tool_call",
                    "id": self.shared.new_id("ctc"),
                    "call_id": call_id,
                    "name": step.name,
                    "input": raw,
                    "status": "completed",
                }
            else:
                item = {
                    "type": "function_call",
                    "id": self.shared.new_id("fc"),
                    "call_id": call_id,
                    "name": step.name,
                    "arguments": json.dumps(step.arguments),
                    "status": "completed",
                }
        else:
            item = {
                "type": "message",
                "id": self.shared.new_id("msg"),
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": step.text, "annotations": []}],
            }
        usage = {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 1,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 11,
        }
        created = {"id": response_id, "object": "response", "status": "in_progress", "output": []}
        done = {**created, "status": "completed", "output": [item], "usage": usage}
        self._events(
            [
                ("response.created", {"type": "response.created", "response": created}),
                (
                    "response.output_item.done",
                    {"type": "response.output_item.done", "output_index": 0, "item": item},
                ),
                ("response.completed", {"type": "response.completed", "response": done}),
            ]
        )

    # Gemini ------------------------------------------------------------------------------

    def _gemini(self, request: Request, *, stream: bool) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        config = body.get("generationConfig") or {}
        declared = [
            d for t in body.get("tools") or [] for d in (t.get("functionDeclarations") or [])
        ]
        request.main = bool(declared)
        if request.main:
            step = self.shared.next_step()
        elif config.get("responseMimeType") == "application/json" or config.get(
            "responseJsonSchema"
        ):
            # Side calls that want JSON (who speaks next, model routing, loop checks): one
            # object that answers each of them the quiet way.
            step = Say(
                json.dumps(
                    {
                        "reasoning": "scripted test model",
                        "next_speaker": "user",
                        "model_choice": "flash",
                        "unproductive_state_confidence": 0,
                        "unproductive_state_analysis": "none",
                    }
                )
            )
        else:
            step = Say("ok")
        if isinstance(step, Call):
            part: dict[str, Any] = {"functionCall": {"name": step.name, "args": step.arguments}}
        else:
            part = {"text": step.text}
        chunk = {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [part]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 10,
                "candidatesTokenCount": 1,
                "totalTokenCount": 11,
            },
            "modelVersion": "test-model",
            "responseId": self.shared.new_id("gen"),
        }
        if stream:
            self._send(200, f"data: {json.dumps(chunk)}\r\n\r\n".encode(), "text/event-stream")
        else:
            self._json(chunk)
