"""Model inventory on real files: the bundled Gemma GGUF, damaged copies of it, synthetic headers."""

from __future__ import annotations

import json
import os
import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType, GGUFEndian, LlamaFileType

from idp_ops.models.gguf_meta import (
    ModelScanError,
    load_inventory,
    read_gguf,
    read_safetensors,
    record_scan,
    scan_models,
)
from idp_ops.settings import DEMO_MODEL_FILE
from idp_ops_harness.gguf_files import write_gguf_header

# The header walker reads in buffers of this size (gguf_meta._HeaderReader.CHUNK): its last read may
# run this far past the end of the tensor directory, into the first tensor's bytes, and no further.
READ_AHEAD = 1 << 20


class _ReadLog:
    """What was read through the handles opened on one file: bytes, and the furthest offset reached."""

    def __init__(self) -> None:
        self.opened = 0
        self.bytes_read = 0
        self.furthest = 0


class _LoggedHandle:
    """A binary file handle whose reads are counted; everything else is the real handle's."""

    def __init__(self, raw, log: _ReadLog) -> None:
        self._raw = raw
        self._log = log

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._log.bytes_read += len(data)
        self._log.furthest = max(self._log.furthest, self._raw.tell())
        return data

    def __getattr__(self, name: str):
        if name in ("readinto", "readinto1", "read1", "readall", "readline", "readlines", "peek"):
            raise AssertionError(f"read_gguf used {name}(): count its bytes in _LoggedHandle too")
        return getattr(self._raw, name)

    def __enter__(self) -> _LoggedHandle:
        return self

    def __exit__(self, *exc) -> None:
        self._raw.close()


@contextmanager
def logged_reads(path: Path) -> Iterator[_ReadLog]:
    """Count every byte read from ``path`` through ``Path.open`` while the block runs.

    No clock: how much of the file the reader touched is the behaviour that makes it fast.
    """
    target = Path(path).resolve()
    log = _ReadLog()
    real_open = Path.open

    def open_logged(self, mode="r", *args, **kwargs):
        handle = real_open(self, mode, *args, **kwargs)
        if "b" in mode and Path(self).resolve() == target:
            log.opened += 1
            return _LoggedHandle(handle, log)
        return handle

    Path.open = open_logged
    try:
        yield log
    finally:
        Path.open = real_open


@pytest.fixture(scope="module")
def gemma(demo_models_dir) -> Path:
    return demo_models_dir / DEMO_MODEL_FILE


@pytest.fixture(scope="module")
def reference(gemma):
    """The gguf package's own reader: slow (~11 s, it materialises the vocabulary), but independent of ours."""
    return GGUFReader(gemma)


# -- the real model ---------------------------------------------------------------------


@pytest.mark.model
def test_gemma_header_facts_match_the_gguf_package_reader(gemma, reference):
    with logged_reads(gemma) as reads:
        row = read_gguf(gemma)
    assert row.finding is None
    assert row.kind == "gguf" and row.size == gemma.stat().st_size == 253_113_024
    assert row.architecture == "gemma3"

    # Parameters: the sum of every tensor's element count, as the gguf package computes it.
    assert row.parameters == sum(t.n_elements for t in reference.tensors) == 268_098_176
    assert 250e6 < row.parameters < 290e6, "in the '270M' ballpark"
    assert reference.get_field("general.size_label").contents() == row.size_label == "270M"
    assert "general.parameter_count" not in reference.fields, "GGUF carries no explicit count: the sum is the source"

    # File type: the header says 15, which llama.cpp names MOSTLY_Q4_K_M.
    assert reference.get_field("general.file_type").contents() == LlamaFileType.MOSTLY_Q4_K_M == 15
    assert row.file_type == "Q4_K_M"

    field = lambda key: reference.get_field(key).contents()  # noqa: E731
    assert row.block_count == field("gemma3.block_count") == 18
    assert row.context_length == field("gemma3.context_length") == 32768
    assert row.embedding_length == field("gemma3.embedding_length") == 640
    assert row.feed_forward_length == field("gemma3.feed_forward_length")
    assert row.head_count == field("gemma3.attention.head_count") == 4
    assert row.head_count_kv == field("gemma3.attention.head_count_kv") == 1
    # Gemma's head size (256) is not embedding / heads (160): the explicit key must win.
    assert row.key_length == row.value_length == field("gemma3.attention.key_length") == 256
    assert row.sliding_window == field("gemma3.attention.sliding_window")

    # Bytes: the exact tensor directory, split into repeating blocks and the rest.
    assert row.tensor_count == len(reference.tensors) == 236
    assert row.tensor_bytes == sum(t.n_bytes for t in reference.tensors)
    per_layer = [
        sum(t.n_bytes for t in reference.tensors if t.name.startswith(f"blk.{i}.")) for i in range(row.block_count)
    ]
    assert row.details["layer_bytes_each"] == per_layer
    assert row.layer_bytes == sum(per_layer) // 18 and row.layer_bytes_max == max(per_layer)
    assert row.non_layer_bytes == row.tensor_bytes - sum(per_layer)
    embd = next(t for t in reference.tensors if t.name == "token_embd.weight")
    assert row.token_embd_bytes == embd.n_bytes and row.tied_embeddings is True
    assert row.tensor_types == {"F32": 109, "Q4_K": 27, "Q5_0": 81, "Q6_K": 9, "Q8_0": 10}
    assert row.details["data_start"] == reference.data_offset
    assert row.details["vocab_size"] == len(reference.get_field("tokenizer.ggml.tokens").data) == 262144
    # 18 layers x 1 KV head x (256 + 256) x 2 bytes (f16 cache).
    assert row.kv_cache_bytes_per_token() == 18 * 1 * 512 * 2

    # Header only: the reads stop within one buffer past the tensor directory; the ~246 MB of tensor
    # data is never read (its extents are checked against the file size). How long the read takes
    # beside reading the whole file: benchmarks/gguf_header_read.py.
    data_start = row.details["data_start"]
    assert reads.opened == 1 and reads.bytes_read > 0, "the reader read through Path.open"
    assert reads.furthest <= data_start + READ_AHEAD, (reads.furthest, data_start)
    assert reads.bytes_read <= data_start + READ_AHEAD < row.size // 10, f"read {reads.bytes_read:,} of {row.size:,}"


@pytest.mark.model
def test_truncated_copy_of_the_first_megabyte_is_a_finding(gemma, tmp_path):
    copy = tmp_path / "gemma-truncated.gguf"
    with gemma.open("rb") as src:
        copy.write_bytes(src.read(1 << 20))
    row = read_gguf(copy)
    assert row.finding and row.finding.startswith("truncated:"), row.finding
    assert "the file ends at 1,048,576" in row.finding
    # What the header held before the cut is still reported; nothing tensor-derived is invented.
    assert row.architecture == "gemma3" and row.block_count == 18
    assert row.parameters is None and row.tensor_bytes is None


@pytest.mark.model
def test_copy_cut_inside_the_tensor_data_keeps_its_facts_and_names_the_missing_bytes(gemma, tmp_path):
    copy = tmp_path / "gemma-short.gguf"
    with gemma.open("rb") as src:
        copy.write_bytes(src.read(200_000_000))
    row = read_gguf(copy)
    assert row.finding.startswith("truncated: tensor ")
    assert "but the file has 200,000,000 bytes" in row.finding
    assert row.architecture == "gemma3" and row.parameters == 268_098_176 and row.file_type == "Q4_K_M"


def test_bad_magic_empty_and_unsupported_version_are_findings(tmp_path):
    bad = tmp_path / "bad-magic.gguf"
    bad.write_bytes(b"GGML" + os.urandom(4096))
    assert read_gguf(bad).finding == "corrupt: not a GGUF file: magic b'GGML', expected b'GGUF'"

    html = tmp_path / "error-page.gguf"  # what a failed download often is
    html.write_bytes(b"<!DOCTYPE html><html>Access denied</html>")
    assert read_gguf(html).finding.startswith("corrupt: not a GGUF file")

    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert read_gguf(empty).finding.startswith("truncated:")

    v9 = tmp_path / "v9.gguf"
    v9.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0))
    assert read_gguf(v9).finding == "corrupt: unsupported GGUF version 9 (readable: (2, 3))"

    huge = tmp_path / "huge-counts.gguf"
    huge.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 2**40) + b"\0" * 100)
    assert "more than" in read_gguf(huge).finding


@pytest.mark.model
def test_damaged_headers_never_raise(gemma, tmp_path):
    """Cuts and random byte damage anywhere in the header: always a row, never an exception."""
    reference_row = read_gguf(gemma)
    header_size = reference_row.details["data_start"]
    with gemma.open("rb") as src:
        header = src.read(header_size)
    rng = random.Random(5)
    damaged = tmp_path / "damaged.gguf"
    for cut in sorted(rng.sample(range(1, header_size), 12)) + [4, 8, 16, 24]:
        damaged.write_bytes(header[:cut])
        row = read_gguf(damaged)
        assert row.finding and row.finding.startswith(("truncated", "corrupt")), (cut, row.finding)
    # Damage in the tensor directory and the small keys (the vocabulary is mostly free text).
    hot = list(range(8, 1200)) + list(range(header_size - 12000, header_size))
    for _ in range(40):
        data = bytearray(header)
        for position in rng.sample(hot, 3):
            data[position] = rng.randrange(256)
        damaged.write_bytes(bytes(data))
        row = read_gguf(damaged)
        assert row.kind == "gguf"  # parsed, or a finding: both fine, a crash is not


# -- synthetic GGUF headers: sizes no test machine can hold ----------------------------------


def test_a_40_gb_70b_shaped_file_reads_from_its_header_only(tmp_path):
    path = tmp_path / "llama-70b-q4_k_m.gguf"
    total = write_gguf_header(path, arch="llama", layers=80, file_type=LlamaFileType.MOSTLY_Q4_K_M)
    assert path.stat().st_size > 35e9 and path.stat().st_blocks * 512 < 10e6, "sparse"
    with logged_reads(path) as reads:
        row = read_gguf(path)
    assert row.finding is None, row.finding
    # Of a 40 GB file, only the header (and at most one buffer beyond it) is read.
    data_start = row.details["data_start"]
    assert reads.opened == 1 and 0 < reads.bytes_read <= data_start + READ_AHEAD
    assert reads.furthest <= data_start + READ_AHEAD < path.stat().st_size // 10_000, (reads.furthest, data_start)
    assert row.architecture == "llama" and row.file_type == "Q4_K_M" and row.block_count == 80
    assert 69e9 < row.parameters < 72e9
    assert row.tensor_bytes == total
    assert row.tied_embeddings is False
    assert row.layer_bytes * 80 + row.non_layer_bytes == row.tensor_bytes
    assert row.key_length == 8192 // 64 and row.head_count_kv == 8
    assert row.kv_cache_bytes_per_token() == 80 * 8 * 256 * 2  # 320 KiB per token in f16


def test_missing_file_type_is_guessed_from_the_dominant_tensor_type_and_big_endian_reads(tmp_path):
    path = tmp_path / "small-be.gguf"
    write_gguf_header(path, arch="llama", layers=2, file_type=None, endian=GGUFEndian.BIG,
                       hidden=256, ffn=512, vocab=1000, kv_heads=2, qtype=GGMLQuantizationType.Q8_0)  # fmt: skip
    row = read_gguf(path)
    assert row.finding is None and row.details["endian"] == "big"
    assert row.file_type == "Q8_0 (guessed)"
    assert row.block_count == 2 and row.embedding_length == 256 and row.head_count_kv == 2


# -- safetensors ------------------------------------------------------------------------------


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], *, cut: int = 0, metadata=None) -> int:
    sizes = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8, "F8_E4M3": 1}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = int(np.prod(shape)) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes with spaces
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + os.urandom(offset - cut))
    return offset


def test_safetensors_header_gives_dtypes_parameters_and_layer_bytes(tmp_path):
    model = tmp_path / "tiny"
    model.mkdir()
    tensors = {
        "model.embed_tokens.weight": ("BF16", [1000, 64]),
        "model.layers.0.self_attn.q_proj.weight": ("BF16", [64, 64]),
        "model.layers.0.input_layernorm.weight": ("F32", [64]),
        "model.layers.1.self_attn.q_proj.weight": ("BF16", [64, 64]),
        "model.layers.1.input_layernorm.weight": ("F32", [64]),
        "model.norm.weight": ("F32", [64]),
        "lm_head.weight": ("BF16", [1000, 64]),
    }
    data_bytes = _write_safetensors(model / "model.safetensors", tensors, metadata={"format": "pt"})
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "num_hidden_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 4096,
                "torch_dtype": "bfloat16",
                "tie_word_embeddings": False,
            }
        )  # fmt: skip
    )
    row = read_safetensors(model / "model.safetensors")
    assert row.finding is None
    assert row.parameters == 1000 * 64 * 2 + 64 * 64 * 2 + 64 * 3
    assert row.tensor_types == {"BF16": 4, "F32": 3} and row.file_type == "BF16"
    assert row.tensor_bytes == data_bytes
    assert row.layer_bytes == 64 * 64 * 2 + 64 * 4 and row.non_layer_bytes == data_bytes - 2 * row.layer_bytes
    assert row.token_embd_bytes == 1000 * 64 * 2 and row.tied_embeddings is False
    assert row.details["metadata"] == {"format": "pt"}
    # Shape facts come from the config.json beside the weights.
    assert (row.architecture, row.block_count, row.head_count_kv, row.key_length) == ("llama", 2, 2, 16)
    assert row.context_length == 4096


def _st(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b"\x10\x00", "truncated: 2 bytes is too short"),
        (struct.pack("<Q", 2**40) + b"{}", "corrupt: header length 1,099,511,627,776 exceeds"),
        (struct.pack("<Q", 500) + b'{"a": 1}', "truncated: header of 500 bytes but the file has 16"),
        (_st(b'{"a": {"dty'), "corrupt: header is not valid JSON"),
        (_st(b"\xff\xfe\xfd\xfc"), "corrupt: header is not valid JSON"),
        (_st(b"[]"), "corrupt: header is a JSON list"),
        (
            _st(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}') + b"\0" * 4,
            "corrupt: tensor 'w' (F32 [2]) should take 8 bytes but its offsets span 4",
        ),
        (_st(b'{"w": {"dtype": "F32", "shape": [2]}}'), "corrupt: tensor 'w' has bad data_offsets"),
        (_st(b'{"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}'), "corrupt: tensor 'w' has a bad shape"),
        (_st(b'{"w": "F32"}'), "corrupt: entry 'w' is not an object"),
    ],  # fmt: skip
)
def test_corrupt_safetensors_headers_are_findings(tmp_path, payload, expected):
    path = tmp_path / "model.safetensors"
    path.write_bytes(payload)
    row = read_safetensors(path)
    assert row.finding and row.finding.startswith(expected), row.finding


def test_safetensors_with_missing_data_is_truncated(tmp_path):
    path = tmp_path / "model.safetensors"
    _write_safetensors(path, {"a": ("F16", [1024, 1024]), "b": ("F16", [1024])}, cut=1000)
    row = read_safetensors(path)
    assert row.finding.startswith("truncated: tensor data ends at") and "(missing 1,000)" in row.finding
    assert row.parameters == 1024 * 1024 + 1024  # the header itself was fine


# -- the scan and the history table ----------------------------------------------------------


@pytest.mark.model
def test_scan_classifies_skips_hidden_files_and_records_idempotently(gemma, tmp_path):
    models = tmp_path / "models"
    (models / "gemma").mkdir(parents=True)
    os.link(gemma, models / "gemma" / DEMO_MODEL_FILE)
    (models / "broken.gguf").write_bytes(b"\x00" * 64)
    (models / ".big.gguf.part").write_bytes(b"GGUF")  # an unfinished download: not inventory
    (models / "notes.txt").write_text("not a model file")
    hf = models / "hf" / "tiny"
    hf.mkdir(parents=True)
    _write_safetensors(hf / "model.safetensors", {"model.layers.0.w": ("BF16", [8, 8])})
    (hf / "config.json").write_text(json.dumps({"model_type": "qwen2", "num_hidden_layers": 1}))
    (hf / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1}}}))
    (hf / "tokenizer_config.json").write_text("{not json")

    rows = scan_models(models)
    by_path = {r.relpath: r for r in rows}
    assert sorted(by_path) == [
        "broken.gguf",
        f"gemma/{DEMO_MODEL_FILE}",
        "hf/tiny/config.json",
        "hf/tiny/model.safetensors",
        "hf/tiny/tokenizer.json",
        "hf/tiny/tokenizer_config.json",
    ]
    assert by_path["broken.gguf"].finding.startswith("corrupt: not a GGUF file")
    assert by_path["hf/tiny/tokenizer_config.json"].finding.startswith("corrupt: not valid JSON")
    assert by_path["hf/tiny/tokenizer.json"].details["vocab_size"] == 2
    assert by_path["hf/tiny/config.json"].architecture == "qwen2"
    assert by_path["hf/tiny/model.safetensors"].architecture == "qwen2"

    db = tmp_path / "history.duckdb"
    assert record_scan(db, models, rows) == 6
    assert record_scan(db, models, rows) == 6  # a rescan replaces, never duplicates
    stored = load_inventory(db, models)
    assert len(stored) == 6
    g = next(r for r in stored if r["path"].endswith(DEMO_MODEL_FILE))
    assert (g["architecture"], g["parameters"], g["file_type"], g["block_count"]) == (
        "gemma3",
        268_098_176,
        "Q4_K_M",
        18,
    )
    assert g["root"] == str(models.resolve()) and g["tensor_types"]["Q4_K"] == 27
    assert g["details"]["layer_bytes_each"][0] > 0 and g["scanned_at"] is not None

    # A removed file leaves the table on the next scan; another root's rows stay.
    (models / "broken.gguf").unlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.gguf").write_bytes(b"nope")
    record_scan(db, other, scan_models(other))
    record_scan(db, models, scan_models(models))
    assert len(load_inventory(db, models)) == 5 and len(load_inventory(db, other)) == 1
    assert len(load_inventory(db)) == 6


def test_a_missing_models_dir_cannot_be_scanned(tmp_path):
    with pytest.raises(ModelScanError, match="does not exist"):
        scan_models(tmp_path / "absent")
