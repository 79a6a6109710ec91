"""One typed settings model for the whole box.

Sources, lowest to highest: defaults < YAML file < ``IDP_*`` environment variables.
The YAML file is ``$IDP_CONFIG`` if set, else ``./idp-ops.yaml`` if present.
Nested fields take ``__`` in environment names (``IDP_THERMAL__WARN_C=80``).

The embedded default is the CPU profile: llama-server serving the bundled Gemma
3 270M twice, under project-local directories (``./.idp-data``), so a fresh
clone runs without a GPU or any configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from idp_ops.errors import IdpOpsError

if TYPE_CHECKING:
    from idp_ops.stack.engine import DockerEngine

ProfileName = Literal["cpu", "gpu", "expert"]
Protocol = Literal["openai", "llamacpp"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_FILE = "idp-ops.yaml"
DEMO_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
DEMO_MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


class SettingsError(IdpOpsError, ValueError):
    """Settings that cannot be loaded; the message names every bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AcceptanceCriteria(_Strict):
    """What an endpoint must do every night. ``None`` means 'not judged'."""

    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    decode_tok_s_min: float | None = None
    success_rate_min: float = Field(0.95, ge=0, le=1)
    concurrency: int = Field(32, ge=1)
    gpu_utilization_min_pct: float | None = None
    # Goodput: a request counts when its TTFT <= slo_ttft_ms and its own ITL p95 <= slo_itl_ms
    # (None: that SLO is not applied; both None: goodput is not judged). Judged at every sweep
    # level up to `concurrency`: the share that met both must be >= goodput_min.
    slo_ttft_ms: float | None = Field(None, gt=0)
    slo_itl_ms: float | None = Field(None, gt=0)
    goodput_min: float = Field(0.9, ge=0, le=1)
    # Prefix cache works when the warm TTFT p50 is at most this fraction of the cold p50.
    prefix_cache_ttft_ratio_max: float = Field(0.5, gt=0, le=1)


class RouterModel(_Strict):
    """One GGUF a router endpoint serves, with its own context and threads (None: the router's defaults)."""

    # Path relative to models_dir.
    file: str = Field(min_length=1)
    # The id the OpenAI `model` field selects it by; None: the file name without .gguf.
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    ctx_size: int | None = Field(None, ge=64)
    threads: int | None = Field(None, ge=1)


class RouterOptions(_Strict):
    """llama-server router mode: many GGUFs behind one endpoint, loaded on demand (idp_ops/models/router.py).

    Served: every GGUF under ``models_subdir`` (of models_dir) whose relative path matches ``include``,
    plus the files named in ``models`` (which also set a file's name, context and threads). idp-ops writes
    the router's preset file from their headers on every deploy; ``models_max`` is derived from the
    memory budget unless given."""

    models_subdir: str = "."
    include: list[str] = ["*.gguf"]
    models: list[RouterModel] = []
    ctx_size: int = Field(4096, ge=64)
    threads: int | None = Field(None, ge=1)
    parallel: int = Field(4, ge=1)
    # The container's memory limit; the models share memory_share of it (the rest: the router itself).
    memory_limit_gb: float = Field(2.0, gt=0)
    memory_share: float = Field(0.9, gt=0, le=1)
    # Memory to fit models into when it is not the container's RAM (a GPU router: its VRAM share).
    budget_gb: float | None = Field(None, gt=0)
    # Per loaded model beyond weights + KV cache: the process, compute buffers.
    overhead_mb: float = Field(128.0, ge=0)
    models_max: int | None = Field(None, ge=1)
    cpus: float = Field(1.0, gt=0)
    # Validation benchmarks these served models (None: all of them).
    benchmark_models: list[str] | None = None

    @field_validator("models_subdir")
    @classmethod
    def _inside(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError(f"must be a path inside models_dir, got {value!r}")
        return value


class Endpoint(_Strict):
    name: str = Field(min_length=1)
    protocol: Protocol
    url: str
    compose_service: str | None = None
    # Name of the key file in the secrets dir; None means the endpoint has no key.
    key_name: str | None = None
    model: str = "default"
    gpu: bool = False
    acceptance: AcceptanceCriteria = AcceptanceCriteria()
    # For the physics ceiling: the file it serves (relative to models_dir), or the
    # bytes of weights read per token when no file is at hand; and, on a CPU, the
    # threads it decodes with (None: all cores).
    model_file: str | None = None
    weights_gb: float | None = Field(None, gt=0)
    cpu_threads: int | None = Field(None, ge=1)
    # Router mode: `model` is the served model probes use; the others are chosen by name.
    router: RouterOptions | None = None

    @model_validator(mode="after")
    def _router_speaks_openai(self) -> Endpoint:
        # The router picks a model by the request's `model` field: /completion (protocol llamacpp) sends none.
        if self.router is not None and self.protocol != "openai":
            raise ValueError("a router endpoint needs protocol 'openai' (the request's model field picks the model)")
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"must be an http(s) URL with a host, got {value!r}")
        return value.rstrip("/")

    @property
    def port(self) -> int:
        parsed = urlparse(self.url)
        return parsed.port or (443 if parsed.scheme == "https" else 80)


class ThermalThresholds(_Strict):
    warn_c: float = 85.0
    contain_c: float = 90.0
    # Containment acts at min(contain_c, driver slowdown - margin): a card whose
    # slowdown point is below contain_c must be stopped before it throttles.
    slowdown_margin_c: float = Field(3.0, ge=0)
    consecutive_samples: int = Field(2, ge=1)
    # A line is crossed again only after falling this far below it (no flapping).
    hysteresis_c: float = Field(3.0, ge=0)
    # An episode ends once the temperature has stayed below warn_c - hysteresis this long.
    clear_after_s: float = Field(300.0, ge=0)
    sensor_interval_s: int = Field(30, ge=5)
    guard_interval_s: float = Field(5.0, gt=0)
    # JSON POST of each alert (ntfy/Slack-style); None: the alerts log only.
    webhook_url: str | None = None
    webhook_timeout_s: float = Field(5.0, gt=0)
    # No new sample for this many sensor intervals: the daemon or sensor is dead.
    stale_after_intervals: int = Field(4, ge=2)
    # Replay a recorded trace instead of reading NVML (demos, tests); rows fed per tick.
    replay_csv: Path | None = None
    replay_rows_per_tick: int = Field(1, ge=1)
    # A containment run retries a failed stop (dockerd restarting, compose erroring) this
    # long before it fails; the sensor then launches a new attempt.
    contain_retry_s: float = Field(120.0, ge=0)
    # NVML's energy counter costs ~4 ms a read (H200) against ~20 us for the other fields: read it
    # at most this often, integrating power in between (0: every sample).
    energy_read_interval_s: float = Field(60.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> ThermalThresholds:
        if self.warn_c >= self.contain_c:
            raise ValueError(f"warn_c ({self.warn_c}) must be below contain_c ({self.contain_c})")
        return self


class ValidationSettings(_Strict):
    """How the nightly validation measures (the criteria themselves live on each endpoint)."""

    warmups: int = Field(2, ge=0)
    ttft_requests: int = Field(20, ge=1)
    ttft_max_tokens: int = Field(16, ge=1)
    decode_tokens: int = Field(200, ge=2)
    decode_requests: int = Field(3, ge=1)
    sweep: list[int] = [1, 8, 32]
    sweep_tokens: int = Field(64, ge=2)
    sweep_rounds: int = Field(2, ge=1)
    poisson_rate: float | None = Field(None, gt=0)
    request_timeout_s: float = Field(120.0, gt=0)
    ready_timeout_s: float = Field(60.0, gt=0)
    load_users: int = Field(10, ge=1)
    load_spawn_rate: float = Field(2.0, gt=0)
    load_run_time_s: float = Field(600.0, gt=0)
    # Multiplies the plan's think times (1-5 s, 0.5-2 s) between a user's requests.
    load_wait_scale: float = Field(1.0, ge=0)
    # GPU utilization is sampled through NVML while the benchmark runs.
    gpu_sample_interval_s: float = Field(1.0, gt=0)
    # The no-OOM watch looks at every endpoint's container this often during the load test.
    oom_interval_s: float = Field(5.0, gt=0)
    # Sweep levels above client_pool_threshold streams fan out over worker processes, so the
    # client's own CPU never paces the streams (0 workers: one process per 64 streams, at most
    # the CPU count; see idp_ops/validation/bench_pool.py).
    client_pool_threshold: int = Field(128, ge=1)
    client_pool_workers: int = Field(0, ge=0)
    # Sweep arrivals: closed (all released, at most c in flight), constant or poisson at
    # arrival_rate req/s (still capped at c in flight). poisson_rate alone means poisson.
    arrival: Literal["closed", "constant", "poisson"] = "closed"
    arrival_rate: float | None = Field(None, gt=0)
    # Context depth: prompts of exactly these many tokens (capped by the served context),
    # each measured depth_requests times with depth_max_tokens of output.
    depths: list[int] = [128, 1024, 4096, 16384]
    depth_requests: int = Field(1, ge=1)
    depth_max_tokens: int = Field(32, ge=2)
    # Prefix cache: prefix_rounds shared system prompts of prefix_tokens tokens; each round sends
    # one cold request (a new prefix) and prefix_warm_requests warm ones (same prefix, new question).
    prefix_tokens: int = Field(1536, ge=16)
    prefix_rounds: int = Field(3, ge=1)
    prefix_warm_requests: int = Field(4, ge=1)
    prefix_max_tokens: int = Field(8, ge=1)
    # The server's /metrics is scraped this often while the workloads run (0: not scraped).
    metrics_interval_s: float = Field(1.0, ge=0)

    @field_validator("depths")
    @classmethod
    def _positive_depths(cls, value: list[int]) -> list[int]:
        if any(d < 8 for d in value):
            raise ValueError(f"depths must be >= 8 tokens, got {value}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _arrival_has_rate(self) -> ValidationSettings:
        if self.arrival != "closed" and not (self.arrival_rate or self.poisson_rate):
            raise ValueError(f"arrival {self.arrival!r} needs arrival_rate (requests/s)")
        return self


class BackupSettings(_Strict):
    # The backup volume; default: backups_dir. Refused unless it is a mount point
    # or holds the marker file written when the volume was set up.
    destination: Path | None = None
    marker_file: str = ".idp-backup-volume"
    # Retention as restic's forget: keep the last N, plus the newest snapshot of each of the
    # last W weeks and M months that have one (a mistaken delete survives about a year).
    keep_snapshots: int = Field(4, ge=1)
    keep_weekly: int = Field(8, ge=0)
    keep_monthly: int = Field(12, ge=0)
    # A run whose store lost more than this share of the latest snapshot's files or bytes
    # (or is empty) is refused unless allowed for that run: an unmounted disk looks like that.
    max_shrink_files_fraction: float = Field(0.1, ge=0, le=1)
    max_shrink_bytes_fraction: float = Field(0.1, ge=0, le=1)
    # Also snapshot the settings file, secrets, history.duckdb and the Dagster instance.
    include_state: bool = True
    # The ops platform (compose/ops/) whose Postgres holds the Dagster instance: its compose project. State then
    # includes a pg_dump of it, taken in its postgres container. None: $IDP_OPS_POSTGRES_PROJECT (the central
    # platform's containers have it, another box's do not); neither: nothing to dump on this box.
    platform_project: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    # Each run re-hashes 1/N of the store on both sides: all of it every N runs.
    scrub_runs: int = Field(8, ge=1)
    excludes: list[str] = ["*.tmp", "cache/"]
    # Parallel hashing threads; 0 = one per core.
    hash_workers: int = Field(0, ge=0)


class DeadmanWindow(_Strict):
    """A job that must succeed at least once every ``window_h`` hours (its schedule's period), plus grace."""

    job: str = Field(min_length=1)
    window_h: float = Field(gt=0)
    grace_h: float = Field(0.0, ge=0)


class AlertSettings(_Strict):
    """Alerts for what runs unattended: failed runs, overdue jobs, a dead dagster-daemon.

    They go to the same alerts log and webhook as the thermal alerts (``thermal.webhook_url``)."""

    # Dead-man windows: each job's schedule period plus the grace a slow run may take.
    deadman: list[DeadmanWindow] = [
        DeadmanWindow(job="nightly_validation_job", window_h=24, grace_h=2),
        DeadmanWindow(job="weekly_backup_job", window_h=7 * 24, grace_h=6),
        # Every 15 minutes; the thermal_log asset's own freshness fails after 2 h.
        DeadmanWindow(job="thermal_ingest_job", window_h=0.25, grace_h=0.75),
    ]
    # How often deadman_sensor evaluates (read when the code location loads).
    deadman_interval_s: int = Field(300, ge=30)
    # The guard's view of Dagster: the instance directory (None: $DAGSTER_HOME), how often it
    # is read, and how old the daemon's newest scheduler/sensor heartbeat may be (the daemon
    # beats every 30 s) before "scheduler_down".
    dagster_home: Path | None = None
    guard_check_interval_s: float = Field(30.0, gt=0)
    daemon_stale_after_s: float = Field(120.0, ge=35)


class ModelDownload(_Strict):
    """A model file (or folder) the box should have: from a URL or a Hugging Face repo, checked by hash.

    Forms: ``url`` + ``sha256``; ``hf_repo`` + ``hf_file`` (``sha256`` optional: the Hub's LFS
    metadata supplies it); ``hf_repo`` + ``include`` (fnmatch patterns, e.g. a vLLM safetensors
    folder with its config and tokenizer) into the directory ``target``. ``hf_revision`` (a branch,
    tag or commit) is resolved to a commit before any byte is fetched, and that commit is recorded.
    """

    name: str
    url: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    hf_revision: str = "main"
    # Repo paths to fetch (fnmatch, like huggingface_hub's allow_patterns); target is then a directory.
    include: list[str] = []
    # Required for url; for hf_file it wins over the Hub's LFS sha256.
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    # For include: repo path -> sha256 that wins over the Hub's metadata for that file.
    file_sha256: dict[str, str] = {}
    # Path relative to models_dir: the file, or for include the directory the repo's files go in.
    target: str

    @model_validator(mode="after")
    def _one_source(self) -> ModelDownload:
        if bool(self.url) == bool(self.hf_repo):
            raise ValueError("give either url, or hf_repo with hf_file or include")
        if self.url and not self.sha256:
            raise ValueError("a url download needs its sha256")
        if self.url and (self.hf_file or self.include or self.file_sha256):
            raise ValueError("hf_file, include and file_sha256 go with hf_repo, not url")
        if self.hf_repo and bool(self.hf_file) == bool(self.include):
            raise ValueError("with hf_repo give either hf_file (one file) or include (patterns for several)")
        if self.include and self.sha256:
            raise ValueError("sha256 names one file: with include, give file_sha256 {repo path: sha256}")
        if self.hf_file and self.file_sha256:
            raise ValueError("with hf_file, give sha256 rather than file_sha256")
        hexdigits = set("0123456789abcdef")
        bad = [p for p, digest in self.file_sha256.items() if len(digest) != 64 or set(digest) - hexdigits]
        if bad:
            raise ValueError(f"file_sha256 values must be 64 lower-case hex digits; not so for {bad}")
        if Path(self.target).is_absolute() or ".." in Path(self.target).parts:
            raise ValueError(f"target must be a path inside models_dir, got {self.target!r}")
        return self

    @property
    def source_url(self) -> str:
        if self.url:
            return self.url
        if self.hf_file:
            return f"https://huggingface.co/{self.hf_repo}/resolve/{self.hf_revision}/{self.hf_file}"
        return f"https://huggingface.co/{self.hf_repo}/tree/{self.hf_revision}"


class RoiSettings(_Strict):
    """Inputs of the ROI report; defaults are the plan's own figures."""

    hardware_usd: dict[str, float] = {
        "RTX 5070 Ti 16GB": 800.0,
        "Ryzen 9 9900X + X870": 800.0,
        "128GB DDR5-6400": 400.0,
        "Samsung 990 Pro 2TB": 200.0,
        "Case/PSU/Cooling": 300.0,
    }
    amortisation_years: float = Field(3.0, gt=0)
    electricity_usd_per_kwh: float = Field(0.12, ge=0)
    # Used where history has no measured energy: the plan's duty cycle.
    peak_watts: float = Field(470.0, ge=0)
    idle_watts: float = Field(100.0, ge=0)
    peak_hours_per_day: float = Field(8.0, ge=0, le=24)
    days_per_month: float = Field(30.0, gt=0)
    cloud_usd_per_hour: dict[str, float] = {
        "RunPod RTX 4090": 0.39,
        "Lambda Labs RTX 4090": 0.37,
        "AWS g5.xlarge (A10G)": 1.10,
    }
    cloud_hours_per_month: float = Field(800.0, ge=0)


class HardwareProfile(_Strict):
    name: str
    gpu_name: str | None = None
    gpu_bandwidth_gbs: float | None = Field(None, gt=0)
    gpu_vram_gb: float | None = Field(None, gt=0)
    cpu_name: str | None = None
    cpu_bandwidth_gbs: float | None = Field(None, gt=0)
    efficiency: float = Field(0.8, gt=0, le=1)


HARDWARE_PROFILES: dict[str, HardwareProfile] = {
    "rtx5070ti-ryzen9900x": HardwareProfile(
        name="rtx5070ti-ryzen9900x",
        gpu_name="RTX 5070 Ti",
        gpu_bandwidth_gbs=896.0,
        gpu_vram_gb=16.0,
        cpu_name="Ryzen 9 9900X, DDR5-6400 dual channel",
        cpu_bandwidth_gbs=102.4,
    ),
    "gtx1650": HardwareProfile(name="gtx1650", gpu_name="GTX 1650", gpu_bandwidth_gbs=128.0, gpu_vram_gb=4.0),
    # The CPU profile's host is whatever runs it; its bandwidth is measured, not assumed.
    "cpu-only": HardwareProfile(name="cpu-only"),
}


# The CPU profile's own criteria, from what Gemma 3 270M does on one CPU thread:
# its 247 MB of weights against a measured ~20-32 GB/s single-thread read give a
# ceiling of ~80-130 tok/s; llama-server decodes 40-45 tok/s on an idle 2-core VM
# and ~15 when the box is busy. Prompt processing on one thread makes TTFT ~110-130 ms.
# The thresholds leave room for a busy box and still fail a broken or throttled one.
# Goodput: with 4 slots, 8 concurrent streams queue half of them behind a whole answer (TTFT p50
# ~4.3 s, ITL p95 ~67 ms measured idle); the SLOs leave room for a busy box.
CPU_PROFILE_ACCEPTANCE = AcceptanceCriteria(
    ttft_p50_ms=500,
    ttft_p95_ms=1500,
    decode_tok_s_min=10,
    success_rate_min=0.95,
    concurrency=8,
    slo_ttft_ms=15_000,
    slo_itl_ms=250,
    goodput_min=0.9,
)


def _default_endpoints(profile: ProfileName) -> list[Endpoint]:
    if profile == "cpu":
        return [
            Endpoint(
                name="openai-standin",
                protocol="openai",
                url="http://127.0.0.1:18000",
                compose_service="openai-standin",
                key_name="openai_api_key",
                model="gemma-3-270m",
                # Plays the GPU server's role: containment stops it.
                gpu=True,
                model_file=DEMO_MODEL_FILE,
                cpu_threads=1,
                acceptance=CPU_PROFILE_ACCEPTANCE,
            ),
            Endpoint(
                name="llamacpp-cpu",
                protocol="llamacpp",
                url="http://127.0.0.1:18001",
                compose_service="llamacpp-cpu",
                key_name="llamacpp_api_key",
                model="gemma-3-270m",
                model_file=DEMO_MODEL_FILE,
                cpu_threads=1,
                acceptance=CPU_PROFILE_ACCEPTANCE,
            ),
        ]
    production = [
        Endpoint(
            name="vllm-gpu",
            protocol="openai",
            url="http://127.0.0.1:8000",
            compose_service="vllm-gpu",
            key_name="vllm_api_key",
            model="llama-3.1-8b",
            gpu=True,
            weights_gb=8.0,
            # The plan's corrected table; single stream ceiling is ~89.6 tok/s on a 5070 Ti.
            # Goodput SLOs for chat up to 32 users: the answer starts within 1 s and streams at
            # >= 20 tok/s (ITL p95 <= 50 ms), well above reading speed; 90 % of requests must meet both.
            acceptance=AcceptanceCriteria(
                ttft_p50_ms=100,
                ttft_p95_ms=200,
                decode_tok_s_min=60,
                gpu_utilization_min_pct=75,
                slo_ttft_ms=1000,
                slo_itl_ms=50,
            ),
        ),
        Endpoint(
            name="llamacpp-cpu",
            protocol="llamacpp",
            url="http://127.0.0.1:8001",
            compose_service="llamacpp-cpu",
            key_name="llamacpp_api_key",
            model="llama-3.2-3b",
            weights_gb=2.0,
            cpu_threads=10,
            # > 100 tok/s for one stream is above the ~40 tok/s DDR5 ceiling: not a criterion.
            # No goodput SLOs: a CPU server serves one user at a time; 32 streams would queue by design.
            acceptance=AcceptanceCriteria(ttft_p50_ms=50),
        ),
    ]
    if profile == "expert":
        production.append(
            Endpoint(
                name="llamacpp-70b-hybrid",
                protocol="llamacpp",
                url="http://127.0.0.1:8002",
                compose_service="llamacpp-70b-hybrid",
                key_name="llamacpp_70b_api_key",
                model="llama-3.3-70b",
                gpu=True,
                model_file="llama-3.3-70b-q4/llama-3.3-70b-Q4_K_M.gguf",
            )
        )
    return production


def _default_service_id() -> int:
    # Services run as the operator's own uid, so 0600 key files stay readable
    # by them and nobody else; as root we fall back to nobody (65534) and the
    # key files are handed to that uid.
    uid = os.getuid()
    return uid if uid != 0 else 65534


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IDP_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    profile: ProfileName = "cpu"

    # Paths. Relative paths resolve against the working directory.
    home: Path = Path(".idp-data")
    models_dir: Path | None = None
    backups_dir: Path | None = None
    data_dir: Path | None = None
    secrets_dir: Path | None = None
    logs_dir: Path | None = None

    # The stack.
    compose_file: Path | None = None
    compose_project: str | None = None
    llama_server_image: str = "ghcr.io/ggml-org/llama.cpp:server"
    llama_server_cuda_image: str = "ghcr.io/ggml-org/llama.cpp:server-cuda"
    vllm_image: str = "vllm/vllm-openai:v0.7.1"
    service_uid: int = Field(default_factory=_default_service_id, ge=0)
    service_gid: int = Field(default_factory=_default_service_id, ge=0)
    cpu_model_file: str = DEMO_MODEL_FILE
    timezone: str = "UTC"
    deploy_timeout_s: int = Field(300, ge=10)
    stop_timeout_s: int = Field(10, ge=0)
    # The box's Docker engine (idp_ops/stack/engine.py): unix:///PATH, ssh://USER@HOST or tcp://HOST:2376
    # with TLS. It wins over an inherited DOCKER_HOST; None: that, else docker's default.
    docker_host: str | None = None
    docker_tls_verify: bool = False
    docker_cert_path: Path | None = None

    endpoints: list[Endpoint] | None = None
    # Services containment stops; default: those of endpoints with gpu=True.
    gpu_services: list[str] | None = None

    thermal: ThermalThresholds = ThermalThresholds()
    validation: ValidationSettings = ValidationSettings()
    backup: BackupSettings = BackupSettings()
    alerts: AlertSettings = AlertSettings()
    roi: RoiSettings = RoiSettings()
    model_downloads: list[ModelDownload] = []
    hardware_profile: str | HardwareProfile | None = None

    @field_validator("hardware_profile")
    @classmethod
    def _known_profile(cls, value: str | HardwareProfile | None) -> str | HardwareProfile | None:
        if isinstance(value, str) and value not in HARDWARE_PROFILES:
            raise ValueError(f"unknown profile {value!r}; known: {sorted(HARDWARE_PROFILES)} (or give a mapping)")
        return value

    @field_validator("docker_host")
    @classmethod
    def _engine_host(cls, value: str | None) -> str | None:
        from idp_ops.stack.engine import check_docker_host

        return check_docker_host(value)

    @field_validator("docker_tls_verify", "docker_cert_path")
    @classmethod
    def _engine_tls(cls, value: Any, info: ValidationInfo) -> Any:
        from idp_ops.stack.engine import check_tls

        check_tls(info.data.get("docker_host"), bool(value), field=info.field_name)
        return value.expanduser().resolve() if isinstance(value, Path) else value

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, value: list[Endpoint] | None) -> list[Endpoint] | None:
        names = [e.name for e in value or []]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate endpoint names {duplicates}")
        return value

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        home = self.home.expanduser().resolve()
        self.home = home
        for name, sub in (
            ("models_dir", "models"),
            ("backups_dir", "backups"),
            ("data_dir", "data"),
            ("secrets_dir", "secrets"),
            ("logs_dir", "logs"),
        ):
            value = getattr(self, name)
            setattr(self, name, (value.expanduser() if value else home / sub).resolve())
        self.backup.destination = (self.backup.destination or self.backups_dir).expanduser().resolve()
        if self.compose_file is None:
            filename = "docker-compose.cpu.yml" if self.profile == "cpu" else "docker-compose.yml"
            self.compose_file = REPO_ROOT / "compose" / filename
        self.compose_file = self.compose_file.expanduser().resolve()
        if self.compose_project is None:
            self.compose_project = "idp-ops-cpu" if self.profile == "cpu" else "idp-ops"
        if self.endpoints is None:
            self.endpoints = _default_endpoints(self.profile)
        # A model switch (models/switch.py) points its endpoint at the model it chose.
        from idp_ops.models.selection import apply_selection

        apply_selection(self)
        if self.gpu_services is None:
            self.gpu_services = [e.compose_service for e in self.endpoints if e.gpu and e.compose_service]
        if self.hardware_profile is None:
            self.hardware_profile = "cpu-only" if self.profile == "cpu" else "rtx5070ti-ryzen9900x"
        if isinstance(self.hardware_profile, str):
            self.hardware_profile = HARDWARE_PROFILES[self.hardware_profile]
        return self

    # -- derived -------------------------------------------------------------
    @property
    def docker_engine(self) -> DockerEngine:
        """The engine every docker/compose call of this location drives."""
        from idp_ops.stack.engine import DockerEngine

        return DockerEngine(self.docker_host, self.docker_tls_verify, self.docker_cert_path)

    @property
    def hardware(self) -> HardwareProfile:
        assert isinstance(self.hardware_profile, HardwareProfile)
        return self.hardware_profile

    @property
    def compose_profiles(self) -> list[str]:
        profiles = ["expert"] if self.profile == "expert" else []
        # The router service only starts when an endpoint is configured as one.
        if any(e.router is not None for e in self.endpoints or []):
            profiles.append("router")
        return profiles

    def endpoint(self, name: str) -> Endpoint:
        for endpoint in self.endpoints or []:
            if endpoint.name == name:
                return endpoint
        raise KeyError(f"no endpoint named {name!r}; configured: {[e.name for e in self.endpoints or []]}")

    def key_file(self, endpoint: Endpoint) -> Path | None:
        return self.secrets_dir / endpoint.key_name if endpoint.key_name else None

    @property
    def key_names(self) -> dict[str, list[str]]:
        """Key name -> compose services that read it (a rotation restarts them)."""
        keys: dict[str, list[str]] = {}
        for endpoint in self.endpoints or []:
            if endpoint.key_name:
                services = keys.setdefault(endpoint.key_name, [])
                if endpoint.compose_service and endpoint.compose_service not in services:
                    services.append(endpoint.compose_service)
        return keys

    @property
    def containment_latch_file(self) -> Path:
        return self.data_dir / "containment.json"

    @property
    def history_file(self) -> Path:
        return self.data_dir / "history.duckdb"

    @property
    def thermal_spool_dir(self) -> Path:
        return self.data_dir / "thermal-spool"

    @property
    def alerts_log(self) -> Path:
        return self.logs_dir / "alerts.jsonl"

    def compose_environment(self) -> dict[str, str]:
        """Values the compose files interpolate. Never a key: keys travel as secret files."""
        env = {
            "IDP_MODELS_DIR": str(self.models_dir),
            "IDP_SECRETS_DIR": str(self.secrets_dir),
            "IDP_LLAMA_SERVER_IMAGE": self.llama_server_image,
            "IDP_LLAMA_SERVER_CUDA_IMAGE": self.llama_server_cuda_image,
            "IDP_VLLM_IMAGE": self.vllm_image,
            "IDP_SERVICE_UID": str(self.service_uid),
            "IDP_SERVICE_GID": str(self.service_gid),
            "IDP_CPU_MODEL_FILE": self.cpu_model_file,
            "IDP_TZ": self.timezone,
        }
        for endpoint in self.endpoints or []:
            variable = _PORT_VARIABLES.get(endpoint.compose_service or "")
            if variable:
                env[variable] = str(endpoint.port)
            model_variable = _MODEL_NAME_VARIABLES.get(endpoint.compose_service or "")
            if model_variable:
                env[model_variable] = endpoint.model
        # The router service's port, memory limit, models_max and presets dir (idp_ops/models/router.py).
        from idp_ops.models.router import router_compose_environment

        env.update(router_compose_environment(self))
        from idp_ops.models.selection import selection_environment

        env.update(selection_environment(self))  # the switched models' paths (models/selection.py)
        return env

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _config_file_path()
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)


# Which compose variable publishes which service's port / names its model.
_PORT_VARIABLES = {
    "openai-standin": "IDP_OPENAI_PORT",
    "llamacpp-cpu": "IDP_LLAMACPP_PORT",
    "vllm-gpu": "IDP_VLLM_PORT",
    "llamacpp-70b-hybrid": "IDP_HYBRID_PORT",
}
_MODEL_NAME_VARIABLES = {
    "openai-standin": "IDP_OPENAI_MODEL_NAME",
    "llamacpp-cpu": "IDP_LLAMACPP_MODEL_NAME",
}

# Set by load_settings for the duration of one load (pydantic-settings builds
# its sources inside the constructor, so the path travels out of band).
_config_file_override: list[Path | None] = []


def _config_file_path() -> Path | None:
    if _config_file_override and _config_file_override[-1] is not None:
        return _config_file_override[-1]
    explicit = os.environ.get("IDP_CONFIG")
    if explicit:
        return Path(explicit)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings, turning every validation problem into one readable SettingsError."""
    path = Path(config_file) if config_file else _config_file_path()
    if path is not None:
        _check_yaml_file(path)
    _config_file_override.append(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, path)) from None
    except ValueError as exc:  # a malformed env value pydantic-settings could not decode
        raise SettingsError(f"invalid settings: {exc}") from None
    finally:
        _config_file_override.pop()


def _check_yaml_file(path: Path) -> None:
    import yaml

    if not path.is_file():
        raise SettingsError(f"settings file {path} does not exist (set IDP_CONFIG or create it)")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SettingsError(f"settings file {path} is not valid YAML: {exc}") from None
    if content is not None and not isinstance(content, dict):
        raise SettingsError(f"settings file {path} must hold a mapping of settings, not {type(content).__name__}")


def _describe(exc: ValidationError, path: Path | None) -> str:
    lines = []
    for error in exc.errors():
        loc = error["loc"]
        field = ".".join(str(part) for part in loc) or "settings"
        given = error.get("input")
        shown = ""
        if error["type"] != "value_error" and not isinstance(given, (dict, list)) and given is not None:
            shown = f" (got {given!r})"
        where = f"YAML key {field!r}"
        if all(isinstance(part, str) for part in loc):  # list items have no env name of their own
            where += " or env IDP_" + "__".join(str(part).upper() for part in loc)
        lines.append(f"  {field}: {error['msg']}{shown}  [{where}]")
    source = f" (YAML file: {path})" if path else ""
    return f"invalid settings{source}:\n" + "\n".join(lines)
