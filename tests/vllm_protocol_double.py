"""A protocol test double of vLLM's OpenAI-compatible server. It is NOT vLLM.

vLLM cannot run on the test machines (its wheels need CUDA), so the annotation
client is tested against this stand-in, which speaks the same HTTP protocol for
the two endpoints the client uses:

- ``GET /v1/models``: lists the one served model name;
- ``POST /v1/chat/completions``: checks the request the way the client must
  build it (the model name; a system message and a user message whose content
  has text parts and exactly two ``image_url`` parts carrying base64 image data
  URLs; the guided-decoding field of the configured mode and no other;
  ``max_tokens``) and answers with a chat-completion envelope whose message
  content is a valid answer JSON naming the labelled degradations.

Bad requests get vLLM-like errors (400, 404 for an unknown model) and are kept in
:attr:`ProtocolDouble.errors`. Behaviour can be scripted per sample id (taken
from the ``X-Request-Id`` header ``<sample id>-<attempt>``): ``slow``, ``500``,
``429`` (with Retry-After), ``malformed`` (not JSON), ``schema`` (JSON missing
fields), ``truncated`` (cut, finish_reason ``length``), ``drop`` (close the
connection without answering). Answers take ``latency_s`` (times a uniform factor in
``1 +- latency_jitter``, seeded). It counts requests per sample id and records the
highest number of requests in flight at once.

With ``deep_validate=False`` (benchmarks) it neither parses nor checks the body,
so that its own CPU time does not limit what a client benchmark measures.

Stdlib only, so it also runs as its own process (``python vllm_protocol_double.py
--latency 0.2``): it then prints ``LISTENING <url>`` and serves ``GET /_stats``.
It binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import json
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

GUIDED_FIELDS = ("response_format", "structured_outputs", "guided_json")
_LABELS = re.compile(r"Degradation labels:\s*(\S+)")


@dataclass(frozen=True)
class Behaviour:
    """What the double does for one request: ``ok`` or one of the scripted failures."""

    kind: str = "ok"
    delay_s: float = 0.0
    retry_after: str | None = None


OK = Behaviour()


def _answer_for(labels: str) -> dict[str, str]:
    words = " and ".join(part.replace("_", " ") for part in labels.split("+"))
    return {
        "vague_question": "Make this clearer.",
        "precise_question": f"Remove the {words} from this photo.",
        "scene": "A quiet street with parked cars and trees under a grey sky.",
        "degradation": f"The image shows {words} across the whole frame.",
        "plan": f"Remove the {words}, keeping the content and colours intact.",
        "answer": "The restored image is clean, sharp and natural.",
    }


class ProtocolDouble:
    """The server; run it in a background thread with ``with ProtocolDouble(...) as url:``."""

    def __init__(
        self,
        *,
        model: str = "test-vlm",
        guided_decoding: str = "response_format",
        latency_s: float = 0.0,
        latency_jitter: float = 0.0,
        deep_validate: bool = True,
        api_key: str | None = None,
    ) -> None:
        if guided_decoding not in (*GUIDED_FIELDS, "none"):
            raise ValueError(f"unknown guided decoding mode {guided_decoding!r}")
        self.model = model
        self.guided_decoding = guided_decoding
        if not 0.0 <= latency_jitter < 1.0:
            raise ValueError("latency_jitter must be in [0, 1)")
        self.latency_s = latency_s
        self.latency_jitter = latency_jitter
        self._random = random.Random(0)
        self.deep_validate = deep_validate
        self.api_key = api_key
        self.requests_per_sample: collections.Counter[str] = collections.Counter()
        self.chat_requests = 0
        self.model_list_requests = 0
        self.active = 0
        self.max_active = 0
        self.errors: list[str] = []
        self.last_payload: dict[str, Any] | None = None
        self.last_headers: dict[str, str] = {}
        self._scripts: dict[str, collections.deque[Behaviour]] = {}
        self._default: Behaviour = OK
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- scripting -------------------------------------------------------------------------

    def script(self, sample_id: str, *behaviours: Behaviour | str) -> None:
        """Queue behaviours for the next requests of ``sample_id`` (then ``ok``)."""
        queue = collections.deque(Behaviour(b) if isinstance(b, str) else b for b in behaviours)
        with self._lock:
            self._scripts[sample_id] = queue

    def set_default(self, behaviour: Behaviour | str) -> None:
        """Behaviour of every request without a script entry."""
        with self._lock:
            self._default = Behaviour(behaviour) if isinstance(behaviour, str) else behaviour

    def _next_behaviour(self, sample_id: str) -> Behaviour:
        with self._lock:
            queue = self._scripts.get(sample_id)
            if queue:
                return queue.popleft()
            return self._default

    def stats(self) -> dict[str, Any]:
        """Counters as JSON data."""
        return {
            "chat_requests": self.chat_requests,
            "model_list_requests": self.model_list_requests,
            "max_active": self.max_active,
            "errors": list(self.errors),
            "requests_per_sample": dict(self.requests_per_sample),
        }

    # -- request checks --------------------------------------------------------------------

    def _check_image_url(self, part: dict[str, Any]) -> str | None:
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else None
        if not isinstance(url, str) or not url.startswith("data:image/"):
            return "image_url.url must be a data:image/... URL"
        header, _, data = url.partition(",")
        if not header.endswith(";base64") or not data:
            return "image data URL must be base64"
        if self.deep_validate:
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                return "image data URL is not valid base64"
            if header == "data:image/png;base64" and not raw.startswith(b"\x89PNG"):
                return "image declared PNG is not a PNG"
        return None

    def validate(self, payload: Any) -> list[str]:
        """Problems with a chat-completions body (empty: the body is as the client must send)."""
        if not isinstance(payload, dict):
            return ["body is not a JSON object"]
        problems = []
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            return ["messages must be a non-empty list"]
        roles = [message.get("role") for message in messages if isinstance(message, dict)]
        if roles != ["system", "user"]:
            problems.append(f"expected roles [system, user], got {roles}")
        user = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), {})
        content = user.get("content")
        if not isinstance(content, list):
            problems.append("user content must be a list of parts")
            content = []
        texts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
        images = [p for p in content if isinstance(p, dict) and p.get("type") == "image_url"]
        if len(texts) + len(images) != len(content):
            problems.append("user content has parts that are neither text nor image_url")
        if not texts or not all(isinstance(p.get("text"), str) and p["text"] for p in texts):
            problems.append("user content needs non-empty text parts")
        if len(images) != 2:
            problems.append(f"expected exactly 2 image_url parts, got {len(images)}")
        for part in images:
            problem = self._check_image_url(part)
            if problem:
                problems.append(problem)
        max_tokens = payload.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            problems.append("max_tokens must be a positive integer")
        present = [name for name in GUIDED_FIELDS if name in payload]
        expected = [] if self.guided_decoding == "none" else [self.guided_decoding]
        if present != expected:
            problems.append(f"guided decoding fields {present}, expected {expected}")
        elif self.guided_decoding == "response_format":
            field = payload["response_format"]
            spec = field.get("json_schema") if isinstance(field, dict) else None
            if (
                field.get("type") != "json_schema"
                or not isinstance(spec, dict)
                or not isinstance(spec.get("name"), str)
                or not isinstance(spec.get("schema"), dict)
            ):
                problems.append("response_format must be {type: json_schema, json_schema: {...}}")
        elif self.guided_decoding == "structured_outputs":
            field = payload["structured_outputs"]
            if not isinstance(field, dict) or not isinstance(field.get("json"), dict):
                problems.append("structured_outputs must be {json: <schema>}")
        elif self.guided_decoding == "guided_json" and not isinstance(payload["guided_json"], dict):
            problems.append("guided_json must be a schema object")
        return problems

    # -- HTTP ------------------------------------------------------------------------------

    @staticmethod
    def _response(status: int, body: Any, headers: dict[str, str] | None = None) -> bytes:
        data = json.dumps(body).encode("utf-8")
        reasons = {
            200: "OK",
            400: "Bad Request",
            401: "Unauthorized",
            404: "Not Found",
            429: "Too Many Requests",
        }
        lines = [
            f"HTTP/1.1 {status} {reasons.get(status, 'Error')}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data

    def _completion(self, content: str, finish: str = "stop") -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{self.chat_requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                }
            ],
            "usage": {"prompt_tokens": 900, "completion_tokens": 200, "total_tokens": 1100},
        }

    async def _chat(self, headers: dict[str, str], body: bytes) -> bytes | None:
        request_id = headers.get("x-request-id", "unknown")
        sample_id = request_id.rsplit("-", 1)[0]
        self.chat_requests += 1
        self.requests_per_sample[sample_id] += 1
        if not self.deep_validate:  # benchmark mode: the client is measured, not the double
            return await self._answer(sample_id, body[-8192:].decode("utf-8", "replace"))
        try:
            payload = json.loads(body)
        except ValueError:
            self.errors.append(f"{sample_id}: body is not JSON")
            return self._response(400, {"error": {"message": "invalid JSON body", "code": 400}})
        self.last_payload = payload
        self.last_headers = headers
        if payload.get("model") != self.model:
            message = f"The model `{payload.get('model')}` does not exist."
            return self._response(404, {"error": {"message": message, "code": 404}})
        problems = self.validate(payload)
        if problems:
            self.errors.append(f"{sample_id}: {'; '.join(problems)}")
            return self._response(400, {"error": {"message": "; ".join(problems), "code": 400}})
        return await self._answer(sample_id, payload["messages"][1]["content"][-1]["text"])

    async def _answer(self, sample_id: str, task: str) -> bytes | None:
        """Play the scripted behaviour; ``task`` is text holding the degradation labels."""
        behaviour = self._next_behaviour(sample_id)
        if behaviour.kind == "500":
            return self._response(500, {"error": {"message": "scripted failure", "code": 500}})
        if behaviour.kind == "429":
            extra = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
            return self._response(429, {"error": {"message": "slow down", "code": 429}}, extra)
        if behaviour.kind == "drop":
            return None
        jitter = self.latency_jitter
        latency = self.latency_s * self._random.uniform(1.0 - jitter, 1.0 + jitter)
        await asyncio.sleep(latency + behaviour.delay_s)
        found = _LABELS.search(task)
        answer = json.dumps(_answer_for(found.group(1) if found else "noise"))
        if behaviour.kind == "malformed":
            return self._response(200, self._completion("{not json, " + answer[:40]))
        if behaviour.kind == "schema":
            partial = {"vague_question": "Make this clearer.", "scene": "A street."}
            return self._response(200, self._completion(json.dumps(partial)))
        if behaviour.kind == "truncated":
            return self._response(200, self._completion(answer[: len(answer) // 2], "length"))
        return self._response(200, self._completion(answer))

    async def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
            return self._response(401, {"error": "Unauthorized"})
        if method == "GET" and path == "/v1/models":
            self.model_list_requests += 1
            data = [{"id": self.model, "object": "model", "owned_by": "vllm"}]
            return self._response(200, {"object": "list", "data": data})
        if method == "GET" and path == "/_stats":
            return self._response(200, self.stats())
        if method == "POST" and path == "/v1/chat/completions":
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                return await self._chat(headers, body)
            finally:
                self.active -= 1
        return self._response(404, {"error": {"message": f"no route {method} {path}"}})

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    header = await reader.readline()
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                response = await self._route(method, path, headers, body)
                if response is None:
                    break  # "drop": close without answering
                writer.write(response)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # shutting down; ending normally keeps asyncio's stream callback quiet
        finally:
            writer.close()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Root URL of the running server."""
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, ready: threading.Event) -> None:
        server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, backlog=1024, limit=16 * 1024 * 1024
        )
        self.port = server.sockets[0].getsockname()[1]
        self._stopping = asyncio.Event()
        ready.set()
        await self._stopping.wait()
        server.close()
        handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def start(self) -> str:
        """Serve in a background thread; return the root URL."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="vllm-protocol-double", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("protocol double did not start")
        return self.url

    def stop(self) -> None:
        """Stop serving (in-flight handlers are cancelled) and join the thread."""
        if self._loop is None or self._thread is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._loop = self._thread = self._stopping = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- as a separate process (throughput tests and the benchmark) -----------------------------


def start_process(
    *,
    latency_s: float,
    latency_jitter: float = 0.0,
    model: str = "test-vlm",
    guided_decoding: str = "response_format",
    deep_validate: bool = True,
) -> tuple[subprocess.Popen[str], str]:
    """Run the double in its own Python process; return (process, root URL)."""
    command = [
        sys.executable,
        __file__,
        "--latency",
        str(latency_s),
        "--latency-jitter",
        str(latency_jitter),
        "--model",
        model,
        "--guided-decoding",
        guided_decoding,
    ]
    if not deep_validate:
        command.append("--shallow")
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("LISTENING "):
        process.kill()
        raise RuntimeError(f"protocol double process did not start: {line!r}")
    return process, line.split(" ", 1)[1]


def stop_process(process: subprocess.Popen[str]) -> None:
    """Stop a process from :func:`start_process` (closing its stdin ends it)."""
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def fetch_stats(url: str) -> dict[str, Any]:
    """Counters of a double running at ``url``."""
    with urllib.request.urlopen(f"{url}/_stats", timeout=10) as response:
        return json.loads(response.read())


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="mean seconds per answer")
    parser.add_argument("--latency-jitter", type=float, default=0.0, help="relative, uniform")
    parser.add_argument("--model", default="test-vlm")
    parser.add_argument("--guided-decoding", default="response_format")
    parser.add_argument(
        "--shallow", action="store_true", help="answer without parsing or checking the request"
    )
    arguments = parser.parse_args()
    double = ProtocolDouble(
        model=arguments.model,
        guided_decoding=arguments.guided_decoding,
        latency_s=arguments.latency,
        latency_jitter=arguments.latency_jitter,
        deep_validate=not arguments.shallow,
    )
    url = double.start()
    print(f"LISTENING {url}", flush=True)
    try:
        sys.stdin.read()  # serve until the parent closes our stdin
    finally:
        double.stop()


if __name__ == "__main__":
    _main()
