"""Energy between counter reads: NVML's energy counter is exact but slow, power is cheap.

Measured on an H200 (``idp_ops_tests/fixtures/h200_nvml_report.json``): one
``nvmlDeviceGetTotalEnergyConsumption`` costs ~3.5-4 ms, every other field ~1-5 us. So the
counter is read at most once per ``interval_s`` (default 60 s) and, in between, the energy is
the last counter value plus the power integrated since (trapezoids between samples). Each
counter read resets the estimate to the truth, so the error never accumulates past one
interval, and hourly kWh from the counter deltas stay exact to within that last stretch.

Plain Python (stdlib only): the NVML benchmarks import it with nothing but nvidia-ml-py.
"""

from __future__ import annotations

import math

COUNTER, INTEGRATED = "counter", "integrated"
DEFAULT_INTERVAL_S = 60.0
# Longer than this between two samples, the power between them is unknown: read the counter.
MAX_INTEGRATION_GAP_S = 120.0


class EnergyIntegrator:
    """Per device: decides when to read the counter, and integrates power in between.

    Times are monotonic seconds (never the wall clock: a clock step must not add or remove
    energy). ``interval_s`` 0 reads the counter on every sample (the old behaviour).
    """

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S):
        if math.isnan(interval_s) or interval_s < 0:
            raise ValueError(f"energy read interval must be >= 0 s, got {interval_s}")
        self.interval_s = interval_s
        self._counter_at: float | None = None  # monotonic time of the last counter read
        self._estimate_mj: float | None = None
        self._last_t: float | None = None
        self._last_power_w: float | None = None
        self.counter_reads = 0

    def counter_due(self, t: float, power_w: float | None) -> bool:
        """Whether this sample must read the counter (no estimate to carry on from otherwise)."""
        if self._counter_at is None or self._estimate_mj is None or self._last_t is None:
            return True
        if power_w is None or self._last_power_w is None:
            return True  # nothing to integrate with
        if t - self._last_t > MAX_INTEGRATION_GAP_S or t < self._last_t:
            return True
        return t - self._counter_at >= self.interval_s

    def from_counter(self, t: float, energy_mj: float | None, power_w: float | None) -> tuple[float | None, str | None]:
        """A counter read (None: it failed); returns (energy_mj, source)."""
        self._last_t, self._last_power_w = t, power_w
        if energy_mj is None:
            # No base to integrate from: the next sample tries the counter again.
            self._counter_at, self._estimate_mj = None, None
            return None, None
        self.counter_reads += 1
        self._counter_at, self._estimate_mj = t, float(energy_mj)
        return self._estimate_mj, COUNTER

    def integrate(self, t: float, power_w: float) -> tuple[float, str]:
        """Carry the estimate to ``t`` with the trapezoid between the last power and this one."""
        assert self._estimate_mj is not None and self._last_t is not None and self._last_power_w is not None
        dt = t - self._last_t
        self._estimate_mj += (self._last_power_w + power_w) / 2.0 * dt * 1000.0  # W * s = J = 1000 mJ
        self._last_t, self._last_power_w = t, power_w
        return self._estimate_mj, INTEGRATED


__all__ = ["COUNTER", "DEFAULT_INTERVAL_S", "INTEGRATED", "MAX_INTEGRATION_GAP_S", "EnergyIntegrator"]
