"""How long a request body may take (``[server] body_timeout`` per MiB), and the ingest read's
fast path: a body already complete when the handler starts takes no timer at all."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.streams import StreamReader

from gateway.http import body_deadline
from gateway.ingest import trigger


@pytest.mark.parametrize(
    ("length", "limit", "seconds"),
    [
        (100, 1_048_576, 30.0),  # a small body: the base time
        (None, 1_048_576, 30.0),  # chunked: the largest allowed
        (1_048_577, 16 * 1_048_576, 60.0),  # just over 1 MiB: twice
        (None, 16 * 1_048_576, 480.0),  # a 16 MiB status report: 30 s per MiB
        (0, 1_048_576, 30.0),
    ],
)
def test_body_deadline_grows_with_the_declared_size(
    length: int | None, limit: int, seconds: float
) -> None:
    assert body_deadline(30.0, length, limit) == seconds


class _RecordingAsyncio:
    """``asyncio`` for trigger.py, counting the timers it starts."""

    def __init__(self) -> None:
        self.timers: list[float] = []

    def timeout(self, delay: float) -> Any:
        self.timers.append(delay)
        return asyncio.timeout(delay)

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


def _request(body: bytes, *, complete: bool) -> web.Request:
    stream = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
    stream.feed_data(body)
    if complete:
        stream.feed_eof()
    # get: a request's own storage, empty (no Expect: 100-continue waiting, see trigger._expect)
    return cast(web.Request, SimpleNamespace(content=stream, get={}.get))


async def test_a_complete_body_is_read_without_a_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    recording = _RecordingAsyncio()
    monkeypatch.setattr(trigger, "asyncio", recording)
    body = b'{"action": "opened"}'
    assert await trigger._read_body(_request(body, complete=True), len(body), 1024, 5.0) == body
    assert recording.timers == []


async def test_a_body_still_arriving_is_read_under_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recording = _RecordingAsyncio()
    monkeypatch.setattr(trigger, "asyncio", recording)
    with pytest.raises(TimeoutError):  # 10 of the 100 bytes ever arrive
        await trigger._read_body(_request(b'{"action":', complete=False), 100, 1024, 0.05)
    assert recording.timers == [0.05]
