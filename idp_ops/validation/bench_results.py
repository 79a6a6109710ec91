"""What the streaming benchmark hands out: one request's sample, one scenario's result, the report.

Plain data with their derived figures (percentiles from raw samples, throughput from the
server's token counts); bench.py measures, this module holds and summarises. The names stay
importable from ``idp_ops.validation.bench``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from idp_ops.validation.bench_stats import sample_percentiles


@dataclass
class RequestSample:
    index: int
    started_at: datetime
    ttft_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    e2e_ms: float | None = None
    tpot_ms: float | None = None
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    status: int | None = None
    # None on success; else a kind: http_401, http_403, http_4xx, http_5xx, timeout,
    # connect, server_stopped (connection dropped mid-response), transport,
    # malformed_sse, stream_error (an error object in the stream), no_content.
    error: str | None = None
    # llama.cpp's own view (llama-server sends `timings` on both protocols; vLLM does not).
    server_decode_tok_s: float | None = None
    server_prompt_ms: float | None = None
    concurrency: int = 1
    scenario: str = ""
    # Requested output length, and the error's detail (never a key: bodies are truncated
    # server answers, which do not echo the Authorization header).
    max_tokens: int | None = None
    error_detail: str | None = None
    # Prompt tokens the server served from its cache (llama.cpp timings.cache_n, vLLM
    # usage.prompt_tokens_details.cached_tokens): 0 proves TTFT paid for the whole prompt.
    server_cached_tokens: int | None = None
    # llama.cpp's timings.prompt_n (prompt tokens it evaluated, cached ones excluded) and
    # prompt_per_second: the server's own prefill figures beside our TTFT.
    server_prompt_tokens: int | None = None
    server_prompt_tok_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def decode_tok_s(self) -> float | None:
        """This stream's decode rate: (output tokens - 1) / (E2E - TTFT).

        The first token arrives at TTFT; the other n-1 are decoded between TTFT and
        E2E. llama-server's ``predicted_per_second`` counts the same n-1 intervals.
        """
        if self.output_tokens is None or self.output_tokens < 2 or self.ttft_ms is None or self.e2e_ms is None:
            return None
        span_s = (self.e2e_ms - self.ttft_ms) / 1000
        return (self.output_tokens - 1) / span_s if span_s > 0 else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["decode_tok_s"] = self.decode_tok_s
        return data


@dataclass
class ScenarioResult:
    scenario: str
    concurrency: int
    samples: list[RequestSample]
    wall_s: float
    success_rate: float
    aggregate_output_tok_s: float
    # {"ttft_ms": {"p50", "p90", "p95", "p99", "mean", "n"}, "itl_ms": ..., "tpot_ms": ..., "e2e_ms": ...}
    percentiles: dict[str, dict[str, float]]
    errors_by_kind: dict[str, int]
    requests: int = 0
    poisson_rate: float | None = None
    # How requests arrived: closed (all released at once, at most `concurrency` in flight),
    # constant or poisson at arrival_rate req/s (still capped at `concurrency`).
    arrival: str = "closed"
    arrival_rate: float | None = None

    @classmethod
    def from_samples(
        cls,
        scenario: str,
        concurrency: int,
        samples: list[RequestSample],
        wall_s: float,
        poisson_rate: float | None = None,
        *,
        arrival: str = "closed",
        arrival_rate: float | None = None,
    ) -> ScenarioResult:
        good = [s for s in samples if s.ok]
        errors: dict[str, int] = {}
        for sample in samples:
            if sample.error:
                errors[sample.error] = errors.get(sample.error, 0) + 1
        tokens = sum(s.output_tokens or 0 for s in good)
        return cls(
            scenario=scenario,
            concurrency=concurrency,
            samples=samples,
            wall_s=round(wall_s, 4),
            success_rate=(len(good) / len(samples)) if samples else 0.0,
            aggregate_output_tok_s=round(tokens / wall_s, 3) if wall_s > 0 else 0.0,
            percentiles=sample_percentiles(good),
            errors_by_kind=dict(sorted(errors.items())),
            requests=len(samples),
            poisson_rate=poisson_rate,
            arrival=arrival,
            arrival_rate=arrival_rate,
        )

    def to_dict(self, *, with_samples: bool = True) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "samples"}
        if with_samples:
            data["samples"] = [s.to_dict() for s in self.samples]
        return data


@dataclass
class BenchReport:
    endpoint: str
    protocol: str
    url: str
    model: str
    started_at: datetime
    warm_ttft: ScenarioResult
    decode: ScenarioResult
    sweep: list[ScenarioResult]
    # Single stream: median over the decode scenario's requests of
    # (output_tokens - 1) / ((e2e_ms - ttft_ms) / 1000).
    decode_tok_s: float | None
    # Median of llama.cpp's timings.predicted_per_second over the same requests (None for vLLM).
    server_decode_tok_s: float | None
    errors_by_kind: dict[str, int]
    ok: bool
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def scenarios(self) -> list[ScenarioResult]:
        return [self.warm_ttft, self.decode, *self.sweep]

    @property
    def samples(self) -> list[RequestSample]:
        return [s for scenario in self.scenarios for s in scenario.samples]

    @property
    def message(self) -> str:
        if self.ok:
            return f"{self.endpoint}: {len(self.samples)} requests, all succeeded"
        return f"{self.endpoint}: " + "; ".join(self.problems)

    def to_dict(self, *, with_samples: bool = True) -> dict:
        return {
            "endpoint": self.endpoint,
            "protocol": self.protocol,
            "url": self.url,
            "model": self.model,
            "started_at": self.started_at.isoformat(),
            "wall_s": self.wall_s,
            "settings": self.settings,
            "ok": self.ok,
            "problems": self.problems,
            "decode_tok_s": self.decode_tok_s,
            "server_decode_tok_s": self.server_decode_tok_s,
            "errors_by_kind": self.errors_by_kind,
            "warm_ttft": self.warm_ttft.to_dict(with_samples=with_samples),
            "decode": self.decode.to_dict(with_samples=with_samples),
            "sweep": [s.to_dict(with_samples=with_samples) for s in self.sweep],
        }
