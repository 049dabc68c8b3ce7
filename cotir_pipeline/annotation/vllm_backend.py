"""The production annotation backend: a VLM served by vLLM, over its OpenAI-compatible API.

Any vision-language model vLLM serves works (Qwen2.5-VL in the paper). Each
request is one ``POST /v1/chat/completions`` with the instruction text and both
images as base64 data URLs; the answer is constrained to
:data:`~cotir_pipeline.annotation.schema.ANSWER_JSON_SCHEMA` by vLLM's structured
outputs, through the request field chosen by :attr:`VllmConfig.guided_decoding`:

- ``response_format`` (default): ``{"type": "json_schema", "json_schema": {...}}``,
  the OpenAI field, accepted by vLLM's chat endpoint since 0.6 and still current;
- ``structured_outputs``: ``{"structured_outputs": {"json": schema}}``, vLLM's own
  field since 0.10.2;
- ``guided_json``: ``{"guided_json": schema}``, for vLLM before 0.12 (removed there);
- ``none``: no constraint (the answer is still validated; use with servers that
  reject the fields above).

Requests run on asyncio with at most ``max_in_flight`` in flight, spread over one
or more servers (each attempt goes to the server with the fewest requests in
flight). 429, 5xx, timeouts and connection errors are retried with exponential
backoff and jitter (a 429's Retry-After is honoured); an answer that is not valid
JSON or breaks the schema is asked again, then recorded as a failure. A 401, 403
or 404 is a configuration error and stops the run. Every final result is written
to the SQLite cache (:mod:`cotir_pipeline.annotation.cache`) as soon as it is
known, so an interrupted run resumes where it stopped.

The HTTP client is ``httpx2`` (already installed as a dependency of
huggingface_hub), or ``httpx`` where that is installed instead; both have the
same API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import secrets
import shlex
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cotir_pipeline.annotation.base import (
    AnnotationRequest,
    AnnotationResult,
    check_unique_ids,
    sha256_text,
)
from cotir_pipeline.annotation.cache import AnnotationCache
from cotir_pipeline.annotation.prompts import InstructionTemplate, instruction_template
from cotir_pipeline.annotation.schema import ANSWER_JSON_SCHEMA, CotAnswer, answer_from_json
from cotir_pipeline.shards import STATUS_FAILED, STATUS_OK

logger = logging.getLogger(__name__)

GuidedDecoding = Literal["response_format", "structured_outputs", "guided_json", "none"]
#: Name given to the schema in ``response_format.json_schema.name``.
SCHEMA_NAME = "cot_annotation"
#: Header that carries ``<sample id>-<attempt>``; vLLM uses it as the request id when
#: started with ``--enable-request-id-headers``, so server logs name the sample.
REQUEST_ID_HEADER = "X-Request-Id"


class VllmServerError(RuntimeError):
    """A configuration problem every request would hit (wrong model, refused key, no server)."""


class VllmConfig(BaseModel):
    """Where the servers are and how to talk to them (the asset fills it from settings)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_urls: tuple[str, ...] = Field(
        description="Server roots, e.g. http://gpu1:8000 (a trailing /v1 is accepted)."
    )
    model: str = Field(min_length=1, description="Served model name (vllm serve's name).")
    api_key: str | None = Field(default=None, repr=False, description="Bearer token, if any.")
    max_in_flight: int = Field(default=64, ge=1, le=4096)
    request_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_attempts: int = Field(
        default=6, ge=1, le=50, description="Attempts per sample on 429/5xx/timeouts/connection."
    )
    max_invalid_attempts: int = Field(
        default=2, ge=1, le=10, description="Attempts per sample on invalid JSON or schema."
    )
    backoff_base_s: float = Field(default=1.0, ge=0, le=60)
    backoff_max_s: float = Field(default=60.0, ge=0, le=3600)
    retry_after_max_s: float = Field(default=120.0, ge=0, le=3600)
    max_tokens: int = Field(default=1024, ge=16, le=32768)
    temperature: float = Field(default=0.0, ge=0, le=2)
    seed: int | None = Field(default=None, description="Sampling seed (+attempt on re-asks).")
    guided_decoding: GuidedDecoding = "response_format"
    cache_path: Path | None = Field(default=None, description="SQLite cache file; None: none.")
    preflight: bool = Field(default=True, description="Check GET /v1/models before a run.")
    trust_env: bool = Field(default=False, description="Use HTTP(S)_PROXY etc. from the env.")

    @field_validator("base_urls", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("base_urls", mode="after")
    @classmethod
    def _normalise(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one server URL is needed")
        cleaned = []
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"expected http(s)://host[:port], got {url!r}")
            try:
                parts.port  # noqa: B018 - raises ValueError on a malformed port
            except ValueError:
                raise ValueError(f"bad port in {url!r}") from None
            root = url.rstrip("/").removesuffix("/v1").rstrip("/")
            if root in cleaned:
                raise ValueError(f"server {root} is listed twice")
            cleaned.append(root)
        return tuple(cleaned)


@dataclass
class RunStats:
    """Counters of the last :meth:`VllmBackend.annotate_async` call."""

    requested: int = 0
    cache_hits: int = 0
    http_requests: int = 0
    retries: int = 0
    ok: int = 0
    failed: int = 0
    per_server: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0


def _http_module() -> Any:
    """``httpx2`` if installed, else ``httpx`` (same API); a clear error when neither is."""
    try:
        import httpx2

        return httpx2
    except ImportError:
        pass
    try:
        import httpx

        return httpx
    except ImportError:
        raise ImportError(
            "the vLLM backend needs httpx2 (installed with huggingface_hub) or httpx"
        ) from None


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where installed (it comes with uvicorn), else asyncio's default.

    The client's own CPU per request is mostly event-loop and HTTP bookkeeping;
    uvloop roughly halves the loop's share (see scripts/bench_vllm_client.py).
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@cache
def _default_ssl_context() -> ssl.SSLContext:
    """One TLS context for every client: building one costs ~50 ms (the CA store is read)."""
    return ssl.create_default_context()


def _image_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ValueError("image bytes are not PNG, JPEG or WebP")


def image_data_url(data: bytes) -> str:
    """``data:image/<png|jpeg|webp>;base64,...`` for image bytes; ValueError for others."""
    return f"data:{_image_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


@cache
def _image_slots() -> tuple[str, str]:
    """Placeholders for the two image URLs while the rest of the body is JSON-encoded."""
    token = secrets.token_hex(8)
    return (f"@cotir-lq-{token}@", f"@cotir-hq-{token}@")


def guided_decoding_fields(mode: GuidedDecoding) -> dict[str, Any]:
    """The request fields that constrain the answer to the schema, for one mode."""
    if mode == "response_format":
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": SCHEMA_NAME, "schema": ANSWER_JSON_SCHEMA, "strict": True},
            }
        }
    if mode == "structured_outputs":
        return {"structured_outputs": {"json": ANSWER_JSON_SCHEMA}}
    if mode == "guided_json":
        return {"guided_json": ANSWER_JSON_SCHEMA}
    if mode == "none":
        return {}
    raise ValueError(f"unknown guided decoding mode {mode!r}")


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random.

    ``attempt`` counts failures so far (1 for the first retry): the step is
    ``min(max_s, base_s * 2**(attempt-1))``; the delay is uniform in [step/2, step].
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    step = min(max_s, base_s * 2.0 ** (attempt - 1))
    return step / 2.0 + rng.uniform(0.0, step / 2.0)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def strip_code_fence(text: str) -> str:
    """The JSON inside a Markdown code fence, if the model wrapped it in one."""
    stripped = text.strip()
    if stripped.startswith("```"):
        first_newline = stripped.find("\n")
        body = stripped[first_newline + 1 :] if first_newline >= 0 else ""
        if body.rstrip().endswith("```"):
            body = body.rstrip()[:-3]
        return body.strip()
    return stripped


@dataclass(frozen=True)
class _Outcome:
    """What one HTTP attempt gave: ok, invalid answer, transient or permanent failure."""

    kind: Literal["ok", "invalid", "transient", "permanent"]
    reason: str | None = None
    answer: CotAnswer | None = None
    raw: str | None = None
    delay_s: float | None = None


class _ServerPool:
    """Picks a server for each attempt: the healthy one with the fewest requests in flight.

    A server whose last attempt failed (timeout, connection error, 429, 5xx) rests
    for an exponentially growing while (0.5 s, 1 s, ... up to 30 s) and is only
    used when every server rests: a dead server answers fastest of all, and would
    otherwise draw the most traffic. Ties go round robin.
    """

    def __init__(self, roots: Sequence[str], clock: Callable[[], float] = time.monotonic) -> None:
        if not roots:
            raise ValueError("no server to send requests to")
        self.roots = list(roots)
        self.in_flight = [0] * len(self.roots)
        self.failures = [0] * len(self.roots)
        self.resting_until = [0.0] * len(self.roots)
        self._clock = clock
        self._next = 0

    def acquire(self) -> str:
        now = self._clock()
        count = len(self.roots)
        order = [(self._next + offset) % count for offset in range(count)]
        healthy = [index for index in order if self.resting_until[index] <= now]
        if healthy:
            best = min(healthy, key=lambda index: self.in_flight[index])
        else:
            best = min(order, key=lambda index: self.resting_until[index])
        self._next = (best + 1) % count
        self.in_flight[best] += 1
        return self.roots[best]

    def release(self, root: str, *, ok: bool) -> None:
        index = self.roots.index(root)
        self.in_flight[index] -= 1
        if ok:
            self.failures[index] = 0
            self.resting_until[index] = 0.0
        else:
            self.failures[index] += 1
            rest = min(30.0, 0.5 * 2.0 ** (self.failures[index] - 1))
            self.resting_until[index] = self._clock() + rest


def _served_models(response: Any) -> set[str]:
    try:
        data = response.json().get("data", [])
        return {str(item.get("id")) for item in data if isinstance(item, dict)}
    except (ValueError, AttributeError):
        return set()


def _parse_completion(response: Any) -> _Outcome:
    """Validate a 200 answer: the envelope, then the model's JSON against the schema."""
    try:
        envelope = response.json()
        choice = envelope["choices"][0]
        content = choice["message"]["content"]
        finish = choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError) as error:
        return _Outcome("invalid", reason=f"malformed completion envelope: {error!r}")
    if not isinstance(content, str):
        return _Outcome("invalid", reason="completion has no text content")
    try:
        answer = answer_from_json(strip_code_fence(content))
    except ValueError as error:
        reason = str(error)
        if finish == "length":
            reason = f"answer truncated at max_tokens ({reason})"
        return _Outcome("invalid", reason=reason, raw=content)
    return _Outcome("ok", answer=answer, raw=content)


class VllmBackend:
    """:class:`~cotir_pipeline.annotation.base.AnnotationBackend` over vLLM servers."""

    def __init__(
        self,
        config: VllmConfig,
        *,
        template: InstructionTemplate | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._template = template
        self._rng = rng or random.Random()
        self._usable_servers: tuple[str, ...] | None = None
        self.last_stats = RunStats()

    @property
    def model(self) -> str:
        """The served model name, recorded with every result."""
        return self.config.model

    @property
    def template(self) -> InstructionTemplate:
        """The instruction template (the shipped one unless another was given)."""
        if self._template is None:
            self._template = instruction_template()
        return self._template

    @property
    def template_version(self) -> str:
        """Version of the instruction and answer schema (part of the cache key)."""
        return self.template.version

    # -- requests ------------------------------------------------------------------------

    def build_payload(self, request: AnnotationRequest, *, attempt: int = 1) -> dict[str, Any]:
        """The chat-completions body for one request (ValueError for unusable images)."""
        urls = (image_data_url(bytes(request.lq_png)), image_data_url(bytes(request.hq_png)))
        return self._payload(request, attempt, urls)

    def build_body(self, request: AnnotationRequest, *, attempt: int = 1) -> bytes:
        """:meth:`build_payload` as JSON bytes, built without JSON-encoding the images.

        The base64 alphabet needs no JSON escaping, so the two image URLs are put
        into the encoded text in place of placeholders: encoding 1.5 MB of base64
        through ``json.dumps`` cost ~4 ms per request, most of the client's CPU.
        """
        slots = _image_slots()
        body = json.dumps(self._payload(request, attempt, slots)).encode("utf-8")
        for slot, data in zip(slots, (bytes(request.lq_png), bytes(request.hq_png)), strict=True):
            url = b"data:" + _image_mime(data).encode() + b";base64," + base64.b64encode(data)
            body = body.replace(slot.encode("ascii"), url, 1)
        return body

    def _payload(
        self, request: AnnotationRequest, attempt: int, image_urls: tuple[str, str]
    ) -> dict[str, Any]:
        rendered = self.template.render(request.degradation_label, request.recipe)
        content = [
            {"type": "text", "text": rendered.before_lq},
            {"type": "image_url", "image_url": {"url": image_urls[0]}},
            {"type": "text", "text": rendered.before_hq},
            {"type": "image_url", "image_url": {"url": image_urls[1]}},
            {"type": "text", "text": rendered.task},
        ]
        payload: dict[str, Any] = {
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": rendered.system},
                {"role": "user", "content": content},
            ],
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
        }
        if self.config.seed is not None:
            payload["seed"] = self.config.seed + attempt - 1
        payload.update(guided_decoding_fields(self.config.guided_decoding))
        return payload

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def _client(self, http: Any, *, connections: int) -> Any:
        config = self.config
        return http.AsyncClient(
            timeout=http.Timeout(
                config.request_timeout_s,
                connect=config.connect_timeout_s,
                pool=config.request_timeout_s,
            ),
            limits=http.Limits(max_connections=connections, max_keepalive_connections=connections),
            verify=_default_ssl_context(),
            trust_env=config.trust_env,
        )

    def _backoff(self, failures: int) -> float:
        config = self.config
        return backoff_delay(failures, config.backoff_base_s, config.backoff_max_s, self._rng)

    # -- preflight -----------------------------------------------------------------------

    async def check_servers(self) -> tuple[str, ...]:
        """GET /v1/models on every server (concurrently); return the usable ones.

        Raises :class:`VllmServerError` when a server answers but does not serve
        the configured model or refuses the key, or when no server can be reached.
        Unreachable servers are left out of the run with a warning.
        """
        http = _http_module()
        async with self._client(http, connections=len(self.config.base_urls)) as client:
            reasons = await asyncio.gather(
                *(self._check_server(client, http, root) for root in self.config.base_urls)
            )
        usable = []
        for root, reason in zip(self.config.base_urls, reasons, strict=True):
            if reason is None:
                usable.append(root)
            else:
                logger.warning("vLLM server %s left out of this run: %s", root, reason)
        if not usable:
            raise VllmServerError(f"no vLLM server reachable among {list(self.config.base_urls)}")
        return tuple(usable)

    async def _check_server(self, client: Any, http: Any, root: str) -> str | None:
        """None when ``root`` serves the model, else why it cannot be reached."""
        reason = None
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                response = await client.get(f"{root}/v1/models", headers=self._headers())
            except http.RequestError as error:
                reason = f"{type(error).__name__}: {error}"
            else:
                if response.status_code in (401, 403):
                    code = response.status_code
                    raise VllmServerError(f"{root} refused the API key (HTTP {code})")
                if response.status_code == 200:
                    served = _served_models(response)
                    if self.config.model not in served:
                        raise VllmServerError(
                            f"{root} serves {sorted(served)}, not {self.config.model!r}"
                        )
                    return None
                reason = f"HTTP {response.status_code}"
            if attempt < self.config.max_attempts:
                await asyncio.sleep(self._backoff(attempt))
        return reason

    # -- one sample ----------------------------------------------------------------------

    def _result(
        self,
        request: AnnotationRequest,
        started: float,
        attempts: int,
        *,
        answer: CotAnswer | None = None,
        reason: str | None = None,
        raw: str | None = None,
    ) -> AnnotationResult:
        return AnnotationResult(
            sample_id=request.sample_id,
            status=STATUS_OK if answer is not None else STATUS_FAILED,
            answer=answer,
            reason=reason,
            model=self.config.model,
            template_version=self.template_version,
            raw_response=raw,
            response_sha256=sha256_text(raw) if raw is not None else None,
            attempts=attempts,
            latency_s=time.perf_counter() - started,
        )

    async def _attempt(
        self, client: Any, http: Any, root: str, body: bytes, headers: dict[str, str]
    ) -> _Outcome:
        config = self.config
        try:
            async with asyncio.timeout(config.request_timeout_s):
                response = await client.post(
                    f"{root}/v1/chat/completions", content=body, headers=headers
                )
        except (TimeoutError, http.TimeoutException):
            return _Outcome("transient", reason=f"timeout after {config.request_timeout_s:g} s")
        except http.RequestError as error:
            return _Outcome("transient", reason=f"connection error: {type(error).__name__}")
        status = response.status_code
        if status == 200:
            return _parse_completion(response)
        detail = response.text[:300].replace("\n", " ")
        if status in (401, 403, 404):
            raise VllmServerError(f"{root} answered HTTP {status}: {detail}")
        if status in (408, 429) or status >= 500:
            delay = None
            if status == 429:
                waited = parse_retry_after(response.headers.get("Retry-After"))
                if waited is not None:
                    delay = min(config.retry_after_max_s, waited)
            return _Outcome("transient", reason=f"HTTP {status}: {detail}", delay_s=delay)
        return _Outcome("permanent", reason=f"HTTP {status}: {detail}")

    async def _annotate_one(
        self, client: Any, http: Any, request: AnnotationRequest, servers: _ServerPool
    ) -> AnnotationResult:
        config = self.config
        stats = self.last_stats
        started = time.perf_counter()
        try:
            body = self.build_body(request)
        except ValueError as error:
            return self._result(request, started, 0, reason=f"bad request: {error}")
        attempts = transient = invalid = 0
        last_raw: str | None = None
        while True:
            attempts += 1
            root = servers.acquire()
            stats.http_requests += 1
            stats.per_server[root] = stats.per_server.get(root, 0) + 1
            headers = {**self._headers(), REQUEST_ID_HEADER: f"{request.sample_id}-{attempts}"}
            outcome = None
            try:
                outcome = await self._attempt(client, http, root, body, headers)
            finally:
                # Invalid answers and 4xx are about the sample, not the server's health.
                servers.release(root, ok=outcome is not None and outcome.kind != "transient")
            if outcome.kind == "ok":
                return self._result(
                    request, started, attempts, answer=outcome.answer, raw=outcome.raw
                )
            if outcome.kind == "permanent":
                return self._result(request, started, attempts, reason=outcome.reason)
            if outcome.kind == "invalid":
                invalid += 1
                last_raw = outcome.raw
                if invalid >= config.max_invalid_attempts:
                    reason = f"{outcome.reason} (after {invalid} answers)"
                    return self._result(request, started, attempts, reason=reason, raw=last_raw)
                stats.retries += 1
                if config.seed is not None:  # ask with another seed, or get the same answer
                    body = self.build_body(request, attempt=invalid + 1)
                continue
            transient += 1
            if transient >= config.max_attempts:
                reason = f"gave up after {transient} attempts: {outcome.reason}"
                return self._result(request, started, attempts, reason=reason, raw=last_raw)
            stats.retries += 1
            delay = outcome.delay_s if outcome.delay_s is not None else self._backoff(transient)
            await asyncio.sleep(delay)

    # -- batches -------------------------------------------------------------------------

    async def annotate_async(
        self,
        requests: Sequence[AnnotationRequest],
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[AnnotationResult]:
        """Annotate a batch concurrently; see the module docstring for the behaviour.

        Cached ``ok`` results are returned without asking (``cached=True``); every
        new final result is committed to the cache as soon as it is known, so a
        cancelled or crashed run loses only the requests in flight.
        """
        check_unique_ids(requests)
        started = time.perf_counter()
        stats = self.last_stats = RunStats(requested=len(requests))
        results: list[AnnotationResult | None] = [None] * len(requests)
        cache = AnnotationCache(self.config.cache_path) if self.config.cache_path else None
        try:
            if cache is not None:
                hits = cache.get_many(
                    (request.sample_id for request in requests), self.template_version, self.model
                )
                for index, request in enumerate(requests):
                    results[index] = hits.get(request.sample_id)
                stats.cache_hits = len(hits)
            pending = [(i, request) for i, request in enumerate(requests) if results[i] is None]
            done = len(requests) - len(pending)
            if progress is not None and done:
                progress(done, len(requests))
            if pending:
                await self._run_pending(pending, results, cache, progress, done, len(requests))
        finally:
            if cache is not None:
                cache.close()
            stats.wall_s = time.perf_counter() - started
        final = [result for result in results if result is not None]
        if len(final) != len(requests):
            raise RuntimeError("internal error: a request has no result")
        stats.ok = sum(result.status == STATUS_OK for result in final)
        stats.failed = len(final) - stats.ok
        return final

    async def _run_pending(
        self,
        pending: list[tuple[int, AnnotationRequest]],
        results: list[AnnotationResult | None],
        cache: AnnotationCache | None,
        progress: Callable[[int, int], None] | None,
        done: int,
        total: int,
    ) -> None:
        """Run the pending requests on ``max_in_flight`` workers.

        Each worker owns a small client (one keep-alive connection per server): the
        in-flight bound is the number of workers, and a connection pool never has
        more than a handful of connections to scan (httpcore's pool does a linear
        scan per request, which dominated the client's CPU with one pool of 64+).
        """
        http = _http_module()
        servers = self.config.base_urls
        if self.config.preflight:
            if self._usable_servers is None:
                self._usable_servers = await self.check_servers()
            servers = self._usable_servers
        pool = _ServerPool(servers)
        queue = iter(pending)
        finished = done

        async def worker() -> None:
            nonlocal finished
            async with self._client(http, connections=len(servers)) as client:
                for index, request in queue:  # one shared iterator: each request taken once
                    try:
                        result = await self._annotate_one(client, http, request, pool)
                    except VllmServerError:
                        raise
                    except Exception as error:  # recorded; one odd sample never stops a batch
                        logger.exception("unexpected error annotating %s", request.sample_id)
                        result = self._result(
                            request,
                            time.perf_counter(),
                            0,
                            reason=f"unexpected error: {type(error).__name__}: {error}",
                        )
                    results[index] = result
                    if cache is not None:
                        cache.put(result)
                    finished += 1
                    if progress is not None:
                        progress(finished, total)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.config.max_in_flight, len(pending))):
                    group.create_task(worker())
        except ExceptionGroup as errors:  # a configuration error: raise it as itself
            fatal = [error for error in errors.exceptions if isinstance(error, VllmServerError)]
            if fatal:
                raise fatal[0] from None
            raise

    def annotate(self, requests: Sequence[AnnotationRequest]) -> list[AnnotationResult]:
        """Synchronous :meth:`annotate_async` (for callers without an event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                return runner.run(self.annotate_async(requests))
        raise RuntimeError(
            "annotate() was called inside a running event loop; await annotate_async() instead"
        )


def vllm_serve_command(
    model: str,
    *,
    served_model_name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    tensor_parallel_size: int = 1,
    max_model_len: int = 8192,
    images_per_prompt: int = 2,
    gpu_memory_utilization: float | None = None,
    max_num_seqs: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``vllm serve`` command line (argv) for serving ``model`` to this backend.

    ``model`` is a hub name or a local folder. Two images per prompt are needed
    (LQ and HQ). An API key is read by vLLM from ``VLLM_API_KEY`` in the server's
    environment, which keeps it off the command line (and out of ``ps``). Nothing
    here starts a process; run the command where the GPUs are, or wrap it in a
    service. Use :func:`shlex.join` to print it.
    """
    if not model:
        raise ValueError("model must be a name or a folder")
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535, got {port}")
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    if max_model_len < 512:
        raise ValueError(f"max_model_len must be >= 512, got {max_model_len}")
    if images_per_prompt < 2:
        raise ValueError("the annotation request carries two images: images_per_prompt >= 2")
    argv = [
        "vllm",
        "serve",
        model,
        "--host",
        host,
        "--port",
        str(port),
        "--tensor-parallel-size",
        str(tensor_parallel_size),
        "--max-model-len",
        str(max_model_len),
        "--limit-mm-per-prompt",
        json.dumps({"image": images_per_prompt}),
    ]
    if served_model_name:
        argv += ["--served-model-name", served_model_name]
    if gpu_memory_utilization is not None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        argv += ["--gpu-memory-utilization", f"{gpu_memory_utilization:g}"]
    if max_num_seqs is not None:
        if max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        argv += ["--max-num-seqs", str(max_num_seqs)]
    return argv + list(extra_args)


def format_command(argv: Sequence[str]) -> str:
    """A shell-quoted command line for docs and logs."""
    return shlex.join(argv)
