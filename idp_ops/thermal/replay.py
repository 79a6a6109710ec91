"""CSV replay of logged traces: the plan's logger format, our own samples format and the NVML
probe trace, read tolerantly (bad rows are problems, not a stop) and replayed row by row."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from idp_ops.thermal.samples import (
    BOOL_FIELDS,
    INT_FIELDS,
    MIB,
    TEXT_FIELDS,
    DriverThresholds,
    Sample,
    TelemetryError,
    as_utc,
    decode_clocks_event_reasons,
    parse_bool,
    parse_timestamp,
    utc_now,
)

# -- CSV replay ------------------------------------------------------------------------------

PLAN_COLUMNS = ("timestamp", "temperature_c", "power_w", "utilization_pct", "memory_used_mb", "memory_total_mb")
# Our own CSV: "timestamp", then Sample's fields by name (the plan's columns are a subset).
SAMPLE_CSV_COLUMNS = ("timestamp",) + tuple(f.name for f in fields(Sample) if f.name != "ts")
# The NVML probe trace (idp_ops_tests/fixtures/h200_trace.csv): relative seconds and raw NVML units.
PROBE_COLUMNS = ("t_s", "temperature", "power_mw", "energy_mj", "util", "memory", "sm_clock", "clocks_event_reasons")

_MISSING = {"", "n/a", "[n/a]", "na", "none", "null", "[not supported]", "not supported", "nan"}
_FLOAT_FIELDS = {f.name for f in fields(Sample) if f.name not in TEXT_FIELDS | BOOL_FIELDS | INT_FIELDS}
# The default base for relative timestamps (t_s): the Unix epoch, so t_s reads as epoch seconds
# and a replay is deterministic. Pass base_time for a real date.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _RowError(ValueError):
    pass


def _cell_float(column: str, text: str) -> float | None:
    t = text.strip()
    if t.lower() in _MISSING:
        return None
    try:
        v = float(t)
    except ValueError:
        raise _RowError(f"{column} {text!r} is not a number") from None
    if not math.isfinite(v):
        raise _RowError(f"{column} {text!r} is not finite")
    return v


def _cell_int(column: str, text: str) -> int | None:
    t = text.strip()
    if t.lower() in _MISSING:
        return None
    try:
        return int(t, 0)
    except ValueError:
        raise _RowError(f"{column} {text!r} is not an integer") from None


def _cell_pair(column: str, text: str) -> tuple[float | None, float | None]:
    """'(a, b)' as the probe writes NVML structs (util: gpu, memory; memory: used, total bytes)."""
    t = text.strip()
    if t.lower() in _MISSING:
        return None, None
    parts = t.strip("()").split(",")
    if len(parts) != 2:
        raise _RowError(f"{column} {text!r} is not a pair '(a, b)'")
    return _cell_float(column, parts[0]), _cell_float(column, parts[1])


class CsvReplaySource:
    """Replays a logged trace: the plan's CSV, our Sample CSV, or the NVML probe trace.

    Formats, told apart by the header:
    - ``plan``: ``timestamp,temperature_c,power_w,utilization_pct,memory_used_mb,memory_total_mb``
      (the seed's bash logger; timestamps from ``date -Iseconds``).
    - ``samples``: ``timestamp`` plus any of Sample's field names (``device``, ``throttle_mask``,
      ``throttle_reasons`` as ``a|b`` ...); what :func:`write_samples_csv` writes.
    - ``probe``: the NVML probe trace (``t_s,temperature,power_mw,energy_mj,util,memory,sm_clock,
      clocks_event_reasons``): t_s are seconds after ``base_time`` (default the Unix epoch),
      power in mW, memory in bytes, util/memory as ``(a, b)`` pairs.
    Required columns: a timestamp (``timestamp`` or ``t_s``) and a temperature
    (``temperature_c`` or ``temperature``); without them the constructor raises
    :class:`TelemetryError` naming the missing ones. Timestamps: ISO 8601 (naive = UTC)
    or Unix epoch seconds.

    Bad rows never stop a replay. A row that cannot be parsed (wrong number of cells,
    a timestamp or any number that does not parse, a temperature outside -50..200 C) is
    skipped and reported in ``problems`` as ``"line N: reason"``. Empty / ``N/A`` cells
    are None, not problems. A row whose timestamp is not after the previous kept row of
    the same device (out of order or duplicate) is DROPPED and reported: the policy needs
    time order, and a log that jumps back is a clock step or a concatenation mistake.

    ``samples()`` returns every kept row, in file order. ``sample()`` returns the next
    row on each call ([] once exhausted), starting at ``start_index`` (an index into
    ``samples()``); ``position`` is the index of the next row (what a sensor cursor keeps).
    With ``restamp=True`` rows returned by ``sample()`` carry ``clock()`` instead of their
    own time (a live demo of an old trace); ``samples()`` always keeps the file's times.
    """

    name = "csv"

    def __init__(
        self,
        path: str | Path,
        device: str = "gpu0",
        *,
        start_index: int = 0,
        base_time: datetime | None = None,
        restamp: bool = False,
        clock: Callable[[], datetime] = utc_now,
    ):
        self.path = Path(path)
        self.device = device
        self.base_time = as_utc(base_time) if base_time is not None else EPOCH
        self.restamp = restamp
        self._clock = clock
        self.problems: list[str] = []
        try:
            with self.path.open(newline="", encoding="utf-8", errors="replace") as fh:
                rows = self._read_rows(fh)
        except OSError as exc:
            raise TelemetryError(f"cannot read trace {self.path}: {exc}") from exc
        self._samples = self._parse(rows)
        if start_index < 0:
            raise ValueError(f"start_index must be >= 0, got {start_index}")
        self.position = min(start_index, len(self._samples))

    def _read_rows(self, fh: Any) -> list[tuple[int, list[str]]]:
        """(physical line number, cells); a line the csv module rejects is a problem, not a stop."""
        reader = csv.reader(fh)
        rows: list[tuple[int, list[str]]] = []
        start = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return rows
            except csv.Error as exc:
                self.problems.append(f"line {reader.line_num}: unreadable ({exc}); skipped")
            else:
                rows.append((start, row))
            start = reader.line_num + 1

    # the header decides the format
    def _parse(self, rows: list[tuple[int, list[str]]]) -> list[Sample]:
        first = next((i for i, (_, r) in enumerate(rows) if any(c.strip() for c in r)), None)
        if first is None:
            raise TelemetryError(f"trace {self.path} is empty: no header")
        header = [c.strip().lower() for c in rows[first][1]]
        columns = set(header)
        if "t_s" in columns or ("temperature" in columns and "temperature_c" not in columns):
            self.format = "probe"
            required = ("t_s|timestamp", "temperature")
        else:
            self.format = "plan" if tuple(header) == PLAN_COLUMNS else "samples"
            required = ("timestamp", "temperature_c")
        missing = [r for r in required if not any(alt in columns for alt in r.split("|"))]
        if missing:
            raise TelemetryError(
                f"trace {self.path} lacks required column(s) {', '.join(missing)} (header: {','.join(header)})"
            )
        index = {name: i for i, name in enumerate(header)}
        out: list[Sample] = []
        last: dict[str, datetime] = {}
        for lineno, row in rows[first + 1 :]:
            if not any(c.strip() for c in row):
                continue  # blank line
            if len(row) != len(header):
                self.problems.append(f"line {lineno}: {len(row)} cells, header has {len(header)}; skipped")
                continue
            try:
                cells = {name: row[i] for name, i in index.items()}
                sample = self._probe_row(cells) if self.format == "probe" else self._named_row(cells)
            except (_RowError, ValueError) as exc:
                self.problems.append(f"line {lineno}: {exc}; skipped")
                continue
            previous = last.get(sample.device)
            if previous is not None and sample.ts <= previous:
                what = "duplicate" if sample.ts == previous else "out of order"
                self.problems.append(
                    f"line {lineno}: timestamp {sample.ts.isoformat()} {what} "
                    f"(previous {previous.isoformat()}); dropped"
                )
                continue
            last[sample.device] = sample.ts
            out.append(sample)
        return out

    def _timestamp(self, cells: dict[str, str]) -> datetime:
        if "t_s" in cells:
            seconds = _cell_float("t_s", cells["t_s"])
            if seconds is None:
                raise _RowError("t_s is empty")
            return self.base_time + timedelta(seconds=seconds)
        try:
            return parse_timestamp(cells["timestamp"])
        except (ValueError, OverflowError, OSError) as exc:
            raise _RowError(f"timestamp {cells['timestamp']!r} does not parse ({exc})") from None

    @staticmethod
    def _check_temperature(value: float | None) -> float | None:
        if value is not None and not -50 < value < 200:
            raise _RowError(f"temperature {value} C is outside -50..200")
        return value

    def _named_row(self, cells: dict[str, str]) -> Sample:
        values: dict[str, Any] = {}
        for name, text in cells.items():
            if name in _FLOAT_FIELDS:
                values[name] = _cell_float(name, text)
            elif name in INT_FIELDS and name != "throttle_mask":
                values[name] = _cell_int(name, text)
            elif name in BOOL_FIELDS:
                values[name] = parse_bool(text)
        # GPU health columns (issue 13): XIDs as "a|b", "-" for watched and none seen, empty for not watched.
        text = cells.get("xid_errors", "").strip()
        if text:
            values["xid_errors"] = () if text == "-" else tuple(_cell_int("xid_errors", x) for x in text.split("|"))
        if cells.get("energy_source", "").strip():
            values["energy_source"] = cells["energy_source"].strip()
        values["temperature_c"] = self._check_temperature(values.get("temperature_c"))
        mask = _cell_int("throttle_mask", cells["throttle_mask"]) if "throttle_mask" in cells else None
        reasons: tuple[str, ...] = ()
        if cells.get("throttle_reasons", "").strip():
            reasons = tuple(r.strip() for r in cells["throttle_reasons"].split("|") if r.strip())
        elif mask is not None:
            reasons = decode_clocks_event_reasons(mask)
        return Sample(
            ts=self._timestamp(cells),
            device=(cells.get("device") or "").strip() or self.device,
            source="csv",
            throttle_reasons=reasons,
            throttle_mask=mask,
            **values,
        )

    def _probe_row(self, cells: dict[str, str]) -> Sample:
        util, _mem_util = _cell_pair("util", cells["util"]) if "util" in cells else (None, None)
        used, total = _cell_pair("memory", cells["memory"]) if "memory" in cells else (None, None)
        mask = (
            _cell_int("clocks_event_reasons", cells["clocks_event_reasons"])
            if "clocks_event_reasons" in cells
            else None
        )
        power_mw = _cell_float("power_mw", cells["power_mw"]) if "power_mw" in cells else None

        def opt(name: str) -> float | None:
            return _cell_float(name, cells[name]) if name in cells else None

        return Sample(
            ts=self._timestamp(cells),
            device=(cells.get("device") or "").strip() or self.device,
            source="csv",
            temperature_c=self._check_temperature(_cell_float("temperature", cells["temperature"])),
            power_w=None if power_mw is None else power_mw / 1000.0,
            energy_mj=opt("energy_mj"),
            utilization_pct=util,
            memory_used_mb=None if used is None else used / MIB,
            memory_total_mb=None if total is None else total / MIB,
            sm_clock_mhz=opt("sm_clock"),
            mem_clock_mhz=opt("mem_clock"),
            throttle_reasons=decode_clocks_event_reasons(mask),
            throttle_mask=mask,
        )

    def samples(self) -> list[Sample]:
        return list(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def exhausted(self) -> bool:
        return self.position >= len(self._samples)

    def sample(self) -> list[Sample]:
        if self.exhausted:
            return []
        s = self._samples[self.position]
        self.position += 1
        return [replace(s, ts=self._clock()) if self.restamp else s]

    def thresholds(self) -> list[DriverThresholds]:
        return []

    def close(self) -> None:
        pass


def write_samples_csv(samples: Iterable[Sample], path: str | Path) -> Path:
    """Write samples in the ``samples`` CSV format (CsvReplaySource reads it back losslessly)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(SAMPLE_CSV_COLUMNS)
        for s in samples:
            d = s.to_dict()
            row = []
            for col in SAMPLE_CSV_COLUMNS:
                if col == "timestamp":
                    row.append(d["ts"])
                elif col == "throttle_reasons":
                    row.append("|".join(d["throttle_reasons"]))
                elif col == "xid_errors":
                    row.append("" if d[col] is None else "|".join(str(x) for x in d[col]) or "-")
                else:
                    v = d[col]
                    row.append("" if v is None else repr(v) if isinstance(v, float) else str(v))
            w.writerow(row)
    return path
