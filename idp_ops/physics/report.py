"""Ceilings for the box as configured: every endpoint, every inventoried model, the plan's claims.

Builds on ``core/physics.py`` (formulas) and ``core/ceilings.py`` (which bandwidth
an endpoint gets: measured where this host was measured, else the datasheet x
efficiency). Two things are added here:

- models that do not fit the GPU's memory: a GPU endpoint serving one runs as a
  llama.cpp hybrid, so its ceiling is the hybrid one with as many whole layers on
  the GPU as the VRAM budget allows (the plain GPU figure would be far too high:
  43 GB at GPU bandwidth is ~17 tok/s, the hybrid ~2.5 tok/s);
- the plan's claims, checked against the plan's own hardware (the datasheet
  profile ``rtx5070ti-ryzen9900x``), whatever this box is.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from idp_ops.physics.ceilings import EndpointCeiling, MeasuredBandwidth, endpoint_ceiling
from idp_ops.physics.formulas import (
    GB,
    batched_ceiling,
    best_gpu_layers,
    check_claim,
    criterion_status,
    hybrid_ceiling,
    single_stream_ceiling,
    weight_bytes_per_token,
)
from idp_ops.settings import HARDWARE_PROFILES, Endpoint, HardwareProfile

# VRAM kept free for the KV cache, CUDA context and activations when placing layers.
VRAM_RESERVE_FRACTION = 0.15
BATCH_SIZES = (1, 8, 32)
PLAN_PROFILE = "rtx5070ti-ryzen9900x"
# The plan's 70B: Llama 3.3 70B Q4_K_M, ~43 GB in 80 layers, 20 of them offloaded (DESIGN.md).
PLAN_70B_BYTES = 43 * GB
PLAN_70B_LAYERS = 80
PLAN_70B_GPU_LAYERS = 20
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$")


@dataclass
class ModelFacts:
    """One model as physics sees it (shards of one model summed)."""

    name: str  # path relative to its root
    kind: str
    weight_bytes: float  # read per decode step
    parameters: float | None = None
    layers: int | None = None
    layer_bytes: float | None = None
    non_layer_bytes: float | None = None
    files: int = 1


@dataclass
class CeilingRow:
    endpoint: str
    model: str
    device: str  # "gpu" | "cpu" | "hybrid"
    tok_s: float | None
    weight_gb: float | None
    bandwidth_gbs: float | None
    bandwidth_source: str | None
    efficiency: float | None
    note: str = ""
    batched_tok_s: dict[int, float] = field(default_factory=dict)  # batch -> aggregate tok/s

    def as_dict(self) -> dict:
        return asdict(self)


def model_facts(inventory: list[dict]) -> list[ModelFacts]:
    """Inventory rows (``load_inventory``) that physics can use, shards grouped into one model.

    Safetensors shards of one directory and ``-0000N-of-0000M.gguf`` splits are one
    model; rows with a finding or no tensor sizes are left out (they cannot be served).
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in inventory:
        if row.get("finding") or not row.get("tensor_bytes") or row.get("kind") not in ("gguf", "safetensors"):
            continue
        rel = _relpath(row)
        key = str(Path(rel).parent) if row["kind"] == "safetensors" else _SPLIT_GGUF.sub(".gguf", rel)
        groups.setdefault((row["kind"], key), []).append(row)
    result = []
    for (kind, name), rows in sorted(groups.items()):
        tensor = sum(r["tensor_bytes"] for r in rows)
        embd = sum(r.get("token_embd_bytes") or 0 for r in rows)
        tied = next((r["tied_embeddings"] for r in rows if r.get("tied_embeddings") is not None), None)
        layers = next((r["block_count"] for r in rows if r.get("block_count")), None)
        non_layer = sum(r.get("non_layer_bytes") or 0 for r in rows)
        if len(rows) == 1:
            layer_bytes = rows[0].get("layer_bytes")
        else:  # per-shard means cover different layers: recompute from the totals
            layer_bytes = (tensor - non_layer) / layers if layers else None
        parameters = sum(r.get("parameters") or 0 for r in rows) or None
        result.append(
            ModelFacts(
                name=name,
                kind=kind,
                weight_bytes=weight_bytes_per_token(tensor, embd or None, tied),
                parameters=float(parameters) if parameters else None,
                layers=layers,
                layer_bytes=float(layer_bytes) if layer_bytes else None,
                non_layer_bytes=float(non_layer),
                files=len(rows),
            )
        )
    return result


def _relpath(row: dict) -> str:
    try:
        return str(Path(row["path"]).relative_to(row["root"]))
    except (ValueError, KeyError):
        return str(row.get("path"))


def ceiling_for(
    endpoint: Endpoint,
    *,
    models_dir: Path,
    hardware: HardwareProfile,
    measured: MeasuredBandwidth,
    model: ModelFacts | None = None,
    gpu_tflops: float | None = None,
) -> CeilingRow:
    """The single-stream (and, with a FLOP figure, batched) ceiling of ``endpoint`` serving ``model``.

    Without ``model`` the endpoint's own model is used (its file, else ``weights_gb``).
    """
    target = endpoint
    if model is not None:
        # endpoint_ceiling takes the bytes from weights_gb when no file is named: reuse its
        # device and bandwidth choice without reading the file again.
        target = endpoint.model_copy(update={"model_file": None, "weights_gb": model.weight_bytes / GB})
    label = model.name if model else (endpoint.model_file or endpoint.model)
    ceiling = endpoint_ceiling(target, models_dir=models_dir, hardware=hardware, measured=measured)
    if ceiling is None:
        return CeilingRow(endpoint.name, label, "?", None, None, None, None, None,
                          note=_unknown_reason(target, models_dir, hardware))  # fmt: skip
    row = _row(ceiling, label)
    vram = (hardware.gpu_vram_gb or 0) * GB
    if ceiling.device == "gpu" and vram and ceiling.weight_bytes > vram * (1 - VRAM_RESERVE_FRACTION):
        return _hybrid_row(target, row, ceiling, model, models_dir=models_dir, hardware=hardware, measured=measured)
    if ceiling.device == "gpu" and gpu_tflops and model and model.parameters:
        for batch in BATCH_SIZES:
            row.batched_tok_s[batch] = batched_ceiling(
                ceiling.weight_bytes,
                model.parameters,
                batch,
                bandwidth_bps=ceiling.bandwidth_gbs * GB,
                flops=gpu_tflops * 1e12,
                bandwidth_efficiency=ceiling.efficiency,
            ).aggregate_tok_s
    return row


def _unknown_reason(endpoint: Endpoint, models_dir: Path, hardware: HardwareProfile) -> str:
    if endpoint.model_file and not endpoint.weights_gb:
        path = models_dir / endpoint.model_file
        if not path.is_file():
            return f"unknown: model file {path} not found and no weights_gb configured"
        return f"unknown: cannot read the tensor sizes of {path} and no weights_gb configured"
    if not endpoint.model_file and not endpoint.weights_gb:
        return "unknown: the endpoint names no model_file or weights_gb"
    return (
        f"unknown: no bandwidth for its device: not measured yet (materialize memory_bandwidth) and profile "
        f"{hardware.name} has no datasheet figure"
    )


def _row(ceiling: EndpointCeiling, label: str) -> CeilingRow:
    return CeilingRow(
        endpoint=ceiling.endpoint,
        model=label,
        device=ceiling.device,
        tok_s=ceiling.tok_s,
        weight_gb=ceiling.weight_bytes / GB,
        bandwidth_gbs=ceiling.bandwidth_gbs,
        bandwidth_source=ceiling.bandwidth_source,
        efficiency=ceiling.efficiency,
    )


def _hybrid_row(endpoint, row, ceiling, model, *, models_dir, hardware, measured) -> CeilingRow:
    vram_gb = hardware.gpu_vram_gb
    cpu = endpoint_ceiling(endpoint, models_dir=models_dir, hardware=hardware, measured=measured, device="cpu")
    if model is None or not (model.layers and model.layer_bytes) or cpu is None:
        row.note = (
            f"{row.weight_gb:.1f} GB does not fit {vram_gb:g} GB of VRAM: runs as a GPU+CPU hybrid, but "
            + ("no layer sizes are known" if cpu is not None else "no CPU bandwidth is known")
            + "; the GPU figure is a loose upper bound"
        )
        return row
    gpu_layers = best_gpu_layers(model.layer_bytes, model.layers, vram_gb * GB * (1 - VRAM_RESERVE_FRACTION))
    # Each side at its own effective bandwidth (measured: x1.0, datasheet: x efficiency).
    estimate = hybrid_ceiling(
        model.layer_bytes, model.layers, gpu_layers,
        gpu_bandwidth_bps=ceiling.bandwidth_gbs * GB * ceiling.efficiency,
        cpu_bandwidth_bps=cpu.bandwidth_gbs * GB * cpu.efficiency,
        efficiency=1.0, non_layer_bytes=model.non_layer_bytes or 0.0,
    )  # fmt: skip
    row.device = "hybrid"
    row.tok_s = estimate.tok_s
    row.bandwidth_source = f"gpu {ceiling.bandwidth_source}, cpu {cpu.bandwidth_source}"
    row.bandwidth_gbs = None
    row.note = (
        f"does not fit {vram_gb:g} GB of VRAM: {gpu_layers}/{model.layers} layers on the GPU "
        f"({estimate.gpu_bytes / GB:.1f} GB at {ceiling.bandwidth_gbs:g} GB/s), {estimate.cpu_bytes / GB:.1f} GB "
        f"on the CPU at {cpu.bandwidth_gbs:g} GB/s"
    )
    return row


# -- acceptance criteria -----------------------------------------------------------


@dataclass
class CriterionRow:
    endpoint: str
    criterion: str
    threshold: float
    ceiling: float | None
    measured: float | None
    efficiency: float | None  # measured / ceiling
    status: str  # passed | failed | no data | unattainable
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def criteria_rows(endpoint: Endpoint, ceiling: CeilingRow | None, latest: dict | None) -> list[CriterionRow]:
    """The endpoint's acceptance criteria against its ceiling and its newest measurement."""
    latest = latest or {}
    acceptance = endpoint.acceptance
    rows = []
    tok_s = ceiling.tok_s if ceiling else None
    if acceptance.decode_tok_s_min is not None:
        measured = latest.get("decode_tok_s")
        status = criterion_status(measured, acceptance.decode_tok_s_min, tok_s, higher_is_better=True)
        note = ""
        if status == "unattainable":
            note = check_claim(acceptance.decode_tok_s_min, tok_s).verdict + ": lower the criterion"
        rows.append(
            CriterionRow(
                endpoint.name,
                "decode_tok_s_min",
                acceptance.decode_tok_s_min,
                tok_s,
                measured,
                measured / tok_s if measured and tok_s else None,
                status,
                note,
            )  # fmt: skip
        )
    for name in ("ttft_p50_ms", "ttft_p95_ms"):
        threshold = getattr(acceptance, name)
        if threshold is not None:
            measured = latest.get(name)
            # A latency has no bandwidth ceiling here (prefill is compute-bound): judged on measurement only.
            rows.append(
                CriterionRow(
                    endpoint.name,
                    name,
                    threshold,
                    None,
                    measured,
                    None,
                    criterion_status(measured, threshold, None, higher_is_better=False),
                )  # fmt: skip
            )
    return rows


# -- the plan's claims ---------------------------------------------------------------


@dataclass
class ClaimRow:
    claim: str
    claimed: str
    ceiling: float
    unit: str
    status: str  # possible | partly above the ceiling | impossible | understated
    ratio: float  # highest claimed / ceiling
    verdict: str
    basis: str

    def as_dict(self) -> dict:
        return asdict(self)


def _range_claim(claim: str, low: float, high: float, ceiling: float, basis: str, unit: str = "tok/s") -> ClaimRow:
    top = check_claim(high, ceiling, what=unit)
    if low > ceiling:
        status, verdict = "impossible", check_claim(low, ceiling, what=unit).verdict
    elif top.exceeds:
        status, verdict = "partly above the ceiling", f"{low:g} {unit} fits; the top end: {top.verdict}"
    else:
        status, verdict = "possible", top.verdict
    claimed = f"{low:g}" if low == high else f"{low:g}-{high:g}"
    return ClaimRow(claim, claimed, ceiling, unit, status, top.ratio, verdict, basis)


def plan_claims(inventory_models: list[ModelFacts] | None = None) -> list[ClaimRow]:
    """The plan's throughput claims against its own hardware's datasheet ceilings."""
    plan = HARDWARE_PROFILES[PLAN_PROFILE]
    eff = plan.efficiency
    gpu_bps, cpu_bps = plan.gpu_bandwidth_gbs * GB, plan.cpu_bandwidth_gbs * GB
    gpu = f"{plan.gpu_name} {plan.gpu_bandwidth_gbs:g} GB/s x {eff:g}"
    cpu = f"{plan.cpu_name} {plan.cpu_bandwidth_gbs:g} GB/s x {eff:g}"
    rows = []

    vllm = single_stream_ceiling(8 * GB, gpu_bps, efficiency=eff)
    rows.append(_range_claim("vLLM Llama 3.1 8B FP8, one stream (plan's original)", 140, 170, vllm, f"8 GB on {gpu}"))
    rows.append(_range_claim("vLLM Llama 3.1 8B FP8, one stream (plan's correction)", 70, 100, vllm, f"8 GB on {gpu}"))

    cpu3b = single_stream_ceiling(2.0 * GB, cpu_bps, efficiency=eff)
    rows.append(
        _range_claim(
            "llama.cpp Llama 3.2 3B Q4 on the CPU, one stream: > 100 tok/s", 100, 100, cpu3b, f"2.0 GB on {cpu}"
        )
    )

    # The real file's layer sizes where the inventory has a 70B-class model, else the plan's figures.
    big = next((m for m in inventory_models or [] if m.layers == PLAN_70B_LAYERS and m.layer_bytes), None)
    layer_bytes = big.layer_bytes if big else PLAN_70B_BYTES / PLAN_70B_LAYERS
    hybrid = hybrid_ceiling(layer_bytes, PLAN_70B_LAYERS, PLAN_70B_GPU_LAYERS, gpu_bandwidth_bps=gpu_bps,
                            cpu_bandwidth_bps=cpu_bps, efficiency=eff,
                            non_layer_bytes=(big.non_layer_bytes or 0.0) if big else 0.0)  # fmt: skip
    source = f"{big.name}" if big else f"{PLAN_70B_BYTES / GB:.0f} GB in {PLAN_70B_LAYERS} layers"
    rows.append(_range_claim(
        "llama.cpp Llama 3.3 70B Q4_K_M hybrid, one stream (--batch-size 512 speeds prompts, not decode)", 8, 15,
        hybrid.tok_s,
        f"{source}: {PLAN_70B_GPU_LAYERS} layers ({hybrid.gpu_bytes / GB:.1f} GB) on {gpu}, "
        f"{hybrid.cpu_bytes / GB:.1f} GB on {cpu}",
    ))  # fmt: skip

    # Batching: 8 streams read the weights once per step, so aggregate throughput grows ~8x
    # until compute binds; for an 8B model at batch 8 that needs only 2 x 8e9 x 8 FLOP per
    # memory-bound step, far below any GPU's peak (the H200 roofline measured 7.9x).
    step_s = 8 * GB / (gpu_bps * eff)
    tflops_needed = 2 * 8e9 * 8 / step_s / 1e12
    gain = 8.0
    if getattr(plan, "gpu_tflops", None):
        b1 = batched_ceiling(
            8 * GB, 8e9, 1, bandwidth_bps=gpu_bps, flops=plan.gpu_tflops * 1e12, bandwidth_efficiency=eff
        )
        b8 = batched_ceiling(
            8 * GB, 8e9, 8, bandwidth_bps=gpu_bps, flops=plan.gpu_tflops * 1e12, bandwidth_efficiency=eff
        )
        gain = b8.aggregate_tok_s / b1.aggregate_tok_s
    rows.append(
        ClaimRow(
            claim="vLLM 8 concurrent requests => 1.5x aggregate throughput",
            claimed="1.5",
            ceiling=gain,
            unit="x",
            status="understated" if gain / 2 > 1.5 else "possible",
            ratio=1.5 / gain,
            verdict=(
                f"physics allows ~{gain:.1f}x at batch 8 (memory-bound: the weights are read once per step for all 8 "
                f"streams; compute would bind only below {tflops_needed:.0f} TFLOP/s); the claim understates it "
                f"{gain / 1.5:.1f}x. Measured on an H200: 7.9x"
            ),
            basis=f"8B (8e9 parameters, 8 GB) on {gpu}",
        )
    )
    return rows
