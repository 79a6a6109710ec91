"""`idp-ops ceiling`: what the hardware allows, from flags or a model file, as JSON."""

import argparse
from pathlib import Path

from idp_ops.physics.formulas import PhysicsError  # light: dataclasses only


def _model_facts(path: Path) -> dict:
    from idp_ops.models.gguf_meta import read_gguf
    from idp_ops.physics.formulas import weight_bytes_per_token

    model = read_gguf(path)
    if model.finding or not model.tensor_bytes:
        raise PhysicsError(f"cannot read {path}: {model.finding or 'no tensors'}")
    return {
        "model": str(path),
        "weight_bytes": weight_bytes_per_token(model.tensor_bytes, model.token_embd_bytes, model.tied_embeddings),
        "parameters": model.parameters,
        "layers": model.block_count,
        "layer_bytes": model.layer_bytes,
        "non_layer_bytes": model.non_layer_bytes,
        "kv_bytes_per_token": model.kv_cache_bytes_per_token() or 0,
    }


def cmd_ceiling(args: argparse.Namespace) -> int:
    from idp_ops.cli.main import emit
    from idp_ops.physics.formulas import GB, batched_ceiling, check_claim, hybrid_ceiling, single_stream_ceiling
    from idp_ops.settings import HARDWARE_PROFILES

    facts = _model_facts(Path(args.model)) if args.model else {}
    if args.weights_gb:
        facts["weight_bytes"] = args.weights_gb * GB
    if "weight_bytes" not in facts:
        raise PhysicsError("give --weights-gb or --model FILE")
    kv = facts.get("kv_bytes_per_token", 0)
    result: dict = {"inputs": {k: v for k, v in vars(args).items() if k not in ("func", "json", "config")}, **facts}

    if args.gpu_layers is not None:
        layers = args.layers or facts.get("layers")
        if not layers or not args.gpu_bandwidth_gbs or not args.cpu_bandwidth_gbs:
            raise PhysicsError("a hybrid needs --layers (or --model), --gpu-bandwidth-gbs and --cpu-bandwidth-gbs")
        layer_bytes = facts.get("layer_bytes") or facts["weight_bytes"] / layers
        non_layer = facts.get("non_layer_bytes") or 0.0
        if not args.model:  # from --weights-gb alone: spread the weights evenly over the layers
            layer_bytes, non_layer = facts["weight_bytes"] / layers, 0.0
        hybrid = hybrid_ceiling(
            layer_bytes,
            layers,
            args.gpu_layers,
            gpu_bandwidth_bps=args.gpu_bandwidth_gbs * GB,
            cpu_bandwidth_bps=args.cpu_bandwidth_gbs * GB,
            efficiency=args.efficiency,
            non_layer_bytes=non_layer,
        )
        result["hybrid"] = hybrid.as_dict()
        result["single_stream_tok_s"] = hybrid.tok_s
    else:
        bandwidth = args.bandwidth_gbs
        if bandwidth is None and args.profile:
            if args.profile not in HARDWARE_PROFILES:
                raise PhysicsError(f"unknown profile {args.profile!r}; known: {sorted(HARDWARE_PROFILES)}")
            profile = HARDWARE_PROFILES[args.profile]
            bandwidth = profile.cpu_bandwidth_gbs if args.device == "cpu" else profile.gpu_bandwidth_gbs
            if bandwidth is None:
                raise PhysicsError(f"profile {args.profile} has no {args.device} bandwidth; give --bandwidth-gbs")
        if bandwidth is None:
            raise PhysicsError("give --bandwidth-gbs or --profile NAME")
        result["bandwidth_gbs"] = bandwidth
        result["single_stream_tok_s"] = single_stream_ceiling(
            facts["weight_bytes"],
            bandwidth * GB,
            efficiency=args.efficiency,
            kv_bytes_per_token=kv,
            context=args.context,
        )
        if args.batch:
            if not args.tflops:
                raise PhysicsError("--batch needs --tflops (peak FLOP/s of the device)")
            parameters = facts.get("parameters") or facts["weight_bytes"] / 2
            result["batched"] = batched_ceiling(
                facts["weight_bytes"],
                parameters,
                args.batch,
                bandwidth_bps=bandwidth * GB,
                flops=args.tflops * 1e12,
                bandwidth_efficiency=args.efficiency,
                kv_bytes_per_token=kv,
                context=args.context,
            ).as_dict()
    if args.claim is not None:
        result["claim"] = check_claim(args.claim, result["single_stream_tok_s"]).as_dict()

    def human(d: dict) -> str:
        text = f"single-stream ceiling: {d['single_stream_tok_s']:.1f} tok/s"
        if "batched" in d:
            b = d["batched"]
            text += f"\nbatch {b['batch']}: {b['aggregate_tok_s']:.0f} tok/s aggregate ({b['bound']}-bound)"
        if "claim" in d:
            text += "\n" + d["claim"]["verdict"]
        return text

    emit(args, result, human)
    return 1 if args.claim is not None and result["claim"]["exceeds"] else 0


def register(sub, common) -> None:
    parser = sub.add_parser("ceiling", parents=[common], help="decode throughput ceiling from bandwidth and model size")
    parser.add_argument("--weights-gb", type=float, help="bytes of weights read per token, in GB")
    parser.add_argument("--model", help="a GGUF file: bytes, layers and KV size from its header")
    parser.add_argument("--bandwidth-gbs", type=float)
    parser.add_argument("--profile", help="hardware profile name from settings")
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu", help="which bandwidth of --profile")
    parser.add_argument("--efficiency", type=float, default=0.8)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--gpu-layers", type=int)
    parser.add_argument("--gpu-bandwidth-gbs", type=float)
    parser.add_argument("--cpu-bandwidth-gbs", type=float)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--tflops", type=float, help="peak FLOP/s in TFLOP/s (for --batch)")
    parser.add_argument("--context", type=int, default=0, help="tokens already in the KV cache")
    parser.add_argument(
        "--claim", type=float, help="a claimed tok/s to check against the ceiling (exit 1 if impossible)"
    )
    parser.set_defaults(func=cmd_ceiling)
