"""Trends from history: nightly benchmark metrics with regression detection, thermal days.

A regression is judged against the *trailing* median of the runs before the one
judged (the default window is 7 runs), not the mean: one bad night must not move
the baseline it is compared with, and a median ignores the odd outlier. "Worse"
depends on the metric: lower throughput, or higher latency. Efficiency is each
measured decode speed divided by its physics ceiling; above 1 means the ceiling
is wrong, not that the server is fast.

A series is one endpoint *and the model it served* (bench_runs.served_model, set since
model switching): a switch starts a new series instead of reading as a regression, and
the newest status of an endpoint is judged on its current model's nights only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from idp_ops.history import database as history

NOT_ENOUGH_BENCH = "not enough data: no benchmark runs in history yet (the nightly validation writes bench_runs)"
NOT_ENOUGH_THERMAL = "not enough data: no hourly thermal rollups in history yet (the thermal_log asset writes them)"


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool
    has_ceiling: bool = False  # single-stream decode speed: compared with ceiling_tok_s


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("decode_tok_s", "tok/s", True, has_ceiling=True),
        Metric("server_decode_tok_s", "tok/s", True, has_ceiling=True),
        Metric("aggregate_tok_s_at_max", "tok/s", True),
        Metric("success_rate_at_max", "", True),
        Metric("ttft_p50_ms", "ms", False),
        Metric("ttft_p95_ms", "ms", False),
        Metric("itl_p50_ms", "ms", False),
        Metric("tpot_p50_ms", "ms", False),
        Metric("e2e_p50_ms", "ms", False),
    )
}


@dataclass(frozen=True)
class TrendSettings:
    window: int = 7  # runs in the trailing median
    threshold: float = 0.10  # relative change that counts as a regression
    min_history: int = 3  # earlier runs needed before a run is judged


@dataclass(frozen=True)
class MetricStatus:
    """The newest run of one endpoint's metric, judged against the runs before it."""

    endpoint: str
    metric: str
    night: str
    value: float
    baseline: float | None  # trailing median of the earlier runs; None: too few
    change_pct: float | None  # signed; + is higher
    efficiency: float | None  # value / ceiling, decode metrics only
    ceiling_tok_s: float | None
    status: str  # "regression" | "ok" | "not enough data"
    history_runs: int
    served_model: str | None = None  # the model this series measured (None: not recorded)

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        metric = METRICS.get(self.metric)
        unit = f" {metric.unit}" if metric and metric.unit else ""
        head = f"{self.endpoint} {self.metric} = {self.value:.4g}{unit} on {self.night}"
        if self.baseline is None:
            return f"{head} ({self.history_runs} earlier run(s): not enough data to judge)"
        verdict = "regression" if self.status == "regression" else "within tolerance"
        change = f"{self.change_pct:+.1f} %" if self.change_pct is not None else "changed"
        return f"{head}, {change} against the trailing median {self.baseline:.4g}{unit}: {verdict}"


@dataclass
class TrendReport:
    runs: int
    endpoints: list[str]
    points: (
        pd.DataFrame
    )  # long form: endpoint, metric, night, value, rolling_median, baseline, change_pct, regression, efficiency
    latest: list[MetricStatus] = field(default_factory=list)
    settings: TrendSettings = TrendSettings()
    message: str = ""

    @property
    def regressions(self) -> list[MetricStatus]:
        return [s for s in self.latest if s.status == "regression"]

    @property
    def enough_data(self) -> bool:
        return any(s.baseline is not None for s in self.latest)


def _table_exists(con, name: str) -> bool:
    return bool(
        con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()[0]
    )


def load_bench_runs(history_file: Path) -> pd.DataFrame:
    """All nightly benchmark rows, oldest first; an empty frame when there is no history.

    ``served_model`` is what the server said it served, else the configured model (rows before
    the column existed, or a history file opened read-only before its migration).
    """
    columns = ["night", "endpoint", "started_at", "ceiling_tok_s", "ok", *METRICS]
    if not Path(history_file).exists():
        return pd.DataFrame(columns=[*columns, "served_model"])
    with history.connect(history_file, read_only=True) as con:
        if not _table_exists(con, "bench_runs"):
            return pd.DataFrame(columns=[*columns, "served_model"])
        present = {
            name
            for (name,) in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'bench_runs'"
            ).fetchall()
        }
        served = "coalesce(served_model, model)" if "served_model" in present else "model"
        frame = con.execute(
            f"SELECT {', '.join(columns)}, {served} AS served_model FROM bench_runs ORDER BY endpoint, night"
        ).df()
    frame["night"] = pd.to_datetime(frame["night"])
    return frame


def analyse_runs(
    runs: pd.DataFrame,
    *,
    settings: TrendSettings = TrendSettings(),
    current_ceilings: dict[str, float] | None = None,
) -> TrendReport:
    """Per endpoint and metric: time series, rolling median, efficiency, regression of the newest run.

    ``current_ceilings`` (endpoint -> tok/s) stands in where a run stored no
    ceiling_tok_s, so older rows still get an efficiency.
    """
    current_ceilings = current_ceilings or {}
    if runs.empty:
        return TrendReport(0, [], _empty_points(), settings=settings, message=NOT_ENOUGH_BENCH)
    # One long frame (endpoint, metric, night, value) computed group-wise in one pass: a year
    # of nights for every endpoint stays well under the 0.1 s a report query may take.
    names = [m for m in METRICS if m in runs.columns]
    order = {name: i for i, name in enumerate(names)}
    wide = runs[["night", "endpoint", "ceiling_tok_s", *names]].copy()
    wide[names] = wide[names].astype(float)
    # One series per endpoint and served model ("" where history never said which model).
    served = runs["served_model"] if "served_model" in runs.columns else pd.Series(None, index=runs.index)
    wide["served_model"] = served.astype(object).where(served.notna(), "").astype(str)
    current_model = wide.sort_values("night", kind="stable").groupby("endpoint")["served_model"].last()
    points = wide.melt(id_vars=["night", "endpoint", "served_model", "ceiling_tok_s"], value_vars=names,
                       var_name="metric", value_name="value").dropna(subset=["value"])  # fmt: skip
    if points.empty:
        return TrendReport(len(runs), sorted(runs["endpoint"].unique()), _empty_points(), settings=settings,
                           message=NOT_ENOUGH_BENCH)  # fmt: skip
    points["rank"] = points["metric"].map(order)
    points = points.sort_values(["endpoint", "served_model", "rank", "night"], kind="stable").reset_index(drop=True)
    keys = [points["endpoint"], points["served_model"], points["metric"]]
    values = points["value"]
    points["rolling_median"] = _rolling_median(values.groupby(keys, sort=False), settings.window, 1)
    # Baseline of run i = median of runs i-window .. i-1: the run judged never votes for itself.
    previous = values.groupby(keys, sort=False).shift(1)
    points["baseline"] = _rolling_median(previous.groupby(keys, sort=False), settings.window, settings.min_history)
    baseline = points["baseline"]
    points["change_pct"] = (values / baseline.where(baseline != 0) - 1) * 100
    higher = points["metric"].map({name: METRICS[name].higher_is_better for name in names})
    worse = (higher & (values < baseline * (1 - settings.threshold))) | (
        ~higher & (values > baseline * (1 + settings.threshold))
    )
    points["regression"] = worse.fillna(False).astype(bool)
    has_ceiling = points["metric"].map({name: METRICS[name].has_ceiling for name in names}).astype(bool)
    # Today's ceiling only stands in for the model served today, never for an earlier model's nights.
    is_current = points["served_model"] == points["endpoint"].map(current_model)
    ceiling = points["ceiling_tok_s"].astype(float).fillna(points["endpoint"].map(current_ceilings).where(is_current))
    points["ceiling_tok_s"] = ceiling.where(has_ceiling)
    points["efficiency"] = (values / points["ceiling_tok_s"]).where(has_ceiling)
    points = points[_POINT_COLUMNS]

    latest = []
    series = ["endpoint", "served_model", "metric"]
    counts = points.groupby(series, sort=False).size()
    for last in points.groupby(series, sort=False).tail(1).itertuples(index=False):
        if last.served_model != current_model.get(last.endpoint):
            continue  # an earlier model's series: kept in points, not judged as the endpoint's status
        judged = not pd.isna(last.baseline)
        latest.append(
            MetricStatus(
                endpoint=last.endpoint,
                metric=last.metric,
                night=pd.Timestamp(last.night).date().isoformat(),
                value=float(last.value),
                baseline=float(last.baseline) if judged else None,
                change_pct=_num(last.change_pct) if judged else None,
                efficiency=_num(last.efficiency),
                ceiling_tok_s=_num(last.ceiling_tok_s),
                status=("regression" if last.regression else "ok") if judged else "not enough data",
                history_runs=int(counts[(last.endpoint, last.served_model, last.metric)]) - 1,
                served_model=last.served_model or None,
            )
        )
    report = TrendReport(
        runs=len(runs), endpoints=sorted(runs["endpoint"].unique()), points=points, latest=latest, settings=settings
    )
    if not report.enough_data:
        report.message = (
            f"not enough data: {len(runs)} benchmark run(s); a run is judged once {settings.min_history} earlier runs "
            "of its endpoint exist"
        )
    return report


def _num(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


_POINT_COLUMNS = [
    "endpoint",
    "served_model",
    "metric",
    "night",
    "value",
    "rolling_median",
    "baseline",
    "change_pct",
    "regression",
    "efficiency",
    "ceiling_tok_s",
]


def _rolling_median(grouped, window: int, min_periods: int) -> pd.Series:
    """Trailing median within each group, aligned back to the frame's rows."""
    result = grouped.rolling(window, min_periods=min_periods).median()
    return result.reset_index(level=list(range(result.index.nlevels - 1)), drop=True)


def _empty_points() -> pd.DataFrame:
    return pd.DataFrame(columns=_POINT_COLUMNS)


# -- thermal -----------------------------------------------------------------

# Throttle seconds are stored per hour as a JSON object {reason: seconds}; DuckDB's
# built-in JSON reads it as a map so the rollup stays one query.
_THROTTLE_MAP = "json_transform(coalesce(throttle_seconds, '{}'), '\"MAP(VARCHAR, DOUBLE)\"')"


def thermal_daily(history_file: Path, *, tz: str = "UTC", con=None) -> pd.DataFrame:
    """One row per day and device: hours sampled, peak, time above the lines, throttle time, kWh.

    Days are calendar days in ``tz`` (the box's timezone): energy per day is what
    a bill counts.
    """
    query = f"""
        SELECT CAST(timezone(?, hour) AS DATE) AS day, device,
               count(*) AS hours, sum(samples) AS samples, max(max_c) AS max_c,
               sum(seconds_above_warn) AS seconds_above_warn,
               sum(seconds_above_contain) AS seconds_above_contain,
               sum(coalesce(list_sum(map_values({_THROTTLE_MAP})), 0)) AS throttle_seconds,
               sum(energy_kwh) AS energy_kwh
        FROM thermal_hourly GROUP BY 1, 2 ORDER BY 1, 2
    """
    columns = [
        "day",
        "device",
        "hours",
        "samples",
        "max_c",
        "seconds_above_warn",
        "seconds_above_contain",
        "throttle_seconds",
        "energy_kwh",
    ]
    return _thermal_query(history_file, query, [tz], columns, con)


def throttle_by_reason(history_file: Path, *, con=None) -> pd.DataFrame:
    """Total throttle seconds per device and reason over the whole history."""
    query = f"""
        SELECT device, entry.key AS reason, sum(entry.value) AS seconds
        FROM (SELECT device, unnest(map_entries({_THROTTLE_MAP})) AS entry FROM thermal_hourly)
        GROUP BY 1, 2 ORDER BY 1, 3 DESC
    """
    return _thermal_query(history_file, query, [], ["device", "reason", "seconds"], con)


def _thermal_query(history_file: Path, query: str, params: list, columns: list[str], con) -> pd.DataFrame:
    if con is not None:
        return con.execute(query, params).df()
    if not Path(history_file).exists():
        return pd.DataFrame(columns=columns)
    with history.connect(history_file, read_only=True) as con:
        if not _table_exists(con, "thermal_hourly"):
            return pd.DataFrame(columns=columns)
        return con.execute(query, params).df()


def latest_per_endpoint(runs: pd.DataFrame) -> dict[str, dict]:
    """The newest night's row of each endpoint (metric values; NaN -> None)."""
    result: dict[str, dict] = {}
    if runs.empty:
        return result
    for endpoint, group in runs.sort_values("night").groupby("endpoint", sort=True):
        row = group.iloc[-1].to_dict()
        result[endpoint] = {k: (None if _is_missing(v) else v) for k, v in row.items()}
    return result


def _is_missing(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and other non-scalars
        return False
