"""How a scenario's requests arrive: all at once (closed loop), at a constant rate, or as a Poisson process.

Closed: every request is released at once and at most ``concurrency`` are in flight, so a
new one starts the moment one finishes. Constant and Poisson release requests at a rate
(still capped at ``concurrency`` in flight, vLLM's request-rate + max-concurrency semantics):
a real box sees users arrive whether or not the server has caught up.
"""

from __future__ import annotations

import random
from typing import Any

ARRIVALS = ("closed", "constant", "poisson")


def resolve_arrival(
    arrival: str | None, arrival_rate: float | None, poisson_rate: float | None = None
) -> tuple[str, float | None]:
    """The arrival pattern and its rate; the older ``poisson_rate`` alone means Poisson at that rate."""
    if arrival in (None, "closed") and poisson_rate:
        return "poisson", poisson_rate
    arrival = arrival or "closed"
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival {arrival!r}: use one of {', '.join(ARRIVALS)}")
    if arrival == "closed":
        return "closed", None
    rate = arrival_rate or poisson_rate
    if not rate or rate <= 0:
        raise ValueError(f"arrival {arrival!r} needs a rate > 0 (requests/s)")
    return arrival, rate


def arrival_gap_s(arrival: str, rate: float | None, rng: random.Random | Any) -> float:
    """Seconds between one request's release and the next one's."""
    if arrival == "constant":
        return 1.0 / rate
    if arrival == "poisson":
        return rng.expovariate(rate)
    return 0.0
