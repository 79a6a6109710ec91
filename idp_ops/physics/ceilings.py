"""The single-stream decode ceiling of a configured endpoint, from its model and its hardware.

Bandwidth: a measurement of this host (the memory_bandwidth asset) replaces the
datasheet figure. A measured streaming-read bandwidth is already what the memory
delivers, so it is used as is (efficiency 1.0: a true upper bound that no
measurement may beat); a datasheet figure is scaled by the profile's efficiency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from idp_ops.physics.formulas import GB, single_stream_ceiling, weight_bytes_per_token
from idp_ops.settings import Endpoint, HardwareProfile


@dataclass(frozen=True)
class MeasuredBandwidth:
    cpu_read_gbs_one_thread: float | None = None
    cpu_read_gbs_all_threads: float | None = None
    gpu_gbs: float | None = None


@dataclass(frozen=True)
class EndpointCeiling:
    endpoint: str
    tok_s: float
    weight_bytes: float
    bandwidth_gbs: float
    bandwidth_source: str  # "measured" | "datasheet"
    efficiency: float
    device: str  # "gpu" | "cpu"

    def as_dict(self) -> dict:
        return asdict(self)


def model_weight_bytes(endpoint: Endpoint, models_dir: Path) -> float | None:
    if endpoint.model_file:
        path = models_dir / endpoint.model_file
        if path.suffix == ".gguf" and path.is_file():
            from idp_ops.models.gguf_meta import read_gguf

            model = read_gguf(path)
            if not model.finding and model.tensor_bytes:
                return weight_bytes_per_token(model.tensor_bytes, model.token_embd_bytes, model.tied_embeddings)
    if endpoint.weights_gb:
        return endpoint.weights_gb * GB
    return None


def endpoint_ceiling(
    endpoint: Endpoint,
    *,
    models_dir: Path,
    hardware: HardwareProfile,
    measured: MeasuredBandwidth | None = None,
    device: str | None = None,
) -> EndpointCeiling | None:
    """None when the model's size or the device's bandwidth is unknown (no ceiling is better than a guess)."""
    weight_bytes = model_weight_bytes(endpoint, models_dir)
    if weight_bytes is None:
        return None
    measured = measured or MeasuredBandwidth()
    # The CPU profile's stand-in plays the GPU role but decodes on the CPU.
    device = device or ("cpu" if endpoint.cpu_threads else ("gpu" if endpoint.gpu else "cpu"))
    if device == "gpu":
        value, source = (
            (measured.gpu_gbs, "measured") if measured.gpu_gbs else (hardware.gpu_bandwidth_gbs, "datasheet")
        )
    else:
        one = endpoint.cpu_threads == 1
        read = measured.cpu_read_gbs_one_thread if one else measured.cpu_read_gbs_all_threads
        value, source = (read, "measured") if read else (hardware.cpu_bandwidth_gbs, "datasheet")
    if not value:
        return None
    efficiency = 1.0 if source == "measured" else hardware.efficiency
    return EndpointCeiling(
        endpoint=endpoint.name,
        tok_s=single_stream_ceiling(weight_bytes, value * GB, efficiency=efficiency),
        weight_bytes=weight_bytes,
        bandwidth_gbs=value,
        bandwidth_source=source,
        efficiency=efficiency,
        device=device,
    )
