import json

from idp_ops.models.gguf_meta import read_gguf
from idp_ops_harness.cli import idp_ops


def test_ceiling_reproduces_the_plans_89_6_tok_s():
    result = idp_ops("ceiling", "--weights-gb", "8", "--bandwidth-gbs", "896", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["single_stream_tok_s"] == 89.6


def test_ceiling_flags_the_plans_70b_hybrid_claim():
    result = idp_ops(
        "ceiling",
        "--weights-gb",
        "43",
        "--layers",
        "80",
        "--gpu-layers",
        "20",
        "--gpu-bandwidth-gbs",
        "896",
        "--cpu-bandwidth-gbs",
        "102.4",
        "--claim",
        "8",
        "--json",
    )
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert 2 <= data["single_stream_tok_s"] <= 3 and data["claim"]["exceeds"]


def test_ceiling_from_the_real_gguf_and_a_profile(demo_models_dir):
    model = demo_models_dir / "gemma-3-270m-q4_k_m.gguf"
    result = idp_ops("ceiling", "--model", str(model), "--profile", "rtx5070ti-ryzen9900x", "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    # tied embeddings: every tensor byte, the token embedding included, is read each token
    header = read_gguf(model)
    assert header.tied_embeddings is True and header.token_embd_bytes > 0
    assert data["weight_bytes"] == header.tensor_bytes == 246_587_904
    assert header.tensor_bytes <= model.stat().st_size - header.details["data_start"]
    assert data["single_stream_tok_s"] == 102.4e9 * 0.8 / data["weight_bytes"]


def test_ceiling_without_inputs_is_a_clear_error():
    result = idp_ops("ceiling", "--bandwidth-gbs", "100")
    assert result.returncode == 2 and "--weights-gb or --model" in result.stderr and "Traceback" not in result.stderr
