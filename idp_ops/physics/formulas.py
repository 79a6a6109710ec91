"""What the hardware can physically do: decode ceilings from bytes moved and FLOPs done.

Decode of one stream reads every weight once per token (plus the KV cache it
has built so far), so its speed is bounded by memory bandwidth:

    single-stream tok/s  <=  bandwidth x efficiency / (weight bytes + KV bytes read per token)

A batch of B streams reads the weights once per step and does 2 x parameters
x B FLOP, so a step takes (DESIGN.md; reproduces a measured H200 roofline within 25 %):

    step time  ~=  max( (weight bytes + B x KV bytes) / effective bandwidth,
                        2 x parameters x B / effective FLOP/s )

and aggregate throughput is B / step time, per-request throughput 1 / step time.

A GPU+CPU hybrid (llama.cpp --n-gpu-layers) reads the offloaded layers at GPU
bandwidth and the rest at CPU bandwidth, one after the other, every token:

    token time  =  GPU-resident bytes / GPU bandwidth + CPU-resident bytes / CPU bandwidth

``efficiency`` is the fraction of the datasheet (or measured copy) bandwidth a
good engine reaches: ~0.77-0.8 on an H200 with CUDA graphs (DESIGN.md), lower on
CPUs. Units: bytes, bytes/s, FLOP/s, seconds; helpers take GB (1e9) for humans.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from idp_ops.errors import IdpOpsError

GB = 1e9


class PhysicsError(IdpOpsError, ValueError):
    pass


def _positive(name: str, value: float) -> float:
    if value is None or value <= 0:
        raise PhysicsError(f"{name} must be positive, got {value!r}")
    return float(value)


def kv_cache_bytes_per_token(
    layers: int, kv_heads: int, key_length: int, value_length: int | None = None, bytes_per_element: float = 2.0
) -> float:
    """KV-cache bytes one token adds (and every later step of the same stream reads back)."""
    value_length = key_length if value_length is None else value_length
    return layers * kv_heads * (key_length + value_length) * bytes_per_element


def single_stream_ceiling(
    weight_bytes: float,
    bandwidth_bps: float,
    *,
    efficiency: float = 0.8,
    kv_bytes_per_token: float = 0.0,
    context: int = 0,
) -> float:
    """Upper bound on one stream's decode tok/s at a given context length."""
    weight_bytes = _positive("weight bytes", weight_bytes)
    effective = _positive("bandwidth", bandwidth_bps) * _positive("efficiency", efficiency)
    return effective / (weight_bytes + kv_bytes_per_token * max(context, 0))


@dataclass(frozen=True)
class BatchedCeiling:
    batch: int
    step_s: float
    aggregate_tok_s: float
    per_request_tok_s: float
    bound: str  # "memory" or "compute"

    def as_dict(self) -> dict:
        return asdict(self)


def batched_ceiling(
    weight_bytes: float,
    parameters: float,
    batch: int,
    *,
    bandwidth_bps: float,
    flops: float,
    bandwidth_efficiency: float = 0.8,
    compute_efficiency: float = 0.8,
    kv_bytes_per_token: float = 0.0,
    context: int = 0,
) -> BatchedCeiling:
    """Step time and throughput of B streams decoding together."""
    if batch < 1:
        raise PhysicsError(f"batch must be at least 1, got {batch}")
    memory_s = (_positive("weight bytes", weight_bytes) + batch * kv_bytes_per_token * max(context, 0)) / (
        _positive("bandwidth", bandwidth_bps) * _positive("bandwidth efficiency", bandwidth_efficiency)
    )
    compute_s = (
        2
        * _positive("parameters", parameters)
        * batch
        / (_positive("FLOP/s", flops) * _positive("compute efficiency", compute_efficiency))
    )
    step = max(memory_s, compute_s)
    return BatchedCeiling(
        batch=batch,
        step_s=step,
        aggregate_tok_s=batch / step,
        per_request_tok_s=1 / step,
        bound="memory" if memory_s >= compute_s else "compute",
    )


@dataclass(frozen=True)
class HybridEstimate:
    layers: int
    gpu_layers: int
    gpu_bytes: float
    cpu_bytes: float
    token_s: float
    tok_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def hybrid_ceiling(
    layer_bytes: float,
    layers: int,
    gpu_layers: int,
    *,
    gpu_bandwidth_bps: float,
    cpu_bandwidth_bps: float,
    efficiency: float = 0.8,
    non_layer_bytes: float = 0.0,
    non_layer_on_gpu: bool = False,
) -> HybridEstimate:
    """Single-stream tok/s of a model split across GPU and CPU by whole layers.

    ``non_layer_bytes`` (output head and the one embedding row per token) sit on
    the CPU unless ``non_layer_on_gpu``; llama.cpp keeps the output layer with
    the last offloaded layers only when every layer is offloaded.
    """
    if not 0 <= gpu_layers <= layers:
        raise PhysicsError(f"gpu_layers must be between 0 and {layers}, got {gpu_layers}")
    _positive("layer bytes", layer_bytes)
    gpu_bytes = gpu_layers * layer_bytes + (non_layer_bytes if non_layer_on_gpu else 0.0)
    cpu_bytes = (layers - gpu_layers) * layer_bytes + (0.0 if non_layer_on_gpu else non_layer_bytes)
    eff = _positive("efficiency", efficiency)
    token_s = gpu_bytes / (_positive("GPU bandwidth", gpu_bandwidth_bps) * eff) + cpu_bytes / (
        _positive("CPU bandwidth", cpu_bandwidth_bps) * eff
    )
    return HybridEstimate(layers, gpu_layers, gpu_bytes, cpu_bytes, token_s, 1 / token_s)


def best_gpu_layers(layer_bytes: float, layers: int, vram_budget_bytes: float, *, reserve_bytes: float = 0.0) -> int:
    """Most whole layers that fit the VRAM budget after a reserve (KV cache, CUDA context)."""
    usable = vram_budget_bytes - reserve_bytes
    if usable <= 0:
        return 0
    return max(0, min(layers, int(usable // _positive("layer bytes", layer_bytes))))


@dataclass(frozen=True)
class ClaimCheck:
    claimed: float
    ceiling: float
    exceeds: bool
    ratio: float  # claimed / ceiling
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


def check_claim(claimed: float, ceiling: float, *, what: str = "tok/s") -> ClaimCheck:
    """Is a claimed figure physically possible? Above the ceiling is impossible, not 'optimistic'."""
    _positive("ceiling", ceiling)
    ratio = claimed / ceiling
    if ratio > 1:
        verdict = f"claimed {claimed:g} {what} exceeds the ceiling {ceiling:.3g} {what} by {ratio:.1f}x: impossible"
    else:
        verdict = f"claimed {claimed:g} {what} is {ratio:.0%} of the ceiling {ceiling:.3g} {what}: possible"
    return ClaimCheck(claimed, ceiling, ratio > 1, ratio, verdict)


def criterion_status(measured: float | None, threshold: float, ceiling: float | None, *, higher_is_better: bool) -> str:
    """'unattainable' when the threshold asks for more than physics allows; else 'passed'/'failed'/'no data'."""
    if higher_is_better and ceiling is not None and threshold > ceiling:
        return "unattainable"
    if measured is None:
        return "no data"
    ok = measured >= threshold if higher_is_better else measured <= threshold
    return "passed" if ok else "failed"


def weight_bytes_per_token(tensor_bytes: int, token_embd_bytes: int | None, tied_embeddings: bool | None) -> float:
    """Bytes of weights one decode step reads, from a GGUF's tensor sizes.

    Decode reads one row of the token-embedding table, not all of it, unless the
    embeddings are tied to the output head (then the whole matrix is read as the head).
    """
    if tied_embeddings or not token_embd_bytes:
        return float(tensor_bytes)
    return float(tensor_bytes - token_embd_bytes)


# -- context depth -----------------------------------------------------------


def kv_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, bytes_per_element: float = 2.0) -> float:
    """KV-cache bytes per token of context: 2 (K and V) x layers x KV heads x head dim x element bytes."""
    return (
        2
        * _positive("layers", n_layers)
        * _positive("KV heads", n_kv_heads)
        * _positive("head dim", head_dim)
        * _positive("bytes per element", bytes_per_element)
    )


def decode_ceiling_at_depth(
    weight_bytes: float, bandwidth_bps: float, depth: int, kv_bytes_per_token: float, *, efficiency: float = 1.0
) -> float:
    """Single-stream decode tok/s with ``depth`` tokens of context: every step reads the
    weights and the KV cache built so far, bandwidth / (weight bytes + depth x KV bytes/token)."""
    if depth < 0:
        raise PhysicsError(f"depth must be >= 0, got {depth}")
    if kv_bytes_per_token < 0:
        raise PhysicsError(f"KV bytes per token must be >= 0, got {kv_bytes_per_token}")
    return single_stream_ceiling(
        weight_bytes, bandwidth_bps, efficiency=efficiency, kv_bytes_per_token=kv_bytes_per_token, context=depth
    )


def kv_read_tokens(depth: int, sliding_window: int | None) -> int:
    """Tokens of KV a decode step must at least read at ``depth``.

    A model with sliding-window layers reads at most ``sliding_window`` tokens in those
    layers, and the header does not say how many layers slide: the smallest read (all
    of them sliding) keeps the ceiling an upper bound.
    """
    return min(depth, sliding_window) if sliding_window else depth


def min_step_ms(ceiling_tok_s: float) -> float:
    """The shortest possible decode step (one forward pass reading every weight), in ms.

    No token, first or later, can come faster: an ITL or TTFT target below it is unattainable.
    """
    return 1000.0 / _positive("ceiling tok/s", ceiling_tok_s)
