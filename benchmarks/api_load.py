"""Status polls against a running job at a steady rate on loopback; prints p50/p99 latency.

    python benchmarks/api_load.py [--rate 200] [--seconds 10]

Starts `task-affinity serve` (one embedded worker) in a temporary folder with SQLite, submits a job
that keeps the worker busy for the whole measurement, then sends GET /v1/jobs/{id} open-loop at
``rate`` requests per second (each request at its scheduled time, whether or not earlier ones have
answered) for ``seconds`` seconds, bounded in count (rate × seconds) and time. Goal: p99 < 50 ms at
200 requests/s. Everything shares this machine's cores: the API, the worker training a model, and
this load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BUSY_JOB = {
    "dataset": {"source": "planted", "params": {"tasks": 8, "groups": 2, "rows_per_task": 300}},
    "model": {"hidden": [32], "activation": "tanh"},
    "training": {"epochs": 5000, "patience": 5000, "batch_size": 16},
    "estimation": {"num_subsets": 40, "subset_size": 3},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, headers: dict[str, str], rate: float, seconds: float) -> tuple[list[float], int]:
    n = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=10) as client:
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal errors
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            start = time.perf_counter()
            try:
                r = await client.get(url)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout=seconds + 30)
    return latencies, errors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ta-load-"))
    port = free_port()
    env = {**os.environ, "TASK_AFFINITY_HOME": str(home)}
    log = (home / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "affinity.cli", "serve", "--port", str(port), "--workers", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        key = re.search(r"\bta_[A-Za-z0-9_-]{20,}", (home / "serve.log").read_text()).group(0)
        h = {"Authorization": f"Bearer {key}"}
        job = httpx.post(f"{base}/v1/jobs", json=BUSY_JOB, headers=h).json()["id"]
        for _ in range(300):
            if httpx.get(f"{base}/v1/jobs/{job}", headers=h).json()["status"] == "running":
                break
            time.sleep(0.2)
        latencies, errors = asyncio.run(load(f"{base}/v1/jobs/{job}", h, args.rate, args.seconds))
        state = httpx.get(f"{base}/v1/jobs/{job}", headers=h).json()
        ms = sorted(x * 1000 for x in latencies)
        p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
        print(f"job {job} {state['status']} during the run (stage {state['stage']}, {100 * state['progress']:.0f}%)")
        print(f"requests {len(ms)} at {args.rate:.0f}/s for {args.seconds:.0f} s, errors {errors}")
        print(f"latency ms: p50 {p(0.50):.1f}  p90 {p(0.90):.1f}  p99 {p(0.99):.1f}  max {ms[-1]:.1f}  "
              f"mean {statistics.fmean(ms):.1f}")
        if args.rate >= 200:
            print(f"goal p99 < 50 ms at 200/s: {'met' if p(0.99) < 50 else 'MISSED'} (at {args.rate:.0f}/s)")
        httpx.post(f"{base}/v1/jobs/{job}/cancel", headers=h)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
