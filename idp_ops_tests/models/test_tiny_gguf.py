"""The tiny test GGUF (idp_ops_harness/tiny_gguf.py): deterministic, readable by the inventory, and served by the
real llama-server image (/completion and /v1/completions)."""

import subprocess
import time
import uuid

import httpx
import pytest

from idp_ops.models.gguf_meta import read_gguf
from idp_ops_harness.ports import free_port
from idp_ops_harness.tiny_gguf import cached_tiny_gguf, write_tiny_gguf


def test_same_parameters_give_the_same_bytes_and_seeds_differ(tmp_path):
    a = write_tiny_gguf(tmp_path / "a.gguf", seed=3).read_bytes()
    b = write_tiny_gguf(tmp_path / "b.gguf", seed=3).read_bytes()
    c = write_tiny_gguf(tmp_path / "c.gguf", seed=4).read_bytes()
    assert a == b
    assert a != c
    assert not list(tmp_path.glob(".*.tmp")), "the temp file of the atomic write was left behind"


def test_the_inventory_reads_it_as_a_small_llama(tmp_path):
    row = read_gguf(write_tiny_gguf(tmp_path / "tiny.gguf", n_layers=3, n_embd=64, n_head=4, n_head_kv=2))
    assert row.finding is None
    assert (row.architecture, row.block_count, row.embedding_length) == ("llama", 3, 64)
    assert (row.head_count, row.head_count_kv) == (4, 2)
    assert row.kv_cache_bytes_per_token() == 3 * 2 * (16 + 16) * 2
    assert row.size < 1_000_000


def test_dropped_tensors_keep_a_valid_header(tmp_path):
    full = read_gguf(write_tiny_gguf(tmp_path / "full.gguf"))
    broken = read_gguf(write_tiny_gguf(tmp_path / "broken.gguf", drop_tensors=("blk.1.ffn_down.weight",)))
    assert broken.finding is None
    assert broken.tensor_count == full.tensor_count - 1
    with pytest.raises(ValueError, match="names no tensor"):
        write_tiny_gguf(tmp_path / "x.gguf", drop_tensors=("blk.9.nothing",))


def test_the_cache_builds_once_per_parameter_set(tmp_path):
    first = cached_tiny_gguf(tmp_path, seed=1)
    stamp = first.stat().st_mtime_ns
    assert cached_tiny_gguf(tmp_path, seed=1) == first
    assert first.stat().st_mtime_ns == stamp, "a cached model was rebuilt"
    other = cached_tiny_gguf(tmp_path, seed=2)
    assert other != first and other.read_bytes() != first.read_bytes()


@pytest.mark.docker
def test_the_real_llama_server_loads_and_serves_it(tmp_path, llama_image):
    models = tmp_path / "models"
    write_tiny_gguf(models / "tiny.gguf")
    models.chmod(0o755)
    port, name = free_port(), f"idp-tiny-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "-v", f"{models}:/models:ro", "-p", f"127.0.0.1:{port}:8080",
         llama_image, "--model", "/models/tiny.gguf", "--host", "0.0.0.0", "--port", "8080", "--ctx-size", "512"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, subprocess.run(["docker", "logs", name], capture_output=True).stderr
            time.sleep(0.2)
        native = httpx.post(f"{url}/completion", json={"prompt": "hello world", "n_predict": 6, "temperature": 0})
        assert native.status_code == 200 and native.json()["content"]
        assert native.json()["tokens_predicted"] == 6
        openai = httpx.post(f"{url}/v1/completions", json={"prompt": "the sky is", "max_tokens": 4, "temperature": 0})
        assert openai.status_code == 200 and openai.json()["choices"][0]["text"]
        assert httpx.get(f"{url}/props").json()["model_path"] == "/models/tiny.gguf"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
