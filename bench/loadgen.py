"""Built-in load generator (used when wrk is not installed): ``python -m bench.loadgen SPEC``.

Same semantics as the wrk script in bench/load.py: ``connections`` keep-alive connections, each
sending one request at a time with a unique delivery id; no new request after ``duration``;
in-flight ones are awaited. Prints one JSON line with the counts and exact p50/p99 latency.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import aiohttp


class _Counters:
    def __init__(self) -> None:
        self.sent = self.ok = self.non2xx = self.errors = self.in_window = 0
        self.statuses: dict[str, int] = {}
        self.latencies = array("d")


async def _connection(
    number: int,
    session: aiohttp.ClientSession,
    spec: dict[str, Any],
    body: bytes,
    deadline: float,
    counters: _Counters,
) -> None:
    urls = [spec["base_url"] + p for p in spec["paths"]]
    prefix = f"{spec['tag']}-{number}-"
    sent = 0
    while time.monotonic() < deadline:
        sent += 1
        counters.sent += 1
        index = (number + sent) % len(urls)
        headers = {**spec["headers"][index], spec["delivery_header"]: prefix + str(sent)}
        started = time.monotonic()
        try:
            async with session.post(urls[index], data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            counters.errors += 1
            continue
        finished = time.monotonic()
        counters.latencies.append(finished - started)
        counters.statuses[str(status)] = counters.statuses.get(str(status), 0) + 1
        if 200 <= status < 300:
            counters.ok += 1
        else:
            counters.non2xx += 1
        if finished <= deadline:
            counters.in_window += 1


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(fraction * len(values)))]


async def run(spec: dict[str, Any], body: bytes) -> dict[str, Any]:
    """Run the load described by ``spec`` (sending ``body``) and return the counters."""
    counters = _Counters()
    connector = aiohttp.TCPConnector(limit=spec["connections"], force_close=False)
    timeout = aiohttp.ClientTimeout(total=spec["drain_timeout"])
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.monotonic() + spec["duration"]
        tasks = [
            asyncio.create_task(_connection(i + 1, session, spec, body, deadline, counters))
            for i in range(spec["connections"])
        ]
        await asyncio.wait(tasks, timeout=spec["duration"] + spec["drain_timeout"])
        for task in tasks:
            task.cancel()
    latencies = sorted(counters.latencies)
    return {
        "sent": counters.sent,
        "responses": counters.ok + counters.non2xx,
        "ok": counters.ok,
        "non2xx": counters.non2xx,
        "socket_errors": counters.errors,
        "in_window": counters.in_window,
        "rps": counters.in_window / spec["duration"],
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "status_counts": counters.statuses,
    }


def main() -> None:
    """Entry point: read the spec file named on the command line, print one JSON line."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    body = Path(spec["body_file"]).read_bytes()
    try:
        import uvloop
    except ImportError:
        print(json.dumps(asyncio.run(run(spec, body))))
        return
    print(json.dumps(uvloop.run(run(spec, body))))


if __name__ == "__main__":
    main()
