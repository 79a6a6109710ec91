"""Does a model fit where an endpoint runs it? Weights + KV cache at the service's context against the memory
the service may use (pure arithmetic, plus small readers for the budgets).

A budget that cannot be read (no NVML, a card answering NotSupported, no /proc/meminfo) is "unknown": the fit is
then reported unknown, never refused on a guess. Only a budget that is known and too small refuses.

The KV cache is the full-attention upper bound (every layer, f16, the whole ``--ctx-size``): llama-server
allocates the cache for the whole context at load, so that is what must fit. Compute buffers are a fixed
allowance (``COMPUTE_ALLOWANCE_BYTES``), small beside any real model.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB
COMPUTE_ALLOWANCE_BYTES = 64 * MiB
DEFAULT_CTX = 4096  # llama-server's default when a service sets no --ctx-size (it uses the model's, capped)

FITS = "fits"
DOES_NOT_FIT = "does not fit"
UNKNOWN = "unknown"

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": MiB, "g": GiB, "t": 1024 * GiB, "p": 1024 * 1024 * GiB}


def parse_memory(value: Any) -> int | None:
    """Compose's memory notation ("1g", "512m", "1.5GiB", 1073741824) in bytes; None when absent or unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return int(value)
    match = _MEMORY.match(str(value))
    if not match:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class ServiceShape:
    """What a compose service tells about how it runs its model."""

    ctx_size: int | None
    memory_limit: int | None
    model_path: str | None
    alias: str | None


def _flag(command: list[str], *names: str) -> str | None:
    for i, arg in enumerate(command):
        for name in names:
            if arg == name and i + 1 < len(command):
                return command[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def service_shape(service: Mapping[str, Any]) -> ServiceShape:
    """Read ``--ctx-size``, ``--model``, ``--alias`` and ``deploy.resources.limits.memory`` of one service."""
    command = service.get("command") or []
    command = command.split() if isinstance(command, str) else [str(c) for c in command]
    ctx = _flag(command, "--ctx-size", "-c")
    limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    memory = parse_memory(limits.get("memory")) or parse_memory(service.get("mem_limit"))
    return ServiceShape(
        ctx_size=int(ctx) if ctx and ctx.isdigit() else None,
        memory_limit=memory,
        model_path=_flag(command, "--model", "-m"),
        alias=_flag(command, "--alias", "-a"),
    )


@dataclass
class Budget:
    name: str  # "container limit", "host MemAvailable", "GPU free VRAM"
    bytes: int | None
    note: str = ""


@dataclass
class FitResult:
    status: str  # fits | does not fit | unknown
    weights_bytes: int
    kv_bytes: int | None
    overhead_bytes: int
    ctx_size: int
    budgets: list[Budget] = field(default_factory=list)
    message: str = ""

    @property
    def needed_bytes(self) -> int:
        return self.weights_bytes + (self.kv_bytes or 0) + self.overhead_bytes

    def as_dict(self) -> dict:
        data = asdict(self)
        data["needed_bytes"] = self.needed_bytes
        return data


def _gb(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def assess_fit(
    *,
    weights_bytes: int,
    kv_bytes_per_token: int | None,
    ctx_size: int | None,
    budgets: list[Budget],
    overhead_bytes: int = COMPUTE_ALLOWANCE_BYTES,
) -> FitResult:
    """``does not fit`` when any known budget is below the need; ``unknown`` when no budget is known."""
    ctx = ctx_size or DEFAULT_CTX
    kv = kv_bytes_per_token * ctx if kv_bytes_per_token else None
    result = FitResult(UNKNOWN, int(weights_bytes), kv, overhead_bytes, ctx, list(budgets))
    need = result.needed_bytes
    what = f"weights {_gb(weights_bytes)} + KV cache " + (
        f"{_gb(kv)} at {ctx} tokens" if kv is not None else "unknown (header lacks heads/lengths)"
    )
    what += f" + {_gb(overhead_bytes)} buffers = {_gb(need)}"
    short = [b for b in budgets if b.bytes is not None and b.bytes < need]
    known = [b for b in budgets if b.bytes is not None]
    if short:
        result.status = DOES_NOT_FIT
        result.message = f"{what}; exceeds " + ", ".join(f"{b.name} {_gb(b.bytes)}" for b in short)
    elif known:
        result.status = FITS
        result.message = f"{what}; within " + ", ".join(f"{b.name} {_gb(b.bytes)}" for b in known)
    else:
        unknown = "; ".join(f"{b.name}: {b.note or 'unknown'}" for b in budgets) or "no budget to compare with"
        result.message = f"{what}; fit unknown ({unknown})"
    return result


# -- budget readers ------------------------------------------------------------------


def host_mem_available(meminfo: Path = Path("/proc/meminfo")) -> Budget:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return Budget("host MemAvailable", int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError) as exc:
        return Budget("host MemAvailable", None, f"cannot read {meminfo}: {exc}")
    return Budget("host MemAvailable", None, f"{meminfo} has no MemAvailable line")


def gpu_free_vram(nvml: Any = None, index: int = 0) -> Budget:
    """Free VRAM of GPU ``index`` through NVML; unknown (never an error) without NVML, a device, or support."""
    name = "GPU free VRAM"
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return Budget(name, None, "unknown: no NVML binding installed")
    from idp_ops.thermal.telemetry import is_not_supported

    error = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except error as exc:
        return Budget(name, None, f"unknown: NVML did not start ({exc})")
    try:
        if nvml.nvmlDeviceGetCount() <= index:
            return Budget(name, None, f"unknown: no GPU {index}")
        info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index))
        return Budget(name, int(info.free))
    except error as exc:
        why = "the card answers NotSupported" if is_not_supported(nvml, exc) else str(exc)
        return Budget(name, None, f"unknown: {why}")
    finally:
        with contextlib.suppress(error):
            nvml.nvmlShutdown()
