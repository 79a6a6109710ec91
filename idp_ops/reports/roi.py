"""Return on investment: amortised hardware, electricity, the cloud alternative, cost per token.

Formulas (all monthly, a month being ``days_per_month`` days):

    hardware   = sum(hardware prices) / (amortisation years x 12)
    electricity (duty cycle) = (peak W x peak h/day + idle W x (24 - peak h/day)) / 1000 x days x $/kWh
    electricity (measured)   = measured kWh per day x days x $/kWh
    total      = hardware + electricity
    cloud      = $/hour x hours per month                         (per provider)
    payback    = hardware total / (cloud - electricity) months    (the box's running cost is what
                 it saves each month on top of paying itself off; never when cloud <= electricity)
    cost / 1M output tokens = total / (tok/s x 3600 x peak h/day x days / 1e6)

With the plan's inputs: $69.44 hardware + $19.30 electricity ($13.54 peak + $5.76
idle) = $88.74/month, $3,195 over 3 years, and payback 2500 / (cloud - 19.30):
2.9 months against AWS, 8.5 RunPod, 9.0 Lambda. The plan's "8-11 months" does not
follow from its own inputs.

Measured energy comes from ``thermal_hourly.energy_kwh``: the energy counters of
the devices the thermal log samples (NVML on a GPU box). The rest of the box is
not metered, so the report names the devices the figure covers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import pandas as pd

from idp_ops.history import database as history
from idp_ops.settings import RoiSettings

ENERGY_MEASURED = "measured"
ENERGY_DUTY_CYCLE = "duty cycle"
# Less than a day of measured energy says little about a month: fall back to the duty cycle.
MIN_ENERGY_HOURS = 24
# Recent usage is what the next months will look like: measure over this window.
ENERGY_WINDOW_DAYS = 30
# Median over this many recent nights (one slow night must not set the price of a token).
THROUGHPUT_RUNS = 7


@dataclass(frozen=True)
class MeasuredEnergy:
    kwh: float
    hours: int  # hours with an energy reading
    devices: list[str]
    first_hour: str
    last_hour: str

    @property
    def kwh_per_day(self) -> float:
        return self.kwh / self.hours * 24


@dataclass(frozen=True)
class Electricity:
    source: str  # "measured" | "duty cycle"
    kwh_per_day: float
    monthly_usd: float
    peak_usd: float | None = None  # duty cycle only
    idle_usd: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class CloudComparison:
    provider: str
    usd_per_hour: float
    hours_per_month: float
    monthly_usd: float
    savings_monthly_usd: float  # cloud - local total (amortisation included)
    payback_months: float | None  # None: the cloud costs no more than the box's electricity
    tco_usd: float
    net_savings_usd: float  # over the amortisation period


@dataclass(frozen=True)
class TokenCost:
    endpoint: str
    metric: str  # which throughput: decode_tok_s (one stream) or aggregate_tok_s_at_max
    tok_s: float
    runs: int
    tokens_per_month: float
    usd_per_million: float


@dataclass
class RoiReport:
    hardware_usd: dict[str, float]
    hardware_total_usd: float
    amortisation_years: float
    hardware_monthly_usd: float
    electricity: Electricity
    total_monthly_usd: float
    tco_usd: float
    cloud: list[CloudComparison]
    token_costs: list[TokenCost] = field(default_factory=list)
    utilisation_hours_per_day: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def operating_monthly_usd(self) -> float:
        return self.electricity.monthly_usd

    def as_dict(self) -> dict:
        return asdict(self) | {"operating_monthly_usd": self.operating_monthly_usd}


def hardware_monthly(roi: RoiSettings) -> float:
    return sum(roi.hardware_usd.values()) / (roi.amortisation_years * 12)


def duty_cycle_electricity(roi: RoiSettings) -> Electricity:
    idle_hours = 24 - roi.peak_hours_per_day
    peak_kwh_day = roi.peak_watts * roi.peak_hours_per_day / 1000
    idle_kwh_day = roi.idle_watts * idle_hours / 1000
    peak = peak_kwh_day * roi.days_per_month * roi.electricity_usd_per_kwh
    idle = idle_kwh_day * roi.days_per_month * roi.electricity_usd_per_kwh
    return Electricity(
        source=ENERGY_DUTY_CYCLE,
        kwh_per_day=peak_kwh_day + idle_kwh_day,
        monthly_usd=peak + idle,
        peak_usd=peak,
        idle_usd=idle,
        detail=(
            f"configured duty cycle: {roi.peak_watts:g} W x {roi.peak_hours_per_day:g} h/day + {roi.idle_watts:g} W x "
            f"{idle_hours:g} h/day at ${roi.electricity_usd_per_kwh:g}/kWh"
        ),
    )


def measured_electricity(roi: RoiSettings, energy: MeasuredEnergy) -> Electricity:
    return Electricity(
        source=ENERGY_MEASURED,
        kwh_per_day=energy.kwh_per_day,
        monthly_usd=energy.kwh_per_day * roi.days_per_month * roi.electricity_usd_per_kwh,
        detail=(
            f"measured: {energy.kwh:.3f} kWh over {energy.hours} h ({energy.first_hour} .. {energy.last_hour}) on "
            f"{', '.join(energy.devices)} at ${roi.electricity_usd_per_kwh:g}/kWh; devices the thermal log does not "
            "sample are not metered"
        ),
    )


def cloud_comparison(roi: RoiSettings, *, total_monthly: float, operating_monthly: float) -> list[CloudComparison]:
    hardware_total = sum(roi.hardware_usd.values())
    months = roi.amortisation_years * 12
    result = []
    for provider, price in roi.cloud_usd_per_hour.items():
        monthly = price * roi.cloud_hours_per_month
        margin = monthly - operating_monthly
        result.append(
            CloudComparison(
                provider=provider,
                usd_per_hour=price,
                hours_per_month=roi.cloud_hours_per_month,
                monthly_usd=monthly,
                savings_monthly_usd=monthly - total_monthly,
                payback_months=hardware_total / margin if margin > 0 else None,
                tco_usd=monthly * months,
                net_savings_usd=(monthly - total_monthly) * months,
            )
        )
    return result


def token_costs(
    roi: RoiSettings, throughputs: list[tuple[str, str, float, int]], *, total_monthly: float
) -> list[TokenCost]:
    """Cost per million output tokens if the box's whole monthly cost were carried by one endpoint.

    ``throughputs``: (endpoint, metric, tok/s, runs it is the median of). The box
    serves at that rate ``peak_hours_per_day`` hours a day (the assumed utilisation).
    """
    result = []
    for endpoint, metric, tok_s, runs in throughputs:
        if not tok_s or tok_s <= 0:
            continue
        tokens = tok_s * 3600 * roi.peak_hours_per_day * roi.days_per_month
        if tokens <= 0:
            continue
        result.append(TokenCost(endpoint, metric, tok_s, runs, tokens, total_monthly / (tokens / 1e6)))
    return result


def build_report(
    roi: RoiSettings,
    *,
    energy: MeasuredEnergy | None = None,
    throughputs: list[tuple[str, str, float, int]] | None = None,
    notes: list[str] | None = None,
) -> RoiReport:
    """The report from settings, measured energy (None: use the duty cycle) and measured throughput."""
    notes = list(notes or [])
    electricity = measured_electricity(roi, energy) if energy else duty_cycle_electricity(roi)
    hardware = hardware_monthly(roi)
    total = hardware + electricity.monthly_usd
    report = RoiReport(
        hardware_usd=dict(roi.hardware_usd),
        hardware_total_usd=sum(roi.hardware_usd.values()),
        amortisation_years=roi.amortisation_years,
        hardware_monthly_usd=hardware,
        electricity=electricity,
        total_monthly_usd=total,
        tco_usd=total * roi.amortisation_years * 12,
        cloud=cloud_comparison(roi, total_monthly=total, operating_monthly=electricity.monthly_usd),
        token_costs=token_costs(roi, throughputs or [], total_monthly=total),
        utilisation_hours_per_day=roi.peak_hours_per_day,
        notes=notes,
    )
    if not report.token_costs:
        report.notes.append(
            "not enough data: no measured throughput in bench_runs yet, so no cost per million tokens "
            "(the nightly validation records it)"
        )
    return report


# -- history -------------------------------------------------------------------


def measured_energy(
    history_file: Path, *, window_days: int = ENERGY_WINDOW_DAYS, min_hours: int = MIN_ENERGY_HOURS, con=None
) -> tuple[MeasuredEnergy | None, str]:
    """Energy of the last ``window_days`` of hourly rollups; (None, why) when there is too little."""
    query = """
        WITH metered AS (SELECT * FROM thermal_hourly WHERE energy_kwh IS NOT NULL),
             bounds AS (SELECT max(hour) AS last FROM metered)
        SELECT sum(energy_kwh), count(DISTINCT hour), list(DISTINCT device ORDER BY device),
               min(hour), max(hour)
        FROM metered, bounds WHERE hour > bounds.last - ?
    """
    params = [timedelta(days=window_days)]
    if con is not None:
        row = con.execute(query, params).fetchone()
    elif not Path(history_file).exists():
        return None, "no history file yet"
    else:
        with history.connect(history_file, read_only=True) as con:
            if not _table_exists(con, "thermal_hourly"):
                return None, "no thermal_hourly table in history"
            row = con.execute(query, params).fetchone()
    kwh, hours, devices, first, last = row
    if not hours:
        return None, "no measured energy in thermal_hourly (no energy counter sampled yet)"
    if hours < min_hours:
        return None, f"only {hours} h of measured energy; {min_hours} h needed before it replaces the duty cycle"
    return MeasuredEnergy(float(kwh), int(hours), list(devices), _iso(first), _iso(last)), ""


def recent_throughput(runs: pd.DataFrame, *, last: int = THROUGHPUT_RUNS) -> list[tuple[str, str, float, int]]:
    """Per endpoint, the median of the last ``last`` nights' decode and aggregate tok/s."""
    result = []
    if runs.empty:
        return result
    for endpoint, group in runs.sort_values("night").groupby("endpoint", sort=True):
        for metric in ("decode_tok_s", "aggregate_tok_s_at_max"):
            if metric not in group:
                continue
            values = group[metric].dropna().astype(float).tail(last)
            values = values[values > 0]
            if len(values):
                result.append((endpoint, metric, float(values.median()), len(values)))
    return result


def report_from_history(roi: RoiSettings, history_file: Path) -> RoiReport:
    """The ROI report from the history file (measured energy and throughput where present)."""
    from idp_ops.reports.trends import load_bench_runs

    energy, why = measured_energy(history_file)
    notes = [] if energy else [f"electricity from the configured duty cycle: {why}"]
    return build_report(roi, energy=energy, throughputs=recent_throughput(load_bench_runs(history_file)), notes=notes)


def _table_exists(con, name: str) -> bool:
    return bool(
        con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()[0]
    )


def _iso(value) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
