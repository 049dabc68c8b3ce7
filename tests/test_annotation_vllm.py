"""The vLLM backend against a protocol test double of vLLM's OpenAI-compatible server.

vLLM itself cannot run here (CUDA-only wheels); :mod:`vllm_protocol_double` checks
each request's shape and answers like the server would, scripted per sample id.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from vllm_protocol_double import (
    Behaviour,
    ProtocolDouble,
    fetch_stats,
    start_process,
    stop_process,
)

from cotir_pipeline.annotation.base import AnnotationBackend, AnnotationRequest
from cotir_pipeline.annotation.cache import AnnotationCache
from cotir_pipeline.annotation.rules import check_answer
from cotir_pipeline.annotation.schema import ANSWER_JSON_SCHEMA
from cotir_pipeline.annotation.vllm_backend import (
    REQUEST_ID_HEADER,
    VllmBackend,
    VllmConfig,
    VllmServerError,
    backoff_delay,
    format_command,
    parse_retry_after,
    vllm_serve_command,
)
from cotir_pipeline.shards import encode_png
from cotir_test_support import free_port

MODEL = "test-vlm"
LABELS = ("haze", "rain+low_light", "noise+jpeg", "lost_color", "snow")


def _requests(count: int, prefix: str = "s") -> list[AnnotationRequest]:
    generator = np.random.default_rng(count)
    requests = []
    for index in range(count):
        hq = encode_png(generator.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        lq = encode_png(generator.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        label = LABELS[index % len(LABELS)]
        requests.append(AnnotationRequest(f"{prefix}{index:04d}", lq, hq, label))
    return requests


def _config(urls: str | tuple[str, ...], **changes: Any) -> VllmConfig:
    values: dict[str, Any] = {
        "base_urls": urls,
        "model": MODEL,
        "max_in_flight": 8,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "request_timeout_s": 5.0,
    }
    values.update(changes)
    return VllmConfig(**values)


@pytest.fixture
def double() -> Any:
    server = ProtocolDouble(model=MODEL)
    server.start()
    yield server
    server.stop()


# -- happy path and request shape ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["response_format", "structured_outputs", "guided_json", "none"])
def test_happy_path_in_every_guided_decoding_mode(mode: str) -> None:
    server = ProtocolDouble(model=MODEL, guided_decoding=mode)
    url = server.start()
    try:
        requests = _requests(12)
        backend = VllmBackend(_config(url, guided_decoding=mode))
        assert isinstance(backend, AnnotationBackend)
        results = backend.annotate(requests)
    finally:
        server.stop()
    assert server.errors == []
    assert [r.sample_id for r in results] == [r.sample_id for r in requests]
    for request, result in zip(requests, results, strict=True):
        assert result.status == "ok", result.reason
        assert result.model == MODEL
        assert result.template_version == backend.template_version
        assert result.attempts == 1
        assert not result.cached
        assert result.raw_response is not None
        assert result.response_sha256 is not None
        assert len(result.response_sha256) == 64
        assert check_answer(result.answer, request.degradation_label) == []
    payload = server.last_payload
    assert payload is not None
    assert payload["max_tokens"] == 1024
    if mode == "response_format":
        assert payload["response_format"]["json_schema"]["schema"] == ANSWER_JSON_SCHEMA
    elif mode == "structured_outputs":
        assert payload["structured_outputs"] == {"json": ANSWER_JSON_SCHEMA}
    elif mode == "guided_json":
        assert payload["guided_json"] == ANSWER_JSON_SCHEMA
    assert server.last_headers[REQUEST_ID_HEADER.lower()].rsplit("-", 1)[1] == "1"
    assert server.model_list_requests == 1  # one preflight


def test_payload_carries_both_images_and_the_labels(double: ProtocolDouble) -> None:
    request = _requests(1)[0]
    payload = VllmBackend(_config(double.url)).build_payload(request)
    assert double.validate(payload) == []
    user = payload["messages"][1]["content"]
    urls = [part["image_url"]["url"] for part in user if part["type"] == "image_url"]
    assert len(urls) == 2
    assert all(url.startswith("data:image/png;base64,") for url in urls)
    assert user[1]["type"] == "image_url"  # LQ first, then HQ
    assert "Degradation labels: haze" in user[-1]["text"]
    backend = VllmBackend(_config(double.url, seed=5))
    assert json.loads(backend.build_body(request, attempt=2)) == backend.build_payload(
        request, attempt=2
    )


def test_unusable_image_bytes_fail_without_a_request(double: ProtocolDouble) -> None:
    good = _requests(1)[0]
    bad = AnnotationRequest("bad", b"GIF89a....", good.hq_png, "haze")
    result = VllmBackend(_config(double.url)).annotate([bad])[0]
    assert result.status == "failed"
    assert result.reason is not None
    assert "not PNG" in result.reason
    assert double.chat_requests == 0


# -- retries, failures, timeouts ---------------------------------------------------------------


def test_500_and_429_are_retried_then_succeed(double: ProtocolDouble) -> None:
    requests = _requests(3)
    double.script(requests[0].sample_id, "500", "500")
    double.script(requests[1].sample_id, Behaviour("429", retry_after="0.3"), "500")
    started = time.perf_counter()
    backend = VllmBackend(_config(double.url))
    results = backend.annotate(requests)
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    assert [r.attempts for r in results] == [3, 3, 1]
    assert results[1].latency_s >= 0.3  # Retry-After honoured
    assert time.perf_counter() - started >= 0.3
    assert backend.last_stats.retries == 4
    assert double.requests_per_sample[requests[0].sample_id] == 3


def test_persistent_5xx_becomes_a_recorded_failure(double: ProtocolDouble) -> None:
    requests = _requests(2)
    double.script(requests[0].sample_id, *["500"] * 10)
    results = VllmBackend(_config(double.url, max_attempts=3)).annotate(requests)
    assert results[0].status == "failed"
    assert results[0].reason is not None
    assert results[0].reason.startswith("gave up after 3 attempts: HTTP 500")
    assert results[0].attempts == 3
    assert results[1].status == "ok"


def test_malformed_json_is_retried_then_recorded(double: ProtocolDouble) -> None:
    requests = _requests(4)
    double.script(requests[0].sample_id, "malformed")  # recovers on the second answer
    double.script(requests[1].sample_id, "malformed", "malformed")
    double.script(requests[2].sample_id, "schema", "schema")
    double.script(requests[3].sample_id, "truncated", "truncated")
    results = VllmBackend(_config(double.url, max_invalid_attempts=2)).annotate(requests)
    assert results[0].status == "ok"
    assert results[0].attempts == 2
    failed = results[1:]
    assert [r.status for r in failed] == ["failed"] * 3
    assert all(r.attempts == 2 for r in failed)
    reasons = [r.reason or "" for r in failed]
    assert reasons[0].startswith("invalid JSON")
    assert reasons[1].startswith("schema violation")
    assert reasons[2].startswith("answer truncated at max_tokens")
    raw = failed[0].raw_response
    assert raw is not None
    assert raw.startswith("{not json")  # the bad answer is kept for inspection
    assert failed[0].response_sha256 is not None


def test_timeouts_and_dropped_connections_are_retried(double: ProtocolDouble) -> None:
    requests = _requests(3)
    double.script(requests[0].sample_id, Behaviour("slow", delay_s=2.0))
    double.script(requests[1].sample_id, *[Behaviour("slow", delay_s=2.0)] * 3)
    double.script(requests[2].sample_id, "drop")
    config = _config(double.url, request_timeout_s=0.3, max_attempts=2)
    started = time.perf_counter()
    results = VllmBackend(config).annotate(requests)
    assert time.perf_counter() - started < 1.9  # nobody waited for the slow answers
    assert results[0].status == "ok"
    assert results[0].attempts == 2
    assert results[1].status == "failed"
    assert results[1].reason == "gave up after 2 attempts: timeout after 0.3 s"
    assert results[2].status == "ok"
    assert results[2].attempts == 2


# -- configuration errors ------------------------------------------------------------------------


def test_wrong_model_or_key_stops_the_run(tmp_path: Path) -> None:
    with ProtocolDouble(model="other-model", api_key="secret") as url:
        requests = _requests(2)
        with pytest.raises(VllmServerError, match="refused the API key"):
            VllmBackend(_config(url, model="other-model")).annotate(requests)
        with pytest.raises(VllmServerError, match="serves \\['other-model'\\]"):
            VllmBackend(_config(url, api_key="secret")).annotate(requests)
        with pytest.raises(VllmServerError, match="HTTP 404"):
            VllmBackend(_config(url, api_key="secret", preflight=False)).annotate(requests)
        results = VllmBackend(_config(url, model="other-model", api_key="secret")).annotate(
            requests
        )
        assert [r.status for r in results] == ["ok", "ok"]


def test_unreachable_servers_are_left_out(
    double: ProtocolDouble, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = _config((dead, double.url), max_attempts=2)
    backend = VllmBackend(config)
    with caplog.at_level(logging.WARNING):
        results = backend.annotate(_requests(6))
    assert all(r.status == "ok" for r in results)
    assert backend.last_stats.per_server == {double.url: 6}
    assert "left out of this run" in caplog.text
    with pytest.raises(VllmServerError, match="no vLLM server reachable"):
        VllmBackend(_config(dead, max_attempts=2)).annotate(_requests(1))


def test_a_server_that_dies_is_rested_not_hammered(double: ProtocolDouble) -> None:
    double.latency_s = 0.01
    dead = f"http://127.0.0.1:{free_port()}"
    backend = VllmBackend(_config((dead, double.url), max_in_flight=4, preflight=False))
    results = backend.annotate(_requests(40))
    assert all(r.status == "ok" for r in results)
    assert backend.last_stats.per_server[double.url] == 40
    assert backend.last_stats.per_server[dead] <= 6  # the first tries, then it rests
    assert sum(r.attempts for r in results) == 40 + backend.last_stats.per_server[dead]


def test_sync_call_inside_an_event_loop_is_refused(double: ProtocolDouble) -> None:
    backend = VllmBackend(_config(double.url))

    async def inside() -> None:
        backend.annotate(_requests(1))

    with pytest.raises(RuntimeError, match="annotate_async"):
        asyncio.run(inside())


# -- concurrency and servers ---------------------------------------------------------------------


def test_several_servers_share_the_load() -> None:
    first = ProtocolDouble(model=MODEL, latency_s=0.02)
    second = ProtocolDouble(model=MODEL, latency_s=0.02)
    urls = (first.start(), second.start())
    try:
        backend = VllmBackend(_config(urls, max_in_flight=6))
        results = backend.annotate(_requests(30))
    finally:
        first.stop()
        second.stop()
    assert all(r.status == "ok" for r in results)
    assert first.chat_requests + second.chat_requests == 30
    assert min(first.chat_requests, second.chat_requests) >= 10
    assert set(backend.last_stats.per_server) == set(urls)


def test_in_flight_requests_never_exceed_the_bound() -> None:
    with_latency = ProtocolDouble(model=MODEL, latency_s=0.05)
    url = with_latency.start()
    try:
        results = VllmBackend(_config(url, max_in_flight=5)).annotate(_requests(40))
    finally:
        with_latency.stop()
    assert all(r.status == "ok" for r in results)
    assert with_latency.max_active == 5


def test_64_in_flight_are_40_times_faster_than_1() -> None:
    """Server latency 200 ms dominates: throughput must scale with requests in flight.

    The double runs in its own process so the client's CPU time is its own. One at
    a time is measured on 10 requests (256 would take 51 s). 64 in flight is the
    best of up to three runs of 256 requests: the bound is about the client, and
    a run can lose its CPU to whatever else shares this machine.
    """
    process, url = start_process(latency_s=0.2, deep_validate=False)
    try:
        VllmBackend(_config(url, max_in_flight=4)).annotate(_requests(4, "warm"))

        def throughput(in_flight: int, count: int, prefix: str) -> float:
            backend = VllmBackend(_config(url, max_in_flight=in_flight, preflight=False))
            requests = _requests(count, prefix)
            started = time.perf_counter()
            results = backend.annotate(requests)
            elapsed = time.perf_counter() - started
            assert all(r.status == "ok" for r in results)
            return count / elapsed

        serial = throughput(1, 10, "one-")
        parallel = 0.0
        for attempt in range(3):
            parallel = max(parallel, throughput(64, 256, f"many{attempt}-"))
            if parallel >= 40 * serial:
                break
        stats = fetch_stats(url)
    finally:
        stop_process(process)
    assert stats["errors"] == []
    assert stats["max_active"] == 64
    assert parallel >= 40 * serial, f"{parallel:.1f} req/s vs {serial:.2f} req/s"


# -- cache and resume --------------------------------------------------------------------------


def test_cached_answers_are_not_asked_again(double: ProtocolDouble, tmp_path: Path) -> None:
    config = _config(double.url, cache_path=tmp_path / "cache.sqlite")
    requests = _requests(10)
    double.script(requests[3].sample_id, "malformed", "malformed")
    first = VllmBackend(config).annotate(requests)
    assert [r.status for r in first].count("failed") == 1
    asked = double.chat_requests
    second = VllmBackend(config).annotate(requests)
    assert [r.cached for r in second] == [i != 3 for i in range(10)]
    assert double.chat_requests == asked + 1  # only the failure is asked again
    assert [r.answer for r in second if r.cached] == [r.answer for r in first if r.status == "ok"]
    other_model = _config(double.url, cache_path=tmp_path / "cache.sqlite", model="m2")
    with AnnotationCache(tmp_path / "cache.sqlite") as cache:
        ids = [r.sample_id for r in requests]
        assert cache.get_many(ids, "another-version", MODEL) == {}
        assert cache.get_many(ids, VllmBackend(other_model).template_version, "m2") == {}
        assert cache.count() == {"ok": 10}


def test_interrupted_run_resumes_with_only_the_unanswered(
    double: ProtocolDouble, tmp_path: Path
) -> None:
    double.latency_s = 0.02
    path = tmp_path / "cache.sqlite"
    config = _config(double.url, max_in_flight=4, cache_path=path)
    requests = _requests(40)
    ids = [request.sample_id for request in requests]

    async def interrupted() -> None:
        task = asyncio.current_task()
        assert task is not None

        def progress(done: int, total: int) -> None:
            if done >= 20:
                task.cancel()

        await VllmBackend(config).annotate_async(requests, progress=progress)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(interrupted())
    backend = VllmBackend(config)
    with AnnotationCache(path) as cache:
        answered = set(cache.get_many(ids, backend.template_version, MODEL))
    assert 20 <= len(answered) < 40
    before = collections.Counter(double.requests_per_sample)
    results = backend.annotate(requests)
    assert all(r.status == "ok" for r in results)
    assert {r.sample_id for r in results if r.cached} == answered
    new = double.requests_per_sample - before
    assert set(new) == set(ids) - answered
    assert set(new.values()) == {1}
    assert all(double.requests_per_sample[sample_id] == 1 for sample_id in answered)


# -- helpers -------------------------------------------------------------------------------------


def test_config_validation() -> None:
    config = VllmConfig(base_urls="http://a:8000/v1/, https://b", model="m")
    assert config.base_urls == ("http://a:8000", "https://b")
    assert "secret" not in repr(VllmConfig(base_urls="http://a", model="m", api_key="secret"))
    bad_urls = {
        "": "at least one",
        "ftp://a": "expected http",
        "http://a:99999": "bad port",
        "http://a,http://a/v1": "listed twice",
    }
    for bad, message in bad_urls.items():
        with pytest.raises(ValueError, match=message):
            VllmConfig(base_urls=bad, model="m")
    with pytest.raises(ValueError, match="guided_decoding"):
        VllmConfig(base_urls="http://a", model="m", guided_decoding="grammar")


def test_backoff_and_retry_after() -> None:
    generator = random.Random(0)
    for attempt in range(1, 10):
        delay = backoff_delay(attempt, 1.0, 8.0, generator)
        step = min(8.0, 2.0 ** (attempt - 1))
        assert step / 2 <= delay <= step
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(0, 1.0, 8.0, generator)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = "Wed, 21 Oct 2015 07:28:10 GMT"
    assert parse_retry_after(date, now=1445412480.0) == pytest.approx(10.0)


def test_vllm_serve_command() -> None:
    argv = vllm_serve_command(
        "/models/Qwen2.5-VL-7B-Instruct",
        served_model_name="qwen2.5-vl-7b",
        host="0.0.0.0",
        port=8001,
        tensor_parallel_size=2,
        max_model_len=16384,
        gpu_memory_utilization=0.9,
        max_num_seqs=64,
    )
    assert argv[:3] == ["vllm", "serve", "/models/Qwen2.5-VL-7B-Instruct"]
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert flags == {
        "--host": "0.0.0.0",
        "--port": "8001",
        "--tensor-parallel-size": "2",
        "--max-model-len": "16384",
        "--limit-mm-per-prompt": '{"image": 2}',
        "--served-model-name": "qwen2.5-vl-7b",
        "--gpu-memory-utilization": "0.9",
        "--max-num-seqs": "64",
    }
    assert "--limit-mm-per-prompt '{\"image\": 2}'" in format_command(argv)
    bad_arguments = {"port": 0, "tensor_parallel_size": 0, "images_per_prompt": 1}
    for name, value in bad_arguments.items():
        with pytest.raises(ValueError, match=name.split("_")[0]):
            vllm_serve_command("m", **{name: value})
