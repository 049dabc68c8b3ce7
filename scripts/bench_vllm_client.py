"""Benchmark the vLLM annotation client against the protocol double, and project 5.2 M samples.

The double (tests/vllm_protocol_double.py, a stand-in for vLLM's OpenAI-compatible
server, NOT vLLM) runs in its own process and answers every request after a
simulated latency, so this measures the client: throughput at 1, 8, 64 and 256
requests in flight, the ratio to one at a time, and the client's own CPU time per
request (process CPU time / requests; the server's CPU is not counted). Requests
carry two 512x512 PNGs like the real pairs.

The projection turns a server's throughput (requests/s, measured on the real
GPU server) into annotation time for the whole data set, the client CPU it costs,
and the requests in flight it needs (Little's law: throughput x server latency).

    .venv/bin/python scripts/bench_vllm_client.py --latency 0.2 --server-rps 2 5 10 20 50
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from vllm_protocol_double import fetch_stats, start_process, stop_process  # noqa: E402

from cotir_pipeline.annotation.base import AnnotationRequest  # noqa: E402
from cotir_pipeline.annotation.vllm_backend import VllmBackend, VllmConfig  # noqa: E402
from cotir_pipeline.shards import encode_png  # noqa: E402

MODEL = "bench-vlm"


def pair_images(size: int) -> tuple[bytes, bytes]:
    """A real photograph (HQ) and a noisy copy (LQ), as stored PNGs."""
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BICUBIC)
    hq = np.asarray(photo, dtype=np.uint8)
    noise = np.random.default_rng(0).normal(0.0, 20.0, hq.shape)
    lq = np.clip(hq + noise, 0, 255).astype(np.uint8)
    return encode_png(lq), encode_png(hq)


def run_level(
    url: str, in_flight: int, count: int, lq: bytes, hq: bytes, prefix: str
) -> tuple[float, float]:
    """(requests/s, client CPU ms per request) for ``count`` requests at ``in_flight``."""
    config = VllmConfig(base_urls=(url,), model=MODEL, max_in_flight=in_flight, preflight=False)
    backend = VllmBackend(config)
    requests = [
        AnnotationRequest(f"{prefix}{index:06d}", lq, hq, "noise") for index in range(count)
    ]
    cpu_started = time.process_time()
    started = time.perf_counter()
    results = backend.annotate(requests)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    failed = [result for result in results if result.status != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, e.g. {failed[0].reason}")
    return count / elapsed, 1000.0 * cpu / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="simulated server seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="relative latency jitter")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--waves", type=int, default=4, help="requests = waves x in-flight")
    parser.add_argument("--samples", type=int, default=5_200_000)
    parser.add_argument("--server-rps", type=float, nargs="+", default=[2.0, 5.0, 10.0, 20.0, 50.0])
    parser.add_argument(
        "--server-latency",
        type=float,
        default=8.0,
        help="seconds a real VLM takes per answer (for the in-flight estimate)",
    )
    arguments = parser.parse_args()

    lq, hq = pair_images(arguments.image_size)
    print(
        f"client benchmark: simulated latency {arguments.latency:g} s "
        f"(jitter +-{arguments.jitter:.0%}), two {arguments.image_size}px PNGs per request "
        f"({(len(lq) + len(hq)) / 1e6:.2f} MB, base64 {4 * (len(lq) + len(hq)) / 3e6:.2f} MB)"
    )
    process, url = start_process(
        latency_s=arguments.latency,
        latency_jitter=arguments.jitter,
        model=MODEL,
        deep_validate=False,
    )
    rows = []
    try:
        run_level(url, 4, 8, lq, hq, "warm-")
        for level in arguments.in_flight:
            count = max(16, arguments.waves * level)
            rate, cpu_ms = run_level(url, level, count, lq, hq, f"n{level}-")
            rows.append((level, count, rate, cpu_ms))
        peak = fetch_stats(url)["max_active"]
    finally:
        stop_process(process)

    base = rows[0][2]
    print(f"{'in flight':>9} {'requests':>8} {'req/s':>8} {'x vs 1':>7} {'client CPU ms/req':>18}")
    for level, count, rate, cpu_ms in rows:
        print(f"{level:>9} {count:>8} {rate:>8.1f} {rate / base:>7.1f} {cpu_ms:>18.2f}")
    print(f"most requests in flight seen by the server: {peak}")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (other work skews the numbers)")

    level, _, _, cpu_ms = rows[-1]  # the steady state: most requests, most in flight
    print(
        f"\nprojection for {arguments.samples:,} samples (client CPU {cpu_ms:.2f} ms/request "
        f"as measured at {level} in flight; real server latency {arguments.server_latency:g} s):"
    )
    print(
        f"{'server req/s':>12} {'annotation time':>16} {'client CPU cores':>17} {'in flight':>10}"
    )
    for rps in arguments.server_rps:
        seconds = arguments.samples / rps
        days = seconds / 86400
        span = f"{days:.1f} days" if days >= 1 else f"{seconds / 3600:.1f} h"
        cores = rps * cpu_ms / 1000.0
        in_flight = int(np.ceil(rps * arguments.server_latency))
        print(f"{rps:>12g} {span:>16} {cores:>17.3f} {in_flight:>10}")


if __name__ == "__main__":
    main()
