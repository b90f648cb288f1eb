"""ProgressLog: at most one line per interval, with the running count and elapsed time."""

from __future__ import annotations

import json

import pytest

from gateway.logs import configure_logging
from gateway.progress import ProgressLog


def test_one_line_per_interval(capsys: pytest.CaptureFixture[str]) -> None:
    now = [50.0]
    configure_logging("info", "json")
    capsys.readouterr()
    progress = ProgressLog("prune_progress", 10.0, clock=lambda: now[0])
    progress("pipeline_runs", 5000)  # a short run logs nothing but its summary
    now[0] += 10.0
    progress("pipeline_runs", 10000)
    now[0] += 3.0
    progress("hook_requests", 5000)
    now[0] += 7.5
    progress("hook_requests", 10000)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    assert [(e["event"], e["table"], e["rows"], e["elapsed"]) for e in lines] == [
        ("prune_progress", "pipeline_runs", 10000, 10.0),
        ("prune_progress", "hook_requests", 10000, 20.5),
    ]
