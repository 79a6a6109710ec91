"""Workloads that look like real use: long prompts (context depth) and a shared system prompt (prefix cache).

The nightly benchmark (bench.py) measures ~20-token prompts with every cache defeated;
the owner of a box sends documents, chat history and agents' system prompts. Here:

* **Context depth.** For each depth, a prompt of *exactly* that many tokens, counted by
  the server's own tokenizer (``POST /tokenize``; llama-server and vLLM both have one):
  a long text is tokenized, cut, detokenized and counted again until the count is
  exact, and the server's own count in its answer must agree. A nonce at the start
  and ``cache_prompt: false`` make the server evaluate all of it. Measured: TTFT,
  prefill tok/s (depth / TTFT), decode tok/s; llama-server's own ``timings`` beside.
  The decode ceiling at each depth adds the KV cache a step reads to the weights.
* **Prefix cache.** Rounds of one shared system prompt (a fresh nonce at its start
  makes the first request of a round *cold*) followed by distinct questions sent with
  ``cache_prompt: true`` (*warm*). Reported: TTFT cold against warm and the server's
  hit figure (llama.cpp ``timings.cache_n`` / prompt tokens, OpenAI-style
  ``usage.prompt_tokens_details.cached_tokens``, or vLLM's /metrics counters).

Plain Python, no Dagster import; the validation assets call the ``*_sync`` functions.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx

from idp_ops.physics.formulas import GB, decode_ceiling_at_depth, kv_bytes_per_token, kv_read_tokens
from idp_ops.validation.bench import BenchError, RequestSample, percentiles, stream_request, wait_ready

# Plain prose in several registers, so a long prompt looks like a document, not one repeated token.
_FILLER = (
    "The committee met on a grey Tuesday morning to review the quarterly figures. Revenue had grown in the "
    "northern region, while the coastal offices reported delays caused by the storm season. A proposal to "
    "replace the aging servers was discussed at length; the engineers argued that memory bandwidth, not raw "
    "compute, limited the nightly batch jobs. Someone asked whether the new cooling system would pay for "
    "itself within three years. The minutes record a long silence, then a vote: seven in favour, two against. "
    "In the afternoon the team walked through the river valley, counting birds for the annual survey: herons, "
    "kingfishers, a pair of buzzards circling above the old mill. The chapter on tides explains how the moon "
    "and the sun pull the oceans into two bulges, and why the highest tides come a day or two after a full moon. "
)
_QUESTIONS = (
    "Summarise the decision the committee took.",
    "Which birds were counted, and where?",
    "Why do the highest tides follow a full moon?",
    "What limited the nightly batch jobs?",
    "List three facts from the text above.",
    "Who argued about memory bandwidth?",
    "What was the weather on the day of the meeting?",
    "Give a one-line title for the text.",
)
# Tokens kept free after the prompt for a question and the answer's first tokens.
_PREFIX_MARGIN = 48


class WorkloadError(BenchError):
    """A workload cannot run: no tokenizer endpoint, a context too small, an exact count not reachable."""


# -- the server: its tokenizer and its context -----------------------------------


@dataclass
class ServerFacts:
    """What the server says about itself: its flavour and the context one request may use."""

    flavour: str  # "llama.cpp" | "vllm" | "unknown"
    n_ctx: int | None
    n_ctx_source: str
    specials: int = 0  # tokens the server adds to a prompt it tokenizes (BOS)


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def server_facts(client: httpx.AsyncClient, url: str, key: str | None) -> ServerFacts:
    """llama-server: /props ``default_generation_settings.n_ctx`` (per slot), else /slots;
    vLLM: /v1/models ``max_model_len``."""
    headers = _headers(key)
    try:
        response = await client.get(f"{url}/props", headers=headers)
        if response.status_code == 200:
            props = response.json()
            n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
            if isinstance(n_ctx, int) and n_ctx > 0:
                return ServerFacts("llama.cpp", n_ctx, "/props default_generation_settings.n_ctx")
            slots = await client.get(f"{url}/slots", headers=headers)
            if slots.status_code == 200 and isinstance(slots.json(), list) and slots.json():
                return ServerFacts("llama.cpp", int(slots.json()[0]["n_ctx"]), "/slots n_ctx")
            return ServerFacts("llama.cpp", None, "unknown")
        models = await client.get(f"{url}/v1/models", headers=headers)
        if models.status_code == 200:
            data = models.json().get("data") or []
            if data and isinstance(data[0].get("max_model_len"), int):
                return ServerFacts("vllm", data[0]["max_model_len"], "/v1/models max_model_len")
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WorkloadError(f"{url}: cannot read the server's context size: {type(exc).__name__}: {exc}") from None
    return ServerFacts("unknown", None, "unknown")


class ServerTokenizer:
    """The server's own tokenizer: llama-server ``/tokenize`` {"content"} and ``/detokenize``
    {"tokens"}; vLLM ``/tokenize`` {"model", "prompt"} and ``/detokenize`` {"model", "tokens"}."""

    def __init__(self, client: httpx.AsyncClient, url: str, key: str | None, model: str, flavour: str):
        self.client, self.url, self.headers, self.model, self.flavour = client, url, _headers(key), model, flavour

    async def _post(self, path: str, body: dict) -> dict:
        try:
            response = await self.client.post(f"{self.url}{path}", json=body, headers=self.headers)
        except httpx.HTTPError as exc:
            raise WorkloadError(f"{self.url}{path}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise WorkloadError(f"{self.url}{path} answered {response.status_code}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError:
            raise WorkloadError(f"{self.url}{path} answered something that is not JSON") from None

    async def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        if self.flavour == "vllm":
            body = {"model": self.model, "prompt": text, "add_special_tokens": add_special}
        else:
            body = {"content": text, "add_special": add_special}
        tokens = (await self._post("/tokenize", body)).get("tokens")
        if not isinstance(tokens, list):
            raise WorkloadError(f"{self.url}/tokenize gave no token list")
        # llama-server answers [{"id":..,"piece":..}] when asked for pieces; we never ask, but accept it.
        return [t["id"] if isinstance(t, dict) else int(t) for t in tokens]

    async def detokenize(self, tokens: list[int]) -> str:
        body = {"model": self.model, "tokens": tokens} if self.flavour == "vllm" else {"tokens": tokens}
        answer = await self._post("/detokenize", body)
        text = answer.get("prompt") if self.flavour == "vllm" else answer.get("content")
        if not isinstance(text, str):
            raise WorkloadError(f"{self.url}/detokenize gave no text")
        return text

    async def count(self, text: str) -> int:
        """Tokens the server will evaluate for this prompt, its BOS included."""
        return len(await self.tokenize(text, add_special=True))


async def exact_prompt(tokenizer: ServerTokenizer, head: str, target: int, *, tail: str = "") -> str:
    """A prompt of exactly ``target`` tokens (as the server counts it): ``head`` + filler cut to fit + ``tail``.

    Cutting a token list and detokenizing can merge or split tokens at the cut, so the
    result is counted again and the cut moved until the count is exact.
    """
    specials = len(await tokenizer.tokenize("", add_special=True))
    fixed_tail = await tokenizer.count(tail) - specials if tail else 0
    per_filler = max(1, await tokenizer.count(_FILLER) - specials)
    repeats = target // per_filler + 2
    body = await tokenizer.tokenize(head + _FILLER * repeats, add_special=False)
    cut = target - specials - fixed_tail
    if cut < 1:
        raise WorkloadError(f"a prompt of {target} tokens cannot hold its head and tail")
    tried: set[int] = set()
    for _ in range(8):
        text = await tokenizer.detokenize(body[:cut]) + tail
        counted = await tokenizer.count(text)
        if counted == target:
            return text
        tried.add(cut)
        cut += target - counted
        if cut in tried or cut < 1 or cut > len(body):
            break
    raise WorkloadError(f"could not build a prompt of exactly {target} tokens (closest {counted})")


# -- context depth --------------------------------------------------------------


@dataclass
class DepthPhysics:
    """What the decode ceiling at a depth is made of (GGUF header facts and the endpoint's ceiling)."""

    weight_bytes: float
    bandwidth_gbs: float
    efficiency: float
    kv_bytes_per_token: float | None
    sliding_window: int | None = None

    def ceiling(self, depth: int) -> float:
        kv = self.kv_bytes_per_token or 0.0
        return decode_ceiling_at_depth(
            self.weight_bytes,
            self.bandwidth_gbs * GB,
            kv_read_tokens(depth, self.sliding_window),
            kv,
            efficiency=self.efficiency,
        )


def depth_physics(endpoint, models_dir: Path, ceiling) -> DepthPhysics | None:
    """From the endpoint's ceiling (bandwidth, weights) and its GGUF header (layers, KV heads, head dims)."""
    if ceiling is None:
        return None
    kv, window = None, None
    if endpoint.model_file and (models_dir / endpoint.model_file).suffix == ".gguf":
        from idp_ops.models.gguf_meta import read_gguf

        path = models_dir / endpoint.model_file
        if path.is_file():
            meta = read_gguf(path)
            if not meta.finding and meta.block_count and meta.head_count_kv and meta.key_length:
                head_dim = (meta.key_length + (meta.value_length or meta.key_length)) / 2
                kv = kv_bytes_per_token(meta.block_count, meta.head_count_kv, head_dim)
                window = meta.sliding_window
    return DepthPhysics(ceiling.weight_bytes, ceiling.bandwidth_gbs, ceiling.efficiency, kv, window)


@dataclass
class DepthPoint:
    depth: int
    requested_depth: int
    samples: list[RequestSample]
    ttft_ms: float | None = None
    prefill_tok_s: float | None = None
    decode_tok_s: float | None = None
    server_prompt_ms: float | None = None
    server_prefill_tok_s: float | None = None
    server_decode_tok_s: float | None = None
    ceiling_tok_s: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self, *, with_samples: bool = False) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "samples"}
        if with_samples:
            data["samples"] = [s.to_dict() for s in self.samples]
        return data


@dataclass
class DepthReport:
    endpoint: str
    url: str
    started_at: datetime
    n_ctx: int | None
    n_ctx_source: str
    points: list[DepthPoint]
    kv_bytes_per_token: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(p.ok for p in self.points)

    def to_dict(self, *, with_samples: bool = False) -> dict:
        return {
            "endpoint": self.endpoint,
            "url": self.url,
            "started_at": self.started_at.isoformat(),
            "n_ctx": self.n_ctx,
            "n_ctx_source": self.n_ctx_source,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "ok": self.ok,
            "problems": self.problems,
            "points": [p.to_dict(with_samples=with_samples) for p in self.points],
        }


def _median(values) -> float | None:
    data = [v for v in values if v is not None]
    return round(statistics.median(data), 3) if data else None


def capped_depths(depths: list[int], n_ctx: int | None, max_tokens: int) -> list[tuple[int, int]]:
    """(depth sent, depth asked) pairs: a depth that leaves no room for the answer is cut to what fits."""
    cap = (n_ctx - max_tokens - 1) if n_ctx else None
    out: dict[int, int] = {}
    for asked in sorted(set(depths)):
        sent = min(asked, cap) if cap else asked
        if sent >= 8:
            out.setdefault(sent, asked)
    return sorted(out.items())


async def run_depth(
    url: str,
    protocol: str,
    model: str,
    key: str | None,
    *,
    depths: list[int],
    requests: int = 1,
    max_tokens: int = 32,
    physics: DepthPhysics | None = None,
    timeout_s: float = 300,
    ready_timeout_s: float = 60,
    endpoint: str | None = None,
    progress=None,
) -> DepthReport:
    say = progress or (lambda _line: None)
    url = url.rstrip("/")
    started_at = datetime.now(UTC)
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits) as client:
        await wait_ready(client, url, ready_timeout_s, say)
        facts = await server_facts(client, url, key)
        tokenizer = ServerTokenizer(client, url, key, model, facts.flavour)
        report = DepthReport(endpoint or url, url, started_at, facts.n_ctx, facts.n_ctx_source, [])
        report.kv_bytes_per_token = physics.kv_bytes_per_token if physics else None
        plan = capped_depths(depths, facts.n_ctx, max_tokens)
        if not plan:
            report.problems.append(f"no depth fits the server's context ({facts.n_ctx} tokens)")
            return report
        index = 0
        for depth, asked in plan:
            capped = f" (capped from {asked}: context {facts.n_ctx})" if depth != asked else ""
            say(f"depth {depth}{capped}: {requests} request(s) of {max_tokens} tokens")
            samples = []
            for _ in range(requests):
                # The nonce leads the prompt: no cache can hold any prefix of it.
                prompt = await exact_prompt(tokenizer, f"{secrets.token_hex(6)} is this document.\n", depth)
                sample = await stream_request(
                    client, url, protocol, model, key, prompt, max_tokens,
                    index=index, scenario=f"depth_{depth}", timeout_s=timeout_s, cache_prompt=False,
                )  # fmt: skip
                index += 1
                samples.append(sample)
            report.points.append(_depth_point(depth, asked, samples, physics))
    return report


def _depth_point(depth: int, asked: int, samples: list[RequestSample], physics: DepthPhysics | None) -> DepthPoint:
    good = [s for s in samples if s.ok]
    point = DepthPoint(depth=depth, requested_depth=asked, samples=samples)
    for s in samples:
        if not s.ok:
            point.problems.append(f"depth {depth}: request failed ({s.error}: {s.error_detail})")
        elif s.prompt_tokens != depth:
            point.problems.append(f"depth {depth}: the server counted {s.prompt_tokens} prompt tokens, not {depth}")
        elif s.server_cached_tokens:
            point.problems.append(f"depth {depth}: {s.server_cached_tokens} prompt tokens came from a cache")
    point.ttft_ms = _median(s.ttft_ms for s in good)
    point.prefill_tok_s = _median(depth / (s.ttft_ms / 1000) for s in good if s.ttft_ms)
    point.decode_tok_s = _median(s.decode_tok_s for s in good)
    point.server_prompt_ms = _median(s.server_prompt_ms for s in good)
    point.server_prefill_tok_s = _median(s.server_prompt_tok_s for s in good)
    point.server_decode_tok_s = _median(s.server_decode_tok_s for s in good)
    if physics:
        point.ceiling_tok_s = round(physics.ceiling(depth), 3)
        if point.decode_tok_s and point.decode_tok_s > point.ceiling_tok_s * 1.02:
            point.problems.append(
                f"depth {depth}: decode {point.decode_tok_s:.1f} tok/s beats the ceiling "
                f"{point.ceiling_tok_s:.1f} tok/s: the ceiling's inputs are wrong"
            )
    return point


def run_depth_sync(*args: Any, **kwargs: Any) -> DepthReport:
    return asyncio.run(run_depth(*args, **kwargs))


# -- prefix cache ---------------------------------------------------------------


@dataclass
class PrefixCacheReport:
    endpoint: str
    url: str
    started_at: datetime
    prefix_tokens: int
    requested_prefix_tokens: int
    n_ctx: int | None
    samples: list[tuple[int, str, RequestSample]]  # (round, "cold" | "warm", sample)
    cold_ttft: dict[str, float] = field(default_factory=dict)
    warm_ttft: dict[str, float] = field(default_factory=dict)
    # warm p50 / cold p50: well under 1 when the cache works.
    ttft_ratio: float | None = None
    # Prompt tokens served from the cache / prompt tokens, over the warm (and cold) requests;
    # None when the server reports no cached-token count on its answers.
    warm_hit_rate: float | None = None
    cold_hit_rate: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self, *, with_samples: bool = False) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "samples"}
        data["started_at"] = self.started_at.isoformat()
        if with_samples:
            data["samples"] = [{"round": r, "kind": k, **s.to_dict()} for r, k, s in self.samples]
        return data


def _hit_rate(samples: list[RequestSample]) -> float | None:
    known = [s for s in samples if s.ok and s.server_cached_tokens is not None and s.prompt_tokens]
    if not known:
        return None
    return round(sum(s.server_cached_tokens for s in known) / sum(s.prompt_tokens for s in known), 4)


async def run_prefix_cache(
    url: str,
    protocol: str,
    model: str,
    key: str | None,
    *,
    prefix_tokens: int = 1536,
    rounds: int = 3,
    warm_requests: int = 4,
    max_tokens: int = 8,
    timeout_s: float = 300,
    ready_timeout_s: float = 60,
    endpoint: str | None = None,
    progress=None,
) -> PrefixCacheReport:
    say = progress or (lambda _line: None)
    url = url.rstrip("/")
    started_at = datetime.now(UTC)
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits) as client:
        await wait_ready(client, url, ready_timeout_s, say)
        facts = await server_facts(client, url, key)
        tokenizer = ServerTokenizer(client, url, key, model, facts.flavour)
        size = prefix_tokens
        if facts.n_ctx:
            size = min(prefix_tokens, facts.n_ctx - max_tokens - _PREFIX_MARGIN)
        if size < 16:
            raise WorkloadError(f"{url}: a context of {facts.n_ctx} tokens leaves no room for a shared prefix")
        report = PrefixCacheReport(endpoint or url, url, started_at, size, prefix_tokens, facts.n_ctx, [])
        index = 0
        for round_ in range(rounds):
            # A fresh nonce at the start: nothing cached can match this round's prefix.
            prefix = await exact_prompt(
                tokenizer, f"{secrets.token_hex(6)} is this conversation. You answer from this text.\n", size
            )
            say(f"prefix cache round {round_ + 1}/{rounds}: 1 cold + {warm_requests} warm requests, prefix {size} tok")
            for i in range(warm_requests + 1):
                question = _QUESTIONS[(round_ * (warm_requests + 1) + i) % len(_QUESTIONS)]
                prompt = f"{prefix}\nQuestion {i + 1}: {question}\nAnswer:"
                sample = await stream_request(
                    client, url, protocol, model, key, prompt, max_tokens,
                    index=index, scenario="prefix_cold" if i == 0 else "prefix_warm", timeout_s=timeout_s,
                    cache_prompt=True,
                )  # fmt: skip
                index += 1
                report.samples.append((round_, "cold" if i == 0 else "warm", sample))
    _summarise_prefix(report)
    return report


def _summarise_prefix(report: PrefixCacheReport) -> None:
    cold = [s for _, kind, s in report.samples if kind == "cold"]
    warm = [s for _, kind, s in report.samples if kind == "warm"]
    failed = [s for _, _, s in report.samples if not s.ok]
    if failed:
        kinds = sorted({s.error for s in failed})
        report.problems.append(f"{len(failed)} of {len(report.samples)} requests failed ({', '.join(kinds)})")
    report.cold_ttft = percentiles(s.ttft_ms for s in cold if s.ok)
    report.warm_ttft = percentiles(s.ttft_ms for s in warm if s.ok)
    if report.cold_ttft.get("n") and report.warm_ttft.get("n"):
        report.ttft_ratio = round(report.warm_ttft["p50"] / report.cold_ttft["p50"], 4)
    report.warm_hit_rate = _hit_rate(warm)
    report.cold_hit_rate = _hit_rate(cold)


def run_prefix_cache_sync(*args: Any, **kwargs: Any) -> PrefixCacheReport:
    return asyncio.run(run_prefix_cache(*args, **kwargs))


# -- is caching configured? -------------------------------------------------------

_VLLM_TAG = re.compile(r":v?(\d+)\.(\d+)")


def prefix_caching_configured(settings, endpoint) -> tuple[bool | None, str]:
    """Whether the compose file turns prefix caching on for this endpoint's service, and why.

    llama-server caches prompts unless started with ``--no-cache-prompt`` (or
    LLAMA_ARG_CACHE_PROMPT false); vLLM with ``--enable-prefix-caching``, by default from
    0.8 (the V1 engine) unless ``--no-enable-prefix-caching``. None: not known (no compose
    service for the endpoint), judged on the measurement alone.
    """
    if not endpoint.compose_service or not settings.compose_file:
        return None, "no compose service for this endpoint"
    from idp_ops.stack.audit_load import ComposeFileError, load_compose, services_of

    try:
        service = services_of(load_compose(settings.compose_file)).get(endpoint.compose_service)
    except ComposeFileError as exc:
        return None, f"compose file unreadable: {exc}"
    if service is None:
        return None, f"no service {endpoint.compose_service!r} in {settings.compose_file.name}"
    command = service.get("command") or []
    command = command.split() if isinstance(command, str) else [str(c) for c in command]
    entry = service.get("entrypoint") or []
    text = " ".join(command + ([entry] if isinstance(entry, str) else [str(e) for e in entry]))
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment if "=" in item)
    image = str(service.get("image") or "")
    where = f"{settings.compose_file.name} service {endpoint.compose_service}"
    if "vllm" in text or "vllm" in image:
        if "--no-enable-prefix-caching" in command:
            return False, f"{where}: --no-enable-prefix-caching"
        if "--enable-prefix-caching" in command:
            return True, f"{where}: --enable-prefix-caching"
        tag = _VLLM_TAG.search(settings.vllm_image or "")
        if tag and (int(tag.group(1)), int(tag.group(2))) < (0, 8):
            return False, f"{where}: vLLM {tag.group(1)}.{tag.group(2)} (V0) caches prefixes only when asked"
        return True, f"{where}: vLLM V1 caches prefixes by default"
    if "--no-cache-prompt" in command:
        return False, f"{where}: --no-cache-prompt"
    if str(environment.get("LLAMA_ARG_CACHE_PROMPT", "")).lower() in ("0", "false", "off", "no"):
        return False, f"{where}: LLAMA_ARG_CACHE_PROMPT off"
    return True, f"{where}: llama-server caches prompts by default (no --no-cache-prompt)"


# -- history ------------------------------------------------------------------------


def record_depth(con, night: date, report: DepthReport) -> None:
    """Replace this night's depth rows for the endpoint."""
    from idp_ops.history import database as history

    con.execute("DELETE FROM depth_samples WHERE night = ? AND endpoint = ?", [night, report.endpoint])
    rows = []
    for point in report.points:
        for i, s in enumerate(point.samples):
            rows.append(
                {
                    "night": night,
                    "endpoint": report.endpoint,
                    "depth": point.depth,
                    "idx": i,
                    "requested_depth": point.requested_depth,
                    "started_at": s.started_at,
                    "prompt_tokens": s.prompt_tokens,
                    "ttft_ms": s.ttft_ms,
                    "prefill_tok_s": round(point.depth / (s.ttft_ms / 1000), 3) if s.ttft_ms else None,
                    "decode_tok_s": s.decode_tok_s,
                    "output_tokens": s.output_tokens,
                    "server_prompt_tokens": s.server_prompt_tokens,
                    "server_prompt_ms": s.server_prompt_ms,
                    "server_prefill_tok_s": s.server_prompt_tok_s,
                    "server_decode_tok_s": s.server_decode_tok_s,
                    "server_cached_tokens": s.server_cached_tokens,
                    "ceiling_tok_s": point.ceiling_tok_s,
                    "kv_bytes_per_token": report.kv_bytes_per_token,
                    "error": s.error,
                }
            )
    history.insert_rows(con, "depth_samples", rows)


def record_prefix_cache(con, night: date, report: PrefixCacheReport) -> None:
    from idp_ops.history import database as history

    con.execute("DELETE FROM prefix_cache_samples WHERE night = ? AND endpoint = ?", [night, report.endpoint])
    history.insert_rows(
        con,
        "prefix_cache_samples",
        [
            {
                "night": night,
                "endpoint": report.endpoint,
                "round": round_,
                "idx": s.index,
                "kind": kind,
                "started_at": s.started_at,
                "prefix_tokens": report.prefix_tokens,
                "prompt_tokens": s.prompt_tokens,
                "cached_tokens": s.server_cached_tokens,
                "ttft_ms": s.ttft_ms,
                "error": s.error,
            }
            for round_, kind, s in report.samples
        ],
    )
