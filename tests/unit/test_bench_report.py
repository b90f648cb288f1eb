"""The bench's 100,000-hooks verdict: alternating runs of both cases, compared as sums."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from bench.load import LoadResult
from bench.report import hooks_ratio
from bench.runner import HOOKS_ORDER, Measurement


def measured(case: str | None, rps: float, *, failed: bool = False) -> Measurement:
    load = LoadResult("wrk", 64, 10.0, 0, 0, 0, 0, 0, 0, rps, 10.0, 20.0)
    m = Measurement("hooks" if case else "main", "gateway", "label", load=load, failed=failed)
    if case is not None:
        m.extra["hooks_case"] = case
    return m


def ratio(*measurements: Measurement) -> dict[str, Any] | None:
    return hooks_ratio(SimpleNamespace(measurements=list(measurements)))  # type: ignore[arg-type]


def test_the_order_alternates_so_a_steady_drift_hits_both_cases_alike() -> None:
    positions = {c: [i for i, x in enumerate(HOOKS_ORDER) if x == c] for c in ("few", "many")}
    assert sum(positions["few"]) == sum(positions["many"])


def test_the_change_compares_the_mean_throughput_of_many_hooks_with_few() -> None:
    # ABBA under a machine that slows down from run to run: the drift cancels out.
    result = ratio(
        measured(None, 5000.0),  # the main table's gateway row: only the second comparison
        measured("few", 4000.0),
        measured("many", 3600.0 * 0.95),
        measured("many", 3200.0 * 0.95),
        measured("few", 2800.0),
    )
    assert result is not None
    assert abs(result["change"] - (-0.05)) < 1e-9
    assert result["met"]
    assert result["runs"] == {"few": 2, "many": 2}
    assert abs(result["change_from_reference"] - (3230.0 / 5000.0 - 1.0)) < 1e-9


def test_more_than_ten_percent_slower_is_not_met() -> None:
    result = ratio(measured("few", 4000.0), measured("many", 3500.0))
    assert result is not None
    assert abs(result["change"] - (-0.125)) < 1e-9
    assert not result["met"]
    assert result["change_from_reference"] is None  # no main-table row


def test_a_failed_run_leaves_its_case_mean_not_its_sum() -> None:
    # One "few" run failed: summing would compare two runs with one (+75 %, "met").
    result = ratio(
        measured("few", 4000.0),
        measured("many", 3500.0),
        measured("many", 3500.0),
        measured("few", 10.0, failed=True),
    )
    assert result is not None
    assert abs(result["change"] - (-0.125)) < 1e-9
    assert not result["met"]
    assert result["runs"] == {"few": 1, "many": 2}


def test_no_verdict_without_runs_of_both_cases() -> None:
    assert ratio(measured("few", 4000.0)) is None
    assert ratio() is None
