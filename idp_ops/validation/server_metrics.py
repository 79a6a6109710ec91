"""The server's own view during a run: its Prometheus ``/metrics``, scraped in the background.

llama-server (``--metrics``, behind the API key) and vLLM (always on) expose queue depth,
running requests, KV-cache usage and preemptions. Scraped every few seconds while a
workload runs and kept per run in DuckDB, they explain a regression (a queue that
built up, a KV cache that filled and preempted) instead of only showing it.

The Prometheus text format is parsed here (prometheus_client is not a dependency):
``name{labels} value [timestamp]`` lines, ``#`` comments skipped; label sets of one
name are summed (vLLM labels every series with its model name). Histogram buckets
are skipped: their ``_sum``/``_count`` carry what a summary needs.

A server without ``/metrics`` (404, or llama-server started without ``--metrics``,
which answers 501) is recorded as "not exposed", never a failure.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import httpx

# What each figure is called by each server, in order of preference (names differ across versions).
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "queue_depth": ("llamacpp:requests_deferred", "vllm:num_requests_waiting"),
    "running": ("llamacpp:requests_processing", "vllm:num_requests_running"),
    "kv_cache_usage": ("llamacpp:kv_cache_usage_ratio", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "preemptions": ("vllm:num_preemptions_total", "vllm:num_preemptions"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits_total"),
    "prefix_cache_queries": (
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_queries",
        "vllm:gpu_prefix_cache_queries_total",
    ),
    "prefix_cache_hit_rate": ("vllm:gpu_prefix_cache_hit_rate",),
    "prompt_tokens_cached": ("llamacpp:prompt_tokens_cached_total",),
    "prompt_tokens": ("llamacpp:prompt_tokens_total", "vllm:prompt_tokens_total"),
}
# Series kept per scrape: the figures above, plus every other llama.cpp series (a dozen).
_KEPT = {name for names in KEY_METRICS.values() for name in names}
_COUNTERS = ("preemptions", "prefix_cache_hits", "prefix_cache_queries", "prompt_tokens_cached", "prompt_tokens")

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+\S+)?\s*$")


def parse_prometheus(text: str) -> dict[str, float]:
    """{metric name: value} of a Prometheus text exposition; label sets of one name summed."""
    values: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue  # a line we do not understand costs one series, not the scrape
        name, _labels, value = match.groups()
        if name.endswith("_bucket"):
            continue
        try:
            number = float(value)  # handles NaN, +Inf, -Inf, exponents
        except ValueError:
            continue
        values[name] = values.get(name, 0.0) + number
    return values


def kept(values: dict[str, float]) -> dict[str, float]:
    """The series worth storing per scrape."""
    return {k: v for k, v in values.items() if k in _KEPT or k.startswith("llamacpp:")}


@dataclass
class MetricSample:
    ts: datetime
    metric: str
    value: float


@dataclass
class ScrapeResult:
    """What a scraper saw; ``status`` is "ok", "not exposed", "unauthorized" or "unreachable"."""

    endpoint: str
    url: str
    status: str = "not scraped"
    detail: str = ""
    scrapes: int = 0
    samples: list[MetricSample] = field(default_factory=list)

    def series(self, metric: str) -> list[float]:
        return [s.value for s in self.samples if s.metric == metric and not math.isnan(s.value)]

    def figure(self, key: str) -> tuple[str | None, list[float]]:
        """The first of KEY_METRICS[key]'s names this server exposed, and its values over the run."""
        for name in KEY_METRICS[key]:
            values = self.series(name)
            if values:
                return name, values
        return None, []

    def summary(self) -> dict[str, Any]:
        """Max and mean of each gauge, the increase of each counter over the run; absent figures omitted."""
        out: dict[str, Any] = {"status": self.status, "scrapes": self.scrapes}
        if self.detail:
            out["detail"] = self.detail
        for key in KEY_METRICS:
            name, values = self.figure(key)
            if name is None:
                continue
            if key in _COUNTERS:
                out[key] = {"metric": name, "increase": round(values[-1] - values[0], 3)}
            else:
                out[key] = {"metric": name, "max": round(max(values), 4), "mean": round(sum(values) / len(values), 4)}
        return out


def scrape_once(client: httpx.Client, url: str, key: str | None) -> tuple[str, dict[str, float], str]:
    """One GET of /metrics: (status, values, detail)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = client.get(f"{url.rstrip('/')}/metrics", headers=headers)
    except httpx.HTTPError as exc:
        return "unreachable", {}, f"{type(exc).__name__}: {exc}"
    if response.status_code in (404, 501):
        # 404: no such route (a proxy, an old server); 501: llama-server without --metrics.
        return "not exposed", {}, f"/metrics answered {response.status_code}"
    if response.status_code in (401, 403):
        return "unauthorized", {}, f"/metrics answered {response.status_code}"
    if response.status_code != 200:
        return "unreachable", {}, f"/metrics answered {response.status_code}"
    return "ok", parse_prometheus(response.text), ""


class MetricsScraper:
    """Scrapes ``/metrics`` every ``interval_s`` in a thread while the ``with`` block runs.

    A thread, not an asyncio task: the workloads run their own event loops (asyncio.run),
    and a scrape must go on while a long prefill blocks nothing but the server. The first
    and last scrapes happen at entry and exit, so counters have a before and an after.
    """

    def __init__(self, endpoint: str, url: str, key: str | None, *, interval_s: float = 1.0, timeout_s: float = 5.0):
        self.result = ScrapeResult(endpoint=endpoint, url=url)
        self.key = key
        self.interval_s = interval_s
        self._client = httpx.Client(timeout=timeout_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _scrape(self) -> bool:
        status, values, detail = scrape_once(self._client, self.result.url, self.key)
        if status != "ok":
            if self.result.status != "ok":  # a failure after good scrapes does not hide them
                self.result.status, self.result.detail = status, detail
            return status == "unreachable"  # keep trying a server that is restarting; stop otherwise
        self.result.status, self.result.detail = "ok", ""
        self.result.scrapes += 1
        now = datetime.now(UTC)
        self.result.samples += [MetricSample(now, name, value) for name, value in sorted(kept(values).items())]
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self._scrape():
                return

    def __enter__(self) -> MetricsScraper:
        if self.interval_s <= 0:
            self.result.status = "not scraped"
            return self
        if self._scrape():
            self._thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
            if self.result.status == "ok":
                self._scrape()  # the "after" of every counter
        self._client.close()


def record_server_metrics(con, run_id: str, night: date | None, phase: str, result: ScrapeResult) -> int:
    """Keep a run's scrapes (one row per series per scrape) and its summary, "not exposed" included;
    a run re-recording a phase replaces its rows."""
    from idp_ops.history import database as history

    for table in ("server_metrics", "server_metric_runs"):
        con.execute(
            f"DELETE FROM {table} WHERE run_id = ? AND endpoint = ? AND phase = ?", [run_id, result.endpoint, phase]
        )
    history.insert_rows(
        con,
        "server_metric_runs",
        [
            {
                "run_id": run_id,
                "night": night,
                "endpoint": result.endpoint,
                "phase": phase,
                "recorded_at": datetime.now(UTC),
                "status": result.status,
                "detail": result.detail or None,
                "scrapes": result.scrapes,
                "summary": json.dumps(result.summary(), sort_keys=True),
            }
        ],
    )
    rows = [
        {
            "run_id": run_id,
            "night": night,
            "endpoint": result.endpoint,
            "phase": phase,
            "ts": s.ts,
            "metric": s.metric,
            "value": None if math.isnan(s.value) or math.isinf(s.value) else s.value,
        }
        for s in result.samples
    ]
    return history.insert_rows(con, "server_metrics", rows)
