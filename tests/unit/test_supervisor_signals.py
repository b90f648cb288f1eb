"""Which signals the supervisor passes on to its workers, and when (no processes needed: the
workers are stand-ins that record what they are sent); where their metric files go."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from gateway.config import Config, DatabaseConfig
from gateway.supervisor import (
    EMBEDDED_DSN_ENV,
    SIGHUP_AFTER,
    Supervisor,
    _Slot,
    prepare_metrics_dir,
    worker_environment,
)


class RecordingWorker:
    """What the supervisor uses of an asyncio subprocess."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None
        self.received: list[signal.Signals] = []

    def send_signal(self, sig: signal.Signals) -> None:
        self.received.append(sig)


def supervisor_with(*ages: float) -> tuple[Supervisor, list[RecordingWorker]]:
    """A supervisor whose slots hold workers started ``ages`` seconds ago."""
    supervisor = Supervisor(Config(), "postgresql://unused")
    supervisor._slots = []
    workers = []
    for index, age in enumerate(ages):
        worker = RecordingWorker(1000 + index)
        slot = _Slot(index, process=worker, started_at=time.monotonic() - age)  # type: ignore[arg-type]
        supervisor._slots.append(slot)
        workers.append(worker)
    return supervisor, workers


async def test_a_sighup_reaches_a_running_worker_at_once_and_a_young_one_when_it_is_due() -> None:
    supervisor, (old, young) = supervisor_with(SIGHUP_AFTER + 5, 0.0)
    supervisor._forward(signal.SIGHUP)
    assert old.received == [signal.SIGHUP]
    assert young.received == []  # still starting Python: it could not survive one yet
    await asyncio.sleep(SIGHUP_AFTER + 0.2)
    assert young.received == [signal.SIGHUP]


async def test_no_sighup_reaches_a_stopping_worker_even_one_held_for_a_young_worker() -> None:
    supervisor, (old, young) = supervisor_with(SIGHUP_AFTER + 5, 0.0)
    supervisor._forward(signal.SIGHUP)  # held for the young one
    supervisor._request_stop(signal.SIGTERM)  # the gateway stops before it is due
    supervisor._forward(signal.SIGHUP)  # and an operator's SIGHUP during the stop
    await asyncio.sleep(SIGHUP_AFTER + 0.2)
    assert old.received == [signal.SIGHUP, signal.SIGTERM]
    assert young.received == [signal.SIGTERM]  # its loop may be gone: a SIGHUP would kill it


async def test_sigterm_is_never_held() -> None:
    supervisor, (young,) = supervisor_with(0.0)
    supervisor._request_stop(signal.SIGTERM)
    assert young.received == [signal.SIGTERM]


def test_the_metrics_directory_falls_back_to_a_private_temporary_one(tmp_path: Path) -> None:
    # An external DSN and a data_dir whose parent cannot hold a directory (here a regular file,
    # which stops root too): workers still get a metrics directory instead of a traceback.
    blocker = tmp_path / "read-only"
    blocker.write_text("")
    config = Config(
        database=DatabaseConfig(dsn="postgresql://db/app", data_dir=str(blocker / "pgdata"))
    )
    path = prepare_metrics_dir(config)
    try:
        assert path.is_dir() and path.name.startswith("hookgate-metrics-")
        assert path.stat().st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(path)
    usual = Config(database=DatabaseConfig(data_dir=str(tmp_path / "var" / "pgdata")))
    path = prepare_metrics_dir(usual)
    assert path == tmp_path / "var" / "metrics" / str(os.getpid()) and path.is_dir()


def test_workers_get_the_dsn_only_of_an_embedded_server(monkeypatch: pytest.MonkeyPatch) -> None:
    # Never as an override: forcing a DSN into GATEWAY_DATABASE_DSN would hide an edit of the
    # file from SIGHUP's "needs a restart" report (and report it as shadowed instead).
    monkeypatch.delenv("GATEWAY_DATABASE_DSN", raising=False)
    monkeypatch.setenv("GATEWAY_ADMIN_PASSWORD", "bootstrap only")
    embedded = worker_environment("postgresql://postgres@/postgres?host=/run/pg", 1)
    assert embedded[EMBEDDED_DSN_ENV] == "postgresql://postgres@/postgres?host=/run/pg"
    assert "GATEWAY_DATABASE_DSN" not in embedded
    configured = worker_environment(None, 1)
    assert EMBEDDED_DSN_ENV not in configured and "GATEWAY_DATABASE_DSN" not in configured
    assert configured["HOOKGATE_WORKER_INDEX"] == "1"
    assert "GATEWAY_ADMIN_PASSWORD" not in configured
