"""Ceilings against hand-computed cases (the plan's own) and a real H200 roofline."""

import json

import pytest

from idp_ops.physics.formulas import (
    GB,
    PhysicsError,
    batched_ceiling,
    best_gpu_layers,
    check_claim,
    criterion_status,
    hybrid_ceiling,
    kv_cache_bytes_per_token,
    single_stream_ceiling,
)
from idp_ops_harness.recorded_data import FIXTURES

ROOFLINE = FIXTURES / "h200_decode_roofline.json"


def test_plans_8b_fp8_on_a_5070ti_is_89_6_tok_s():
    assert single_stream_ceiling(8 * GB, 896 * GB, efficiency=0.8) == pytest.approx(89.6)


def test_plans_70b_hybrid_claim_of_8_to_15_tok_s_is_flagged():
    # 20 of 80 layers of a ~43 GB Q4_K_M on a 16 GB card; dual-channel DDR5-6400.
    layer_bytes = 43 * GB / 80
    estimate = hybrid_ceiling(
        layer_bytes, 80, 20, gpu_bandwidth_bps=896 * GB, cpu_bandwidth_bps=102.4 * GB, efficiency=0.8
    )
    assert 2.0 <= estimate.tok_s <= 3.0
    assert estimate.gpu_bytes == pytest.approx(20 * layer_bytes)
    claim = check_claim(8, estimate.tok_s)
    assert claim.exceeds and claim.ratio > 2.5 and "impossible" in claim.verdict
    assert check_claim(15, estimate.tok_s).exceeds


def test_3b_q4_on_the_cpu_makes_more_than_100_tok_s_unattainable():
    ceiling = single_stream_ceiling(2.0 * GB, 102.4 * GB, efficiency=0.8)
    assert ceiling == pytest.approx(40.96)
    assert criterion_status(None, 100, ceiling, higher_is_better=True) == "unattainable"
    assert criterion_status(35, 30, ceiling, higher_is_better=True) == "passed"
    assert criterion_status(25, 30, ceiling, higher_is_better=True) == "failed"
    assert criterion_status(40, 50, None, higher_is_better=False) == "passed"


def test_kv_cache_reads_lower_the_ceiling_at_long_context():
    kv = kv_cache_bytes_per_token(layers=32, kv_heads=8, key_length=128)  # Llama-3.1-8B, fp16 cache
    assert kv == 32 * 8 * 256 * 2 == 131072
    short = single_stream_ceiling(8 * GB, 896 * GB, kv_bytes_per_token=kv, context=0)
    long = single_stream_ceiling(8 * GB, 896 * GB, kv_bytes_per_token=kv, context=16384)
    assert long < short and long == pytest.approx(716.8 / (8 + 131072 * 16384 / GB))


def test_batched_model_predicts_every_measured_h200_step_within_25_percent():
    data = json.loads(ROOFLINE.read_text())
    weights = data["weights_GB"] * GB
    parameters = weights / 2  # bf16
    for row in data["rows"]:
        predicted = batched_ceiling(
            weights,
            parameters,
            row["batch"],
            bandwidth_bps=data["copy_bw_TBs"] * 1e12,
            flops=data["matmul_bf16_TFLOPs"] * 1e12,
        )
        measured_s = row["step_ms"] / 1000
        assert predicted.step_s == pytest.approx(measured_s, rel=0.25), row
    # and per-request vs aggregate stay consistent
    b8 = batched_ceiling(weights, parameters, 8, bandwidth_bps=4.3e12, flops=780e12)
    assert b8.aggregate_tok_s == pytest.approx(8 * b8.per_request_tok_s)
    assert (
        b8.bound == "memory"
        and batched_ceiling(weights, parameters, 1024, bandwidth_bps=4.3e12, flops=780e12).bound == "compute"
    )


def test_plans_1_5x_batching_gain_at_8_streams_is_wrong_by_about_5x():
    b1 = batched_ceiling(8 * GB, 8e9, 1, bandwidth_bps=896 * GB, flops=176e12)
    b8 = batched_ceiling(8 * GB, 8e9, 8, bandwidth_bps=896 * GB, flops=176e12)
    gain = b8.aggregate_tok_s / b1.aggregate_tok_s
    assert gain > 7 and gain / 1.5 > 4.5


def test_best_split_for_a_vram_budget():
    layer = 0.54 * GB
    assert best_gpu_layers(layer, 80, 16 * GB, reserve_bytes=2 * GB) == 25
    assert best_gpu_layers(layer, 10, 64 * GB) == 10
    assert best_gpu_layers(layer, 80, 1 * GB, reserve_bytes=2 * GB) == 0


def test_nonsense_inputs_are_refused_with_the_name_of_the_input():
    with pytest.raises(PhysicsError, match="bandwidth"):
        single_stream_ceiling(8 * GB, 0)
    with pytest.raises(PhysicsError, match="gpu_layers"):
        hybrid_ceiling(1 * GB, 10, 11, gpu_bandwidth_bps=1, cpu_bandwidth_bps=1)
    with pytest.raises(PhysicsError, match="batch"):
        batched_ceiling(1, 1, 0, bandwidth_bps=1, flops=1)
