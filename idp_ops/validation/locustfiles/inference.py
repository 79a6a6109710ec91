"""The plan's weighted user mix, for both server kinds, run headless by ``idp_ops.validation.loadtest``.

    locust -f inference.py OpenAIUser   --headless --host http://127.0.0.1:8000 ...
    locust -f inference.py LlamaCppUser --headless --host http://127.0.0.1:8001 ...

Configuration comes from the environment (never the command line, where a key
would show in ``ps``):

    IDPOPS_LOAD_KEY_FILE   file whose first non-empty line is the Bearer key (optional)
    IDPOPS_LOAD_MODEL      model name for the OpenAI API (default "default")
    IDPOPS_LOAD_TIMEOUT_S  cap on each request's timeout (default: the plan's 30/60/120 s and 15/30 s)
    IDPOPS_LOAD_WAIT_SCALE multiplies the plan's think times (default 1.0)

Every completion is streamed and read to its end: a request counts as a success
only if the stream finished properly ([DONE] / a final stop event). Locust's own
response time for a streamed request is the time to the response headers, not to
the first or last token: use it for load, request counts and failures, and take
latency figures from ``idp_ops.validation.bench``. Prompts carry a per-request nonce so
no prefix cache can serve them.

Locust's ``--csv`` writer refreshes its files once a second and does not write
them again at shutdown, so the last second of a run can be missing from them. On
quit (after the users stopped) this file writes ``<prefix>_final_stats.csv`` and
``<prefix>_final_failures.csv`` in the same format from the finished totals.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets

from locust import HttpUser, between, events, task
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

_NONCE = secrets.token_hex(3)
_COUNTER = itertools.count()
_TIMEOUT_CAP = float(os.environ.get("IDPOPS_LOAD_TIMEOUT_S") or "inf")
_WAIT_SCALE = float(os.environ.get("IDPOPS_LOAD_WAIT_SCALE", "1.0") or 1.0)
MODEL = os.environ.get("IDPOPS_LOAD_MODEL", "default")


def _read_key() -> str | None:
    path = os.environ.get("IDPOPS_LOAD_KEY_FILE")
    if not path:
        return None
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                return line.strip()
    raise SystemExit(f"key file {path} is empty")


_KEY = _read_key()
_HEADERS = {"Authorization": f"Bearer {_KEY}"} if _KEY else {}


def _unique(prompt: str) -> str:
    # The nonce leads, so the prompt's first tokens differ from every earlier one.
    return f"[{_NONCE}-{next(_COUNTER)}] {prompt}"


def _stream(user: HttpUser, path: str, name: str, payload: dict, timeout: float, *, openai: bool) -> None:
    payload = {**payload, "stream": True}
    with user.client.post(
        path,
        json=payload,
        headers=_HEADERS,
        name=name,
        stream=True,
        timeout=min(timeout, _TIMEOUT_CAP),
        catch_response=True,
    ) as response:
        if response.status_code == 0:  # no HTTP answer at all: refused, reset, timed out
            response.failure(f"connect: {type(response.error).__name__}: {response.error}")
            return
        if response.status_code != 200:
            response.failure(f"HTTP {response.status_code}: {response.text[:120]}")
            return
        finished = False
        try:
            for raw in response.iter_lines(decode_unicode=True):
                if not raw or not raw.startswith("data:"):
                    continue  # blank separators, comments/pings, other fields
                data = raw[5:].strip()
                if data == "[DONE]":
                    finished = True
                    continue
                chunk = json.loads(data)
                if isinstance(chunk, dict) and "error" in chunk:
                    response.failure(f"stream error: {str(chunk['error'])[:120]}")
                    return
                if not openai and chunk.get("stop"):
                    finished = True
        except Exception as exc:
            response.failure(f"stream: {type(exc).__name__}: {str(exc)[:120]}")
            return
        if finished:
            response.success()
        else:
            response.failure("stream: ended before its final event")


class OpenAIUser(HttpUser):
    """vLLM (or llama-server's OpenAI API): the plan's short 3 / medium 2 / long 1 + /v1/models 1."""

    wait_time = between(1 * _WAIT_SCALE, 5 * _WAIT_SCALE)

    def _complete(self, name: str, prompt: str, max_tokens: int, timeout: float) -> None:
        payload = {"model": MODEL, "prompt": _unique(prompt), "max_tokens": max_tokens, "temperature": 0.7}
        _stream(self, "/v1/completions", name, payload, timeout, openai=True)

    @task(3)
    def short_completion(self) -> None:
        self._complete("short_completion", "Summarize: Machine learning is a subset of AI.", 50, 30)

    @task(2)
    def medium_completion(self) -> None:
        self._complete(
            "medium_completion", "Explain the key differences between supervised and unsupervised learning.", 150, 60
        )

    @task(1)
    def long_completion(self) -> None:
        self._complete(
            "long_completion", "Write a detailed technical blog post about containerization with Docker.", 300, 120
        )

    @task(1)
    def list_models(self) -> None:
        with self.client.get(
            "/v1/models", headers=_HEADERS, name="/v1/models", timeout=min(30, _TIMEOUT_CAP), catch_response=True
        ) as response:
            if response.status_code == 0:
                response.failure(f"connect: {type(response.error).__name__}: {response.error}")
            elif response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:120]}")
            else:
                response.success()


class LlamaCppUser(HttpUser):
    """llama.cpp native /completion: the plan's quick 4 / hypothesis 2."""

    wait_time = between(0.5 * _WAIT_SCALE, 2 * _WAIT_SCALE)

    def _complete(self, name: str, prompt: str, n_predict: int, temperature: float, timeout: float) -> None:
        payload = {"prompt": _unique(prompt), "n_predict": n_predict, "temperature": temperature, "cache_prompt": False}
        _stream(self, "/completion", name, payload, timeout, openai=False)

    @task(4)
    def quick_completion(self) -> None:
        self._complete("quick_completion", "List 3 ideas for: renewable energy", 30, 0.8, 15)

    @task(2)
    def hypothesis_generation(self) -> None:
        self._complete(
            "hypothesis_generation",
            "Given that climate change affects crop yields, propose a testable hypothesis:",
            100,
            0.7,
            30,
        )


_ENVIRONMENT: list = []


@events.init.add_listener
def _remember_environment(environment, **_kwargs) -> None:
    _ENVIRONMENT.append(environment)


@events.quit.add_listener
def _write_final_csv(**_kwargs) -> None:
    if not _ENVIRONMENT:
        return
    environment = _ENVIRONMENT[-1]
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix:
        return
    import csv

    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (("final_stats", writer.requests_csv), ("final_failures", writer.failures_csv)):
        temporary = f"{prefix}_{suffix}.csv.tmp"
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            write(csv.writer(handle))
        os.replace(temporary, f"{prefix}_{suffix}.csv")
