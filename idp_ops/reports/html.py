"""Pictures and the HTML report: PNG plots (matplotlib, Agg) and one self-contained page.

Plots are drawn on bare ``matplotlib.figure.Figure`` objects with the Agg canvas,
never through ``pyplot``: pyplot keeps global figure state and picks a GUI backend,
neither of which belongs in a daemon's worker process.

The page ``<data_dir>/reports/report.html`` is assembled from sections that
each asset writes on its own (``sections/<name>.json``), so the trend and ROI
assets can run in any order, or alone, and the page always holds the newest of
each. Every file is written atomically: a browser never sees half a report.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib.dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from idp_ops.fsutil import atomic_write_json, atomic_write_text

REPORT_FILE = "report.html"
SECTIONS_DIR = "sections"
# Sections appear in this order; others follow alphabetically.
SECTION_ORDER = ["physics", "performance", "thermal", "roi"]
DPI = 90


# -- plots -----------------------------------------------------------------------


def new_figure(width: float = 9.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def markdown_image(png: bytes, alt: str) -> str:
    """An image the Dagster UI renders inside MetadataValue.md."""
    return f"![{alt}]({data_uri(png)})"


def series_labels(points):
    """One label per series: an endpoint and the model it served ("llamacpp-cpu · tiny").

    A model switch starts a new line in the plots instead of joining two models' points.
    """
    keys = ["endpoint", "served_model"] if "served_model" in points.columns else ["endpoint"]
    return points[keys].fillna("").astype(str).agg(lambda row: " · ".join(v for v in row if v), axis=1)


def plot_metric_trends(points, metrics: list[str], *, title: str = "") -> bytes | None:
    """One panel per metric: each series' values, its rolling median, regressions marked, the ceiling.

    ``points`` is ``TrendReport.points`` (a long-form DataFrame); None when it holds none of ``metrics``.
    """
    present = [m for m in metrics if not points.empty and (points["metric"] == m).any()]
    if not present:
        return None
    fig = new_figure(9.0, 2.6 * len(present))
    axes = fig.subplots(len(present), 1, sharex=True, squeeze=False)[:, 0]
    points = points.assign(series=series_labels(points))
    colors = {name: f"C{i}" for i, name in enumerate(sorted(points["series"].unique()))}
    for ax, metric in zip(axes, present):
        rows = points[points["metric"] == metric]
        for name, series in rows.groupby("series", sort=True):
            color = colors[name]
            ax.plot(series["night"], series["value"], "o-", color=color, markersize=3, linewidth=1, label=name)
            ax.plot(series["night"], series["rolling_median"], "--", color=color, linewidth=1, alpha=0.7)
            bad = series[series["regression"]]
            if len(bad):
                ax.plot(bad["night"], bad["value"], "x", color="red", markersize=9, mew=2)
            ceiling = series["ceiling_tok_s"].dropna()
            if len(ceiling):
                ax.plot(series["night"], series["ceiling_tok_s"], ":", color=color, linewidth=1.5)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[0].set_title(
        title or "nightly benchmark (dashed: rolling median, dotted: ceiling, red x: regression)", fontsize=10
    )
    nights = points["night"]
    if nights.min() == nights.max():
        # One night: matplotlib would otherwise span years around a single date.
        axes[0].set_xlim(nights.min() - timedelta(days=3), nights.max() + timedelta(days=3))
    fig.autofmt_xdate()
    return figure_png(fig)


def plot_thermal_daily(daily) -> bytes | None:
    """Energy per day (bars) and time above the warning line and throttled (lines), per device."""
    if daily is None or daily.empty:
        return None
    fig = new_figure(9.0, 5.0)
    energy_ax, time_ax = fig.subplots(2, 1, sharex=True)
    devices = sorted(daily["device"].unique())
    width = 0.8 / max(len(devices), 1)
    for index, device in enumerate(devices):
        rows = daily[daily["device"] == device]
        days = mdates.date2num(rows["day"])
        energy_ax.bar(
            days + (index - (len(devices) - 1) / 2) * width,
            rows["energy_kwh"].fillna(0),
            width=width,
            label=device,
            color=f"C{index}",
        )
        time_ax.plot(
            days,
            rows["seconds_above_warn"].fillna(0) / 3600,
            "o-",
            markersize=3,
            color=f"C{index}",
            label=f"{device} above warn",
        )
        time_ax.plot(
            days,
            rows["throttle_seconds"].fillna(0) / 3600,
            "s--",
            markersize=3,
            color=f"C{index}",
            alpha=0.7,
            label=f"{device} throttled",
        )
    energy_ax.set_ylabel("kWh / day")
    energy_ax.set_title("thermal log: energy per day, hours above the warning line, hours throttled", fontsize=10)
    energy_ax.legend(fontsize=8)
    energy_ax.grid(alpha=0.3)
    time_ax.set_ylabel("hours / day")
    time_ax.legend(fontsize=8)
    time_ax.grid(alpha=0.3)
    time_ax.xaxis_date()
    fig.autofmt_xdate()
    return figure_png(fig)


def plot_roi(report) -> bytes:
    """Monthly cost side by side, and cumulative cost over the amortisation period with payback points."""
    fig = new_figure(10.0, 4.0)
    bars, cumulative = fig.subplots(1, 2)
    names = ["local (total)"] + [c.provider for c in report.cloud]
    values = [report.total_monthly_usd] + [c.monthly_usd for c in report.cloud]
    bars.bar(range(len(names)), values, color=["C2"] + [f"C{i}" for i in range(3, 3 + len(report.cloud))])
    bars.bar([0], [report.hardware_monthly_usd], color="C7", label="hardware (amortised)")
    bars.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    bars.set_ylabel("USD / month")
    bars.set_title(f"monthly cost (electricity: {report.electricity.source})", fontsize=10)
    bars.legend(fontsize=8)
    for x, value in enumerate(values):
        bars.annotate(f"${value:,.0f}", (x, value), ha="center", va="bottom", fontsize=8)

    months = list(range(0, int(round(report.amortisation_years * 12)) + 1))
    local = [report.hardware_total_usd + report.electricity.monthly_usd * m for m in months]
    cumulative.plot(months, local, color="C2", linewidth=2, label="local: hardware up front + electricity")
    for index, cloud in enumerate(report.cloud):
        color = f"C{3 + index}"
        # Payback in the legend, not beside the point: close paybacks would print over each other.
        payback = f"payback {cloud.payback_months:.1f} mo" if cloud.payback_months is not None else "no payback"
        cumulative.plot(
            months, [cloud.monthly_usd * m for m in months], color=color, label=f"{cloud.provider} ({payback})"
        )
        if cloud.payback_months is not None and cloud.payback_months <= months[-1]:
            cumulative.plot([cloud.payback_months], [cloud.monthly_usd * cloud.payback_months], "o", color=color)
    cumulative.set_xlabel("months")
    cumulative.set_ylabel("cumulative USD")
    cumulative.set_title("cumulative cost and payback", fontsize=10)
    cumulative.legend(fontsize=7)
    cumulative.grid(alpha=0.3)
    return figure_png(fig)


# -- HTML ------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    body_html: str
    updated_at: str


def html_table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{data_uri(png)}">'


def html_paragraphs(lines: list[str]) -> str:
    return "".join(f"<p>{html.escape(line)}</p>" for line in lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def write_section(reports_dir: Path, name: str, title: str, body_html: str) -> Path:
    """Store one asset's section and rebuild the page; returns the page's path."""
    section = {
        "name": name,
        "title": title,
        "body_html": body_html,
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_json(reports_dir / SECTIONS_DIR / f"{name}.json", section)
    return assemble(reports_dir)


def load_sections(reports_dir: Path) -> list[Section]:
    sections = []
    for path in sorted((reports_dir / SECTIONS_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text())
            sections.append(Section(data["name"], data["title"], data["body_html"], data["updated_at"]))
        except (OSError, ValueError, KeyError):
            continue  # a damaged section is dropped from the page; its asset rewrites it next run
    rank = {name: i for i, name in enumerate(SECTION_ORDER)}
    return sorted(sections, key=lambda s: (rank.get(s.name, len(rank)), s.name))


def render_page(sections: list[Section], *, title: str = "idp_ops report") -> str:
    nav = " · ".join(f'<a href="#{html.escape(s.name)}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{html.escape(s.name)}"><h2>{html.escape(s.title)}</h2>'
        f'<p class="meta">updated {html.escape(s.updated_at)}</p>{s.body_html}</section>'
        for s in sections
    )
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
.meta {{ color: #777; font-size: 0.85em; }}
section {{ margin-bottom: 2.5em; }}
</style></head>
<body><h1>{html.escape(title)}</h1><p class="meta">generated {generated} · {nav}</p>
{body or "<p>No sections yet: materialize the physics and reports assets.</p>"}
</body></html>
"""


def assemble(reports_dir: Path) -> Path:
    path = reports_dir / REPORT_FILE
    atomic_write_text(path, render_page(load_sections(reports_dir)))
    return path
