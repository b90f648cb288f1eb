"""The gateway's event-loop lag during one measured run, from its ``/metrics``.

``hookgate_event_loop_lag_seconds`` (gateway/loop_lag.py) samples every 0.1 s how late each
worker's event loop woke a timer that was due. Scraped before and after a run, the histogram's
difference tells whether a client-side p99 above the server-side one came from the gateway's
own loop being held (a long lag) or from outside it (CPU taken by other processes, the network).
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

METRIC = "hookgate_event_loop_lag_seconds"
REPORTED_OVER_MS = (10, 50, 100)


@dataclass(frozen=True)
class LagHistogram:
    """Cumulative bucket counts ``{upper bound in seconds: samples at or below it}``."""

    buckets: dict[float, float]

    @property
    def samples(self) -> int:
        return int(self.buckets.get(math.inf, 0.0))

    def minus(self, earlier: LagHistogram) -> LagHistogram:
        return LagHistogram(
            {le: count - earlier.buckets.get(le, 0.0) for le, count in self.buckets.items()}
        )

    def over(self, seconds: float) -> int:
        """Samples above ``seconds`` (which must be one of the bucket bounds)."""
        return self.samples - int(self.buckets.get(seconds, 0.0))

    def worst_bound(self) -> float | None:
        """The smallest bucket bound every sample is at or below (inf: above the last bound);
        None without samples."""
        if not self.samples:
            return None
        return min(le for le, count in self.buckets.items() if count >= self.samples)

    def summary(self) -> dict[str, float | int | None]:
        """What the report prints and the JSON results keep."""
        worst = self.worst_bound()
        return {
            "samples": self.samples,
            **{f"over_{ms}ms": self.over(ms / 1000) for ms in REPORTED_OVER_MS},
            "worst_le_ms": None if worst is None or math.isinf(worst) else round(worst * 1000, 1),
        }


def parse(text: str) -> LagHistogram:
    """The lag histogram in an exposition text (empty when the gateway has none)."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != METRIC:
            continue
        for sample in family.samples:
            if sample.name == METRIC + "_bucket":
                buckets[float(sample.labels["le"])] = sample.value
    return LagHistogram(buckets)


def scrape(base_url: str) -> LagHistogram:
    """The gateway's lag histogram now (summed over its workers)."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        return parse(response.read().decode())


def describe(summary: dict[str, float | int | None]) -> str:
    """One line for the report."""
    if not summary["samples"]:
        return "no samples"
    worst = summary["worst_le_ms"]
    over = ", ".join(f"{summary[f'over_{ms}ms']} over {ms} ms" for ms in REPORTED_OVER_MS)
    bound = "above 5 s" if worst is None else f"at most {worst:g} ms"
    return f"{summary['samples']} samples, {over}; the longest {bound}"
