"""Report assets: performance and thermal trends from history, and the ROI the box really earns.

Both render PNG plots into their markdown metadata (the UI shows them inline) and
write their section of ``<data_dir>/reports/report.html``, one self-contained page.
An empty history is a normal state on a new box: it gives "not enough data", never
a failed run.
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSelection,
    Config,
    DefaultScheduleStatus,
    Definitions,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
    define_asset_job,
    in_process_executor,
    load_asset_checks_from_current_module,
    load_assets_from_current_module,
)

from idp_ops.models.gguf_meta import load_inventory
from idp_ops.physics.bandwidth_store import latest_measured_bandwidth
from idp_ops.physics.report import ceiling_for, model_facts
from idp_ops.reports.html import (
    html_image,
    html_paragraphs,
    html_table,
    markdown_image,
    plot_metric_trends,
    plot_roi,
    plot_thermal_daily,
    write_section,
)
from idp_ops.reports.roi import report_from_history
from idp_ops.reports.trends import (
    METRICS,
    NOT_ENOUGH_THERMAL,
    TrendSettings,
    analyse_runs,
    load_bench_runs,
    thermal_daily,
    throttle_by_reason,
)
from idp_ops.resources import SettingsResource
from idp_ops.runs import HEAVY_TAG, SCHEDULE_TIMEZONE
from idp_ops.tables import markdown_table

GROUP = "reports"
PLOTTED_METRICS = ["decode_tok_s", "aggregate_tok_s_at_max", "ttft_p50_ms", "ttft_p95_ms"]
THERMAL_TABLE_DAYS = 14


class PerformanceTrendConfig(Config):
    window_runs: int = 7
    regression_pct: float = 10.0
    min_history_runs: int = 3


def _round(value, digits: int = 4):
    if value is None:
        return ""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if value == value else ""  # NaN -> blank
    return value


def _current_ceilings(cfg) -> dict[str, float]:
    """Today's ceiling per endpoint, for runs that stored none (best effort: a report must not fail on it)."""
    try:
        measured = latest_measured_bandwidth(cfg.history_file)
        models = {m.name: m for m in model_facts(load_inventory(cfg.history_file))}
        result = {}
        for endpoint in cfg.endpoints or []:
            row = ceiling_for(endpoint, models_dir=cfg.models_dir, hardware=cfg.hardware, measured=measured,
                              model=models.get(endpoint.model_file) if endpoint.model_file else None)  # fmt: skip
            if row.tok_s:
                result[endpoint.name] = row.tok_s
        return result
    except Exception:
        return {}


@asset(
    group_name=GROUP,
    description="Per endpoint and metric, the nightly benchmark series with a rolling median, efficiency "
    "(measured / ceiling) and regression detection against the trailing median; thermal days (time above the "
    "lines, throttle time, energy per day). Plots inline; section of report.html.",
    check_specs=[
        AssetCheckSpec(
            "no_performance_regression",
            asset="performance_trend",
            description="The newest night of every endpoint and metric is within the threshold of its trailing "
            "median (lower throughput or higher latency is worse).",
        )
    ],
)
def performance_trend(
    context: AssetExecutionContext, config: PerformanceTrendConfig, settings: SettingsResource
) -> MaterializeResult:
    cfg = settings.load()
    trend_settings = TrendSettings(
        window=config.window_runs, threshold=config.regression_pct / 100, min_history=config.min_history_runs
    )
    runs = load_bench_runs(cfg.history_file)
    report = analyse_runs(runs, settings=trend_settings, current_ceilings=_current_ceilings(cfg) if len(runs) else {})
    status_rows = [
        {
            "endpoint": s.endpoint,
            "metric": s.metric,
            "night": s.night,
            "value": _round(s.value),
            "trailing_median": _round(s.baseline),
            "change_pct": f"{s.change_pct:+.1f}" if s.change_pct is not None else "",
            "ceiling_tok_s": _round(s.ceiling_tok_s),
            "efficiency": f"{s.efficiency:.0%}" if s.efficiency is not None else "",
            "status": s.status,
        }
        for s in report.latest
    ]
    status_columns = [
        "endpoint",
        "metric",
        "night",
        "value",
        "trailing_median",
        "change_pct",
        "ceiling_tok_s",
        "efficiency",
        "status",
    ]
    trend_png = plot_metric_trends(report.points, PLOTTED_METRICS)

    daily = thermal_daily(cfg.history_file, tz=cfg.timezone)
    reasons = throttle_by_reason(cfg.history_file)
    thermal_png = plot_thermal_daily(daily)
    recent = daily.tail(THERMAL_TABLE_DAYS * max(daily["device"].nunique(), 1)) if not daily.empty else daily
    thermal_rows = [
        {
            "day": str(r["day"])[:10],
            "device": r["device"],
            "hours": int(r["hours"]),
            "max_c": _round(r["max_c"], 3),
            "h_above_warn": _round((r["seconds_above_warn"] or 0) / 3600, 3),
            "h_above_contain": _round((r["seconds_above_contain"] or 0) / 3600, 3),
            "h_throttled": _round((r["throttle_seconds"] or 0) / 3600, 3),
            "energy_kwh": _round(r["energy_kwh"], 4),
        }
        for _, r in recent.iterrows()
    ]
    thermal_columns = [
        "day",
        "device",
        "hours",
        "max_c",
        "h_above_warn",
        "h_above_contain",
        "h_throttled",
        "energy_kwh",
    ]
    reason_rows = [
        {"device": r["device"], "reason": r["reason"], "hours": _round(r["seconds"] / 3600, 3)}
        for _, r in reasons.iterrows()
    ]

    # Markdown (UI) and HTML (report page) carry the same content.
    if report.runs:
        bench_md = markdown_table(status_rows, status_columns)
        if report.message:
            bench_md = f"**{report.message}**\n\n" + bench_md
        if trend_png:
            bench_md += "\n\n" + markdown_image(trend_png, "nightly benchmark trend")
    else:
        bench_md = f"**{report.message}**"
    if daily.empty:
        thermal_md = f"**{NOT_ENOUGH_THERMAL}**"
    else:
        thermal_md = markdown_table(thermal_rows, thermal_columns)
        if reason_rows:
            thermal_md += "\n\nThrottle time by reason (whole history):\n\n" + markdown_table(
                reason_rows, ["device", "reason", "hours"]
            )
        if thermal_png:
            thermal_md += "\n\n" + markdown_image(thermal_png, "thermal days")

    body = html_paragraphs([report.message] if report.message else [])
    if report.runs:
        body += html_table(status_rows, status_columns) + (
            html_image(trend_png, "nightly benchmark trend") if trend_png else ""
        )
    body += "<h3>Thermal</h3>" + (
        html_paragraphs([NOT_ENOUGH_THERMAL]) if daily.empty
        else html_table(thermal_rows, thermal_columns)
        + (html_table(reason_rows, ["device", "reason", "hours"]) if reason_rows else "")
        + (html_image(thermal_png, "thermal days") if thermal_png else "")
    )  # fmt: skip
    page = write_section(cfg.data_dir / "reports", "performance", "Performance and thermal trends", body)

    regressions = report.regressions
    if regressions:
        description = "; ".join(s.describe() for s in regressions)
    elif not report.enough_data:
        description = report.message
    else:
        judged = sum(1 for s in report.latest if s.baseline is not None)
        description = (
            f"no regression: {judged} endpoint metrics within {config.regression_pct:g} % of their trailing median"
        )
    for s in regressions:
        context.log.warning(f"regression: {s.describe()}")
    energy_total = float(daily["energy_kwh"].sum()) if not daily.empty else 0.0
    return MaterializeResult(
        metadata={
            "bench_runs": report.runs,
            "endpoints": report.endpoints,
            "regressions": len(regressions),
            "status": "not enough data" if not report.enough_data else ("regression" if regressions else "ok"),
            "trend": MetadataValue.md(bench_md),
            "thermal_days": int(daily["day"].nunique()) if not daily.empty else 0,
            "energy_kwh_total": round(energy_total, 4),
            "thermal": MetadataValue.md(thermal_md),
            "report": MetadataValue.path(str(page)),
        },
        check_results=[
            AssetCheckResult(
                check_name="no_performance_regression",
                passed=not regressions,
                severity=AssetCheckSeverity.WARN,
                description=description,
                metadata={
                    "regressions": MetadataValue.json(
                        [
                            {
                                "endpoint": s.endpoint,
                                "metric": s.metric,
                                "night": s.night,
                                "value": s.value,
                                "trailing_median": s.baseline,
                                "change_pct": round(s.change_pct, 2) if s.change_pct is not None else None,
                                "worse_when": "lower" if METRICS[s.metric].higher_is_better else "higher",
                            }  # fmt: skip
                            for s in regressions
                        ]
                    ),
                    "threshold_pct": config.regression_pct,
                    "window_runs": config.window_runs,
                },
            )
        ],
    )


def _usd(value: float | None) -> str:
    return "" if value is None else f"${value:,.2f}"


@asset(
    group_name=GROUP,
    description="Hardware amortisation, electricity (measured energy from thermal_hourly where there is enough, else "
    "the configured duty cycle), cloud comparison and payback per provider, and cost per million output tokens from "
    "measured throughput at the assumed utilisation. Plot inline; section of report.html.",
)
def roi_report(context: AssetExecutionContext, settings: SettingsResource) -> MaterializeResult:
    cfg = settings.load()
    roi = cfg.roi
    report = report_from_history(roi, cfg.history_file)
    e = report.electricity
    summary_rows = [
        {"item": "hardware", "monthly": _usd(report.hardware_monthly_usd),
         "basis": f"${report.hardware_total_usd:,.0f} over {report.amortisation_years:g} years"},
        *(
            [{"item": "electricity (peak)", "monthly": _usd(e.peak_usd), "basis": "duty cycle"},
             {"item": "electricity (idle)", "monthly": _usd(e.idle_usd), "basis": "duty cycle"}]
            if e.peak_usd is not None else []
        ),
        {"item": f"electricity ({e.source})", "monthly": _usd(e.monthly_usd), "basis": e.detail},
        {"item": "total", "monthly": _usd(report.total_monthly_usd),
         "basis": f"{report.amortisation_years:g}-year cost {_usd(report.tco_usd)}"},
    ]  # fmt: skip
    cloud_rows = [
        {
            "provider": c.provider,
            "monthly": _usd(c.monthly_usd),
            "basis": f"${c.usd_per_hour:g}/h x {c.hours_per_month:g} h",
            "savings_monthly": _usd(c.savings_monthly_usd),
            "payback_months": f"{c.payback_months:.1f}" if c.payback_months is not None else "never",
            f"{report.amortisation_years:g}y_cost": _usd(c.tco_usd),
            f"{report.amortisation_years:g}y_net_savings": _usd(c.net_savings_usd),
        }
        for c in report.cloud
    ]
    years = f"{report.amortisation_years:g}y"
    cloud_columns = [
        "provider",
        "monthly",
        "basis",
        "savings_monthly",
        "payback_months",
        f"{years}_cost",
        f"{years}_net_savings",
    ]
    token_rows = [
        {"endpoint": t.endpoint, "throughput": t.metric, "tok_s": _round(t.tok_s), "median_of_runs": t.runs,
         "m_tokens_per_month": _round(t.tokens_per_month / 1e6), "usd_per_million_tokens": f"${t.usd_per_million:,.3f}"}
        for t in report.token_costs
    ]  # fmt: skip
    token_columns = [
        "endpoint",
        "throughput",
        "tok_s",
        "median_of_runs",
        "m_tokens_per_month",
        "usd_per_million_tokens",
    ]
    png = plot_roi(report)
    paybacks = [c.payback_months for c in report.cloud if c.payback_months is not None]
    utilisation = (
        f"cost per million output tokens assumes the endpoint serves at its measured rate "
        f"{report.utilisation_hours_per_day:g} h/day and carries the box's whole monthly cost"
    )

    md = (
        markdown_table(summary_rows, ["item", "monthly", "basis"])
        + "\n\n" + markdown_table(cloud_rows, cloud_columns)
        + "\n\n" + (markdown_table(token_rows, token_columns) + f"\n\n_{utilisation}_" if token_rows else "")
        + "".join(f"\n\n**{n}**" for n in report.notes)
        + "\n\n" + markdown_image(png, "ROI")
    )  # fmt: skip
    body = (
        html_table(summary_rows, ["item", "monthly", "basis"]) + html_table(cloud_rows, cloud_columns)
        + (html_table(token_rows, token_columns) + html_paragraphs([utilisation]) if token_rows else "")
        + html_paragraphs(report.notes) + html_image(png, "ROI")
    )  # fmt: skip
    page = write_section(cfg.data_dir / "reports", "roi", "Return on investment", body)
    context.log.info(
        f"ROI: ${report.total_monthly_usd:.2f}/month (electricity {e.source}), payback "
        + (f"{min(paybacks):.1f}-{max(paybacks):.1f} months" if paybacks else "never")
    )
    return MaterializeResult(
        metadata={
            "hardware_monthly_usd": round(report.hardware_monthly_usd, 2),
            "electricity_monthly_usd": round(e.monthly_usd, 2),
            "electricity_source": e.source,
            "electricity_basis": e.detail,
            "electricity_kwh_per_day": round(e.kwh_per_day, 3),
            "total_monthly_usd": round(report.total_monthly_usd, 2),
            f"cost_over_{years}_usd": round(report.tco_usd, 2),
            "payback_months": MetadataValue.json(
                {c.provider: round(c.payback_months, 2) if c.payback_months is not None else None for c in report.cloud}
            ),
            "cost_per_million_tokens_usd": MetadataValue.json(
                {f"{t.endpoint}/{t.metric}": round(t.usd_per_million, 4) for t in report.token_costs}
            ),
            "throughput": "measured" if report.token_costs else "not enough data: no benchmark runs yet",
            "notes": report.notes,
            "roi": MetadataValue.md(md),
            "report": MetadataValue.path(str(page)),
        }
    )


# -- job and schedule ----------------------------------------------------------

reports_job = define_asset_job(
    "reports_job",
    # The inventory is a cheap header read; downloads stay in models_job (they hash what is present).
    selection=AssetSelection.groups("physics", "reports") | AssetSelection.assets("model_files"),
    description="Re-read the model inventory, measure memory bandwidth, recompute the throughput ceilings, the "
    "performance/thermal trends and the ROI report (plots in the UI, report.html in the data dir).",
    executor_def=in_process_executor,
    tags=HEAVY_TAG,
)


# After the night's validation and backups, before anyone looks: the day starts with fresh figures.
reports_schedule = ScheduleDefinition(
    name="reports_schedule",
    job=reports_job,
    cron_schedule="0 6 * * *",
    execution_timezone=SCHEDULE_TIMEZONE,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Daily: bandwidth, ceilings, performance/thermal trends and ROI.",
)


defs = Definitions(
    assets=load_assets_from_current_module(),
    asset_checks=load_asset_checks_from_current_module(),
    jobs=[reports_job],
    schedules=[reports_schedule],
)
