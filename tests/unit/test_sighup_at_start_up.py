"""A SIGHUP while the process starts is remembered (not fatal) and applied once the reload
handler is installed."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest

from gateway import sighup
from gateway.reload import install_sighup


@pytest.fixture
def restored_sighup() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGHUP)
    sighup.take_pending()
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)
        sighup.take_pending()


class CountingReloader:
    def __init__(self) -> None:
        self.reloads = 0

    def reload_and_log(self) -> None:
        self.reloads += 1


@pytest.mark.usefixtures("restored_sighup")
def test_a_remembered_sighup_sets_the_flag_instead_of_ending_the_process() -> None:
    sighup.remember()
    assert not sighup.take_pending()
    os.kill(os.getpid(), signal.SIGHUP)  # the default action would end this test run
    assert sighup.take_pending()
    assert not sighup.take_pending()  # taken once


@pytest.mark.usefixtures("restored_sighup")
async def test_the_reload_handler_applies_a_remembered_sighup_once() -> None:
    loop = asyncio.get_running_loop()
    reloader = CountingReloader()
    sighup.note()  # as the event loop's early handler does (gateway.supervisor.serve_worker)
    install_sighup(reloader)  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0)
        assert reloader.reloads == 1
        assert not sighup.take_pending()
        os.kill(os.getpid(), signal.SIGHUP)  # from now on each SIGHUP reloads
        for _ in range(100):
            if reloader.reloads == 2:
                break
            await asyncio.sleep(0.01)
        assert reloader.reloads == 2
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


@pytest.mark.usefixtures("restored_sighup")
async def test_without_a_sighup_while_starting_nothing_is_reloaded() -> None:
    loop = asyncio.get_running_loop()
    reloader = CountingReloader()
    install_sighup(reloader)  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.01)
        assert reloader.reloads == 0
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
