"""Model-file inventory: what the models dir holds, read from file headers only.

Kinds scanned: ``.gguf`` (llama.cpp), ``.safetensors`` (Hugging Face / vLLM),
``config.json`` and tokenizer files. Every file becomes one :class:`ModelFile`;
one that cannot be read or parsed is a row whose ``finding`` says why, never an
exception: a corrupt 40 GB download must show up in the table, not hide the rest.

Why a header walker of our own instead of ``gguf.GGUFReader``: the reader turns
every element of every metadata array into a numpy view, so the 262,144-token
vocabulary of the 270M demo model alone costs ~11 s (measured here), and it maps
the whole file with ``np.memmap``, where a file truncated under our feet raises
SIGBUS instead of an error. We walk the header with buffered reads, step over
large arrays without materialising them, and take the format's definitions
(value types, quantisation block sizes, file-type names, metadata key names)
from the ``gguf`` package so they stay in step with llama.cpp. Tensor data is
never read: only its extents are checked against the file size.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from gguf.constants import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGMLQuantizationType,
    GGUFValueType,
    Keys,
    LlamaFileType,
)

from idp_ops.errors import IdpOpsError

KIND_GGUF = "gguf"
KIND_SAFETENSORS = "safetensors"
KIND_CONFIG = "config"
KIND_TOKENIZER = "tokenizer"

TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
    }
)

GGUF_SUPPORTED_VERSIONS = (2, 3)
# llama.cpp's GGML_MAX_DIMS is 4; a larger count means we are reading garbage.
GGUF_MAX_DIMS = 4
# Metadata arrays up to this length are kept (per-layer head counts, tags);
# longer ones (vocabularies, merges, scores) are stepped over and only counted.
SMALL_ARRAY = 1024
# llama.cpp writes flat arrays; deep nesting only comes from corrupt bytes (and would recurse).
MAX_ARRAY_NESTING = 4
# The safetensors format caps its JSON header at 100 MB; a larger length is corruption.
SAFETENSORS_MAX_HEADER = 100_000_000

# Bits per element of each safetensors dtype (sub-byte float formats included).
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip

# Repeating blocks: llama.cpp names them blk.N.*, transformers *.layers.N.* (or .h.N. / .blocks.N.).
_GGUF_LAYER = re.compile(r"^blk\.(\d+)\.")
_HF_LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


class ModelScanError(IdpOpsError):
    """The scan cannot run at all (the models dir is missing or unreadable)."""


@dataclass
class ModelFile:
    """One row of the inventory (table ``model_files``).

    Byte fields are exact sums over the tensor directory, the numbers physics needs:
    ``tensor_bytes`` is what a decode step streams for a dense model (minus all but
    one row of ``token_embd_bytes`` when ``tied_embeddings`` is false, since then the
    output matrix is a separate tensor); ``layer_bytes`` is the mean size of one
    repeating block, what offloading one layer to the GPU moves; the KV cache grows
    by :meth:`kv_cache_bytes_per_token` per token of context.
    """

    path: str
    root: str
    kind: str
    size: int
    architecture: str | None = None
    model_name: str | None = None
    size_label: str | None = None
    parameters: int | None = None
    file_type: str | None = None
    tensor_types: dict[str, int] | None = None
    tensor_count: int | None = None
    tensor_bytes: int | None = None
    layer_bytes: int | None = None
    layer_bytes_max: int | None = None
    non_layer_bytes: int | None = None
    token_embd_bytes: int | None = None
    tied_embeddings: bool | None = None
    block_count: int | None = None
    context_length: int | None = None
    embedding_length: int | None = None
    feed_forward_length: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    sliding_window: int | None = None
    expert_count: int | None = None
    expert_used_count: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    finding: str | None = None

    @property
    def relpath(self) -> str:
        try:
            return str(Path(self.path).relative_to(self.root))
        except ValueError:
            return self.path

    def kv_cache_bytes_per_token(self, bytes_per_element: float = 2.0) -> int | None:
        """K and V for every layer for one token (f16 cache by default); None if unknown.

        Sliding-window layers stop growing past ``sliding_window`` tokens; this is the
        full-attention upper bound.
        """
        if not (self.block_count and self.head_count_kv and self.key_length and self.value_length):
            return None
        return int(self.block_count * self.head_count_kv * (self.key_length + self.value_length) * bytes_per_element)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["relpath"] = self.relpath
        return data


# Column order of the model_files table (core/history.py), besides scanned_at.
COLUMNS = [f.name for f in fields(ModelFile)]


# -- GGUF ----------------------------------------------------------------------


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


@dataclass(frozen=True)
class _LongArray:
    """A metadata array we stepped over: its element type and length only."""

    item_type: str
    length: int


_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}


class _HeaderReader:
    """Sequential reads through a buffer that grows only as far as the header goes."""

    CHUNK = 1 << 20

    def __init__(self, handle: BinaryIO, size: int):
        self.handle = handle
        self.size = size
        self.buf = b""
        self.off = 0  # position inside buf
        self.base = 0  # file offset of buf[0]
        self.endian = "<"
        self._structs: dict[str, struct.Struct] = {}

    @property
    def pos(self) -> int:
        return self.base + self.off

    def _need(self, n: int) -> None:
        if self.off + n <= len(self.buf):
            return
        if self.pos + n > self.size:
            raise _Truncated(f"header needs {n:,} bytes at offset {self.pos:,} but the file ends at {self.size:,}")
        rest = self.buf[self.off :]
        self.base += self.off
        self.off = 0
        self.buf = rest + self.handle.read(max(n - len(rest), self.CHUNK))
        if len(self.buf) < n:  # the file shrank while we read it
            raise _Truncated(f"file ended at offset {self.base + len(self.buf):,} while reading the header")

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise _Truncated(f"header needs {n:,} bytes at offset {self.pos:,} but the file ends at {self.size:,}")
        if self.off + n <= len(self.buf):
            self.off += n
            return
        self.base = self.pos + n
        self.handle.seek(self.base)
        self.buf, self.off = b"", 0

    def unpack(self, fmt: str) -> Any:
        st = self._structs.get(fmt)
        if st is None:
            st = self._structs[fmt] = struct.Struct(self.endian + fmt)
        self._need(st.size)
        (value,) = st.unpack_from(self.buf, self.off)
        self.off += st.size
        return value

    def string(self) -> str:
        length = self.unpack("Q")
        self._need(length)
        raw = self.buf[self.off : self.off + length]
        self.off += length
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        # A vocabulary is ~10^5 length-prefixed strings: keep the common case (both the
        # length and the bytes already buffered) in one tight loop without calls.
        unpack_len = struct.Struct(self.endian + "Q").unpack_from
        buf, off, remaining = self.buf, self.off, count
        while remaining:
            end = len(buf)
            while remaining and off + 8 <= end:
                (length,) = unpack_len(buf, off)
                if off + 8 + length > end:
                    break
                off += 8 + length
                remaining -= 1
            if not remaining:
                break
            self.off = off
            self.skip(self.unpack("Q"))
            remaining -= 1
            buf, off = self.buf, self.off
        self.off = off

    def value(self, vtype: int, where: str, depth: int = 0) -> Any:
        if depth > MAX_ARRAY_NESTING:
            raise _Corrupt(f"arrays nested deeper than {MAX_ARRAY_NESTING} levels in {where}")
        try:
            gtype = GGUFValueType(vtype)
        except ValueError:
            raise _Corrupt(f"unknown value type {vtype} for {where} at offset {self.pos:,}") from None
        if gtype == GGUFValueType.STRING:
            return self.string()
        if gtype in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[gtype])
        # ARRAY: element type, length, elements.
        item_raw = self.unpack("I")
        length = self.unpack("Q")
        try:
            item_type = GGUFValueType(item_raw)
        except ValueError:
            raise _Corrupt(f"unknown array element type {item_raw} for {where}") from None
        if item_type in _SCALAR_FORMATS:
            item_size = struct.calcsize(_SCALAR_FORMATS[item_type])
            if self.pos + length * item_size > self.size:
                raise _Truncated(
                    f"array {where} of {length:,} items at offset {self.pos:,} runs past the end: the file ends at {self.size:,}"
                )
            if length > SMALL_ARRAY:
                self.skip(length * item_size)
                return _LongArray(item_type.name, length)
            return [self.unpack(_SCALAR_FORMATS[item_type]) for _ in range(length)]
        if item_type == GGUFValueType.STRING:
            if self.pos + length * 8 > self.size:
                raise _Truncated(
                    f"array {where} of {length:,} strings at offset {self.pos:,} runs past the end: the file ends at {self.size:,}"
                )
            if length > SMALL_ARRAY:
                self.skip_strings(length)
                return _LongArray("STRING", length)
            return [self.string() for _ in range(length)]
        # Arrays of arrays: legal, rare; keep only their count.
        for index in range(length):
            self.value(item_raw, f"{where}[{index}]", depth + 1)
        return _LongArray(item_type.name, length)


@dataclass
class _TensorInfo:
    name: str
    ggml_type: str
    n_elements: int
    n_bytes: int
    offset: int


def _read_gguf_header(handle: BinaryIO, size: int, out: dict[str, Any]) -> None:
    """Fill ``out`` with version, fields, tensors and data_start as far as the header allows.

    Raises _Truncated/_Corrupt with what went wrong; what was read before stays in ``out``.
    """
    reader = _HeaderReader(handle, size)
    if size < 4:
        raise _Truncated(f"{size} bytes is too short for a GGUF header")
    magic = handle.read(4)
    if magic != b"GGUF":
        raise _Corrupt(f"not a GGUF file: magic {magic!r}, expected b'GGUF'")
    reader.base = 4
    version = reader.unpack("I")
    if version & 0xFFFF == 0:  # written on a big-endian machine
        reader.endian = ">"
        reader._structs.clear()
        version = struct.unpack(">I", struct.pack("<I", version))[0]
    out["version"] = version
    out["endian"] = "big" if reader.endian == ">" else "little"
    if version not in GGUF_SUPPORTED_VERSIONS:
        raise _Corrupt(f"unsupported GGUF version {version} (readable: {GGUF_SUPPORTED_VERSIONS})")
    tensor_count = reader.unpack("Q")
    kv_count = reader.unpack("Q")
    # Each key/value takes at least 13 bytes and each tensor info at least 28: counts
    # beyond what the file could hold are garbage, not something to loop over.
    if kv_count * 13 + tensor_count * 28 > size:
        raise _Corrupt(
            f"header claims {kv_count:,} metadata keys and {tensor_count:,} tensors, more than {size:,} bytes can hold"
        )
    out["tensor_count"] = tensor_count
    metadata: dict[str, Any] = {}
    out["fields"] = metadata
    for _ in range(kv_count):
        key = reader.string()
        vtype = reader.unpack("I")
        if key in metadata:
            raise _Corrupt(f"duplicate metadata key {key!r}")
        metadata[key] = reader.value(vtype, repr(key))
    tensors: list[_TensorInfo] = []
    for _ in range(tensor_count):
        name = reader.string()
        n_dims = reader.unpack("I")
        if n_dims > GGUF_MAX_DIMS:
            raise _Corrupt(f"tensor {name!r} claims {n_dims} dimensions (at most {GGUF_MAX_DIMS})")
        dims = [reader.unpack("Q") for _ in range(n_dims)]
        raw_type = reader.unpack("I")
        offset = reader.unpack("Q")
        try:
            ggml_type = GGMLQuantizationType(raw_type)
            block, type_size = GGML_QUANT_SIZES[ggml_type]
        except (ValueError, KeyError):
            raise _Corrupt(f"tensor {name!r} has unknown type {raw_type} (newer llama.cpp? upgrade gguf)") from None
        n_elements = math.prod(dims)
        if dims and dims[0] % block:
            raise _Corrupt(f"tensor {name!r}: row of {dims[0]} is not a multiple of the {ggml_type.name} block {block}")
        tensors.append(_TensorInfo(name, ggml_type.name, n_elements, n_elements * type_size // block, offset))
    out["tensors"] = tensors
    alignment = metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Corrupt(f"general.alignment {alignment!r} is not a power of two")
    data_start = -(-reader.pos // alignment) * alignment
    out["data_start"] = data_start
    # Check tensor extents, not contents: reading 40 GB to find a short file is what we avoid.
    for tensor in tensors:
        if tensor.offset % alignment:
            raise _Corrupt(f"tensor {tensor.name!r} data offset {tensor.offset} is not aligned to {alignment}")
        end = data_start + tensor.offset + tensor.n_bytes
        if end > size:
            raise _Truncated(
                f"tensor {tensor.name!r} ends at byte {end:,} but the file has {size:,} bytes "
                f"(missing {end - size:,}: an interrupted copy or download?)"
            )


def _file_type_name(value: Any, tensors: list[_TensorInfo] | None) -> str | None:
    if isinstance(value, int):
        try:
            member = LlamaFileType(value)
        except ValueError:
            return f"unknown ({value})"
        if member != LlamaFileType.GUESSED:
            return "F32" if member == LlamaFileType.ALL_F32 else member.name.removeprefix("MOSTLY_")
    # No (usable) general.file_type: name the type holding most of the bytes.
    if not tensors:
        return None
    by_type: Counter[str] = Counter()
    for tensor in tensors:
        by_type[tensor.ggml_type] += tensor.n_bytes
    return f"{by_type.most_common(1)[0][0]} (guessed)"


def _scalar(value: Any) -> int | None:
    """An int from a scalar or a per-layer array (the largest entry, which bounds the cost)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return max(value)
    return None


def _layer_stats(names_bytes: list[tuple[str, int]], pattern: re.Pattern[str]) -> dict[str, Any]:
    per_layer: dict[int, int] = {}
    for name, n_bytes in names_bytes:
        match = pattern.search(name)
        if match:
            index = int(match.group(1))
            per_layer[index] = per_layer.get(index, 0) + n_bytes
    total = sum(b for _, b in names_bytes)
    if not per_layer:
        return {"tensor_bytes": total, "non_layer_bytes": total}
    layers = [per_layer[i] for i in sorted(per_layer)]
    return {
        "tensor_bytes": total,
        "layer_bytes": sum(layers) // len(layers),
        "layer_bytes_max": max(layers),
        "non_layer_bytes": total - sum(layers),
        "layer_bytes_each": layers,
    }


def read_gguf(path: Path, root: Path | None = None) -> ModelFile:
    """Header facts of one GGUF file; problems become ``finding``, never an exception."""
    path = Path(path)
    row = ModelFile(path=str(path), root=str(root or path.parent), kind=KIND_GGUF, size=0)
    parsed: dict[str, Any] = {}
    problems: list[str] = []
    try:
        with path.open("rb") as handle:
            row.size = os.fstat(handle.fileno()).st_size
            _read_gguf_header(handle, row.size, parsed)
    except _Truncated as exc:
        problems.append(f"truncated: {exc}")
    except _Corrupt as exc:
        problems.append(f"corrupt: {exc}")
    except OSError as exc:
        problems.append(f"unreadable: {exc.strerror or exc}")
    except (UnicodeDecodeError, OverflowError, MemoryError, struct.error) as exc:
        problems.append(f"corrupt: {type(exc).__name__}: {exc}")

    metadata: dict[str, Any] = parsed.get("fields", {})
    tensors: list[_TensorInfo] | None = parsed.get("tensors")
    arch = metadata.get(Keys.General.ARCHITECTURE)
    if isinstance(arch, str):
        row.architecture = arch
    elif "fields" in parsed and not problems:
        problems.append("no general.architecture: llama.cpp will refuse to load it")

    def arch_key(template: str) -> Any:
        return metadata.get(template.format(arch=arch)) if arch else None

    row.model_name = metadata.get(Keys.General.NAME) if isinstance(metadata.get(Keys.General.NAME), str) else None
    label = metadata.get(Keys.General.SIZE_LABEL)
    row.size_label = label if isinstance(label, str) else None
    row.block_count = _scalar(arch_key(Keys.LLM.BLOCK_COUNT))
    row.context_length = _scalar(arch_key(Keys.LLM.CONTEXT_LENGTH))
    row.embedding_length = _scalar(arch_key(Keys.LLM.EMBEDDING_LENGTH))
    row.feed_forward_length = _scalar(arch_key(Keys.LLM.FEED_FORWARD_LENGTH))
    row.head_count = _scalar(arch_key(Keys.Attention.HEAD_COUNT))
    row.head_count_kv = _scalar(arch_key(Keys.Attention.HEAD_COUNT_KV))
    # llama.cpp's defaults when absent: KV heads = heads, head size = embedding / heads.
    if row.head_count_kv is None and row.head_count is not None:
        row.head_count_kv = row.head_count
    row.key_length = _scalar(arch_key(Keys.Attention.KEY_LENGTH))
    row.value_length = _scalar(arch_key(Keys.Attention.VALUE_LENGTH))
    if row.embedding_length and row.head_count:
        row.key_length = row.key_length or row.embedding_length // row.head_count
        row.value_length = row.value_length or row.embedding_length // row.head_count
    row.sliding_window = _scalar(arch_key(Keys.Attention.SLIDING_WINDOW))
    row.expert_count = _scalar(arch_key(Keys.LLM.EXPERT_COUNT))
    row.expert_used_count = _scalar(arch_key(Keys.LLM.EXPERT_USED_COUNT))
    if metadata or tensors is not None:
        row.file_type = _file_type_name(metadata.get(Keys.General.FILE_TYPE), tensors)

    details: dict[str, Any] = {k: parsed[k] for k in ("version", "endian", "data_start") if k in parsed}
    if "tensor_count" in parsed:
        details["declared_tensor_count"] = parsed["tensor_count"]
    for key in (Keys.General.QUANTIZATION_VERSION, Keys.General.BASENAME, Keys.General.FINETUNE, Keys.General.TAGS):
        if key in metadata and not isinstance(metadata[key], _LongArray):
            details[key.removeprefix("general.")] = metadata[key]
    tokens = metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, (_LongArray, list)):
        details["vocab_size"] = tokens.length if isinstance(tokens, _LongArray) else len(tokens)
    for key in ("split.no", "split.count", "split.tensors.count"):
        if key in metadata:
            # A split GGUF holds only its share of the tensors: sum the shards for the model.
            details[key] = metadata[key]
    for name, template in (("head_count", Keys.Attention.HEAD_COUNT), ("head_count_kv", Keys.Attention.HEAD_COUNT_KV)):
        if isinstance(arch_key(template), list):
            details[f"{name}_per_layer"] = arch_key(template)

    # Tensor-derived facts only when the whole tensor directory was read: half a
    # directory would give a plausible-looking but wrong parameter count.
    if tensors is not None:
        # GGUF has no parameter-count key; the sum of element counts is exact.
        row.parameters = sum(t.n_elements for t in tensors)
        row.tensor_count = len(tensors)
        row.tensor_types = dict(sorted(Counter(t.ggml_type for t in tensors).items()))
        stats = _layer_stats([(t.name, t.n_bytes) for t in tensors], _GGUF_LAYER)
        details["layer_bytes_each"] = stats.pop("layer_bytes_each", [])
        for key, value in stats.items():
            setattr(row, key, value)
        names = {t.name: t for t in tensors}
        embd = names.get("token_embd.weight")
        row.token_embd_bytes = embd.n_bytes if embd else None
        # No output.weight: llama.cpp reuses token_embd as the output matrix.
        row.tied_embeddings = "output.weight" not in names if embd else None
    row.details = details
    row.finding = "; ".join(problems) or None
    return row


# -- safetensors ---------------------------------------------------------------


def _hf_config(directory: Path) -> dict[str, Any] | None:
    """The transformers config.json beside a weights file, text_config merged in (multimodal models)."""
    try:
        data = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    text = data.get("text_config")
    if isinstance(text, dict):
        data = {**data, **{k: v for k, v in text.items() if v is not None}}
    return data


def _apply_hf_config(row: ModelFile, config: dict[str, Any]) -> None:
    def first(*keys: str) -> Any:
        for key in keys:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    model_type = config.get("model_type")
    architectures = config.get("architectures")
    row.architecture = row.architecture or (model_type if isinstance(model_type, str) else None)
    if isinstance(architectures, list) and architectures:
        row.details.setdefault("architectures", architectures)
    row.block_count = first("num_hidden_layers", "n_layer", "num_layers")
    row.context_length = first("max_position_embeddings", "n_positions", "max_sequence_length")
    row.embedding_length = first("hidden_size", "n_embd", "d_model")
    row.feed_forward_length = first("intermediate_size", "n_inner", "ffn_dim")
    row.head_count = first("num_attention_heads", "n_head")
    row.head_count_kv = first("num_key_value_heads") or row.head_count
    head_dim = first("head_dim")
    if head_dim is None and row.embedding_length and row.head_count:
        head_dim = row.embedding_length // row.head_count
    row.key_length = row.value_length = head_dim
    row.sliding_window = first("sliding_window")
    row.expert_count = first("num_local_experts", "num_experts", "n_routed_experts")
    row.expert_used_count = first("num_experts_per_tok", "num_experts_per_token")


def read_safetensors(path: Path, root: Path | None = None) -> ModelFile:
    """The JSON header of one safetensors file (8-byte LE length, JSON, data)."""
    path = Path(path)
    row = ModelFile(path=str(path), root=str(root or path.parent), kind=KIND_SAFETENSORS, size=0)
    try:
        with path.open("rb") as handle:
            row.size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            if len(head) < 8:
                row.finding = f"truncated: {row.size} bytes is too short for a safetensors header"
                return row
            (length,) = struct.unpack("<Q", head)
            if length > SAFETENSORS_MAX_HEADER:
                row.finding = f"corrupt: header length {length:,} exceeds the format's {SAFETENSORS_MAX_HEADER:,} bytes"
                return row
            if 8 + length > row.size:
                row.finding = f"truncated: header of {length:,} bytes but the file has {row.size:,}"
                return row
            raw = handle.read(length)
    except OSError as exc:
        row.finding = f"unreadable: {exc.strerror or exc}"
        return row
    try:
        header = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        row.finding = f"corrupt: header is not valid JSON ({exc})"
        return row
    if not isinstance(header, dict):
        row.finding = f"corrupt: header is a JSON {type(header).__name__}, not an object"
        return row
    data_size = row.size - 8 - length
    metadata = header.pop("__metadata__", None)
    if isinstance(metadata, dict):
        row.details["metadata"] = {k: v for k, v in metadata.items() if isinstance(v, str) and len(v) < 200}
    dtypes: Counter[str] = Counter()
    bytes_by_dtype: Counter[str] = Counter()
    names_bytes: list[tuple[str, int]] = []
    parameters = 0
    data_end = 0
    for name, info in header.items():
        problem = _safetensors_entry_problem(name, info)
        if problem:
            row.finding = f"corrupt: {problem}"
            return row
        begin, end = info["data_offsets"]
        numel = math.prod(info["shape"])
        bits = SAFETENSORS_DTYPE_BITS.get(info["dtype"])
        if bits is not None and end - begin != -(-numel * bits // 8):
            row.finding = (
                f"corrupt: tensor {name!r} ({info['dtype']} {info['shape']}) should take "
                f"{-(-numel * bits // 8):,} bytes but its offsets span {end - begin:,}"
            )
            return row
        parameters += numel
        dtypes[info["dtype"]] += 1
        bytes_by_dtype[info["dtype"]] += end - begin
        names_bytes.append((name, end - begin))
        data_end = max(data_end, end)
    unknown = sorted(d for d in dtypes if d not in SAFETENSORS_DTYPE_BITS)
    if unknown:
        row.details["unknown_dtypes"] = unknown  # counted, sizes unchecked
    row.parameters = parameters
    row.tensor_count = len(names_bytes)
    row.tensor_types = dict(sorted(dtypes.items()))
    row.file_type = bytes_by_dtype.most_common(1)[0][0] if bytes_by_dtype else None
    stats = _layer_stats(names_bytes, _HF_LAYER)
    row.details["layer_bytes_each"] = stats.pop("layer_bytes_each", [])
    for key, value in stats.items():
        setattr(row, key, value)
    embed = [b for n, b in names_bytes if n.endswith("embed_tokens.weight") or n.endswith("wte.weight")]
    row.token_embd_bytes = embed[0] if embed else None
    if embed:
        row.tied_embeddings = not any(n.endswith("lm_head.weight") for n, _ in names_bytes)
    config = _hf_config(path.parent)
    if config:
        _apply_hf_config(row, config)
        if isinstance(config.get("tie_word_embeddings"), bool):
            row.tied_embeddings = config["tie_word_embeddings"]
    if data_end > data_size:
        row.finding = (
            f"truncated: tensor data ends at byte {8 + length + data_end:,} but the file has {row.size:,} bytes "
            f"(missing {data_end - data_size:,})"
        )
    return row


def _safetensors_entry_problem(name: str, info: Any) -> str | None:
    if not isinstance(info, dict):
        return f"entry {name!r} is not an object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        return f"tensor {name!r} has no dtype"
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return f"tensor {name!r} has a bad shape {shape!r}"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        return f"tensor {name!r} has bad data_offsets {offsets!r}"
    return None


# -- config.json and tokenizer files -----------------------------------------------


def read_config(path: Path, root: Path | None = None) -> ModelFile:
    path = Path(path)
    row = ModelFile(path=str(path), root=str(root or path.parent), kind=KIND_CONFIG, size=0)
    try:
        row.size = path.stat().st_size
        data = json.loads(path.read_bytes())
    except OSError as exc:
        row.finding = f"unreadable: {exc.strerror or exc}"
        return row
    except ValueError as exc:
        row.finding = f"corrupt: not valid JSON ({exc})"
        return row
    if not isinstance(data, dict):
        row.finding = f"corrupt: a JSON {type(data).__name__}, not an object"
        return row
    merged = _hf_config(path.parent) or data
    _apply_hf_config(row, merged)
    if isinstance(merged.get("torch_dtype") or merged.get("dtype"), str):
        row.file_type = merged.get("torch_dtype") or merged.get("dtype")
    return row


def read_tokenizer(path: Path, root: Path | None = None) -> ModelFile:
    path = Path(path)
    row = ModelFile(path=str(path), root=str(root or path.parent), kind=KIND_TOKENIZER, size=0)
    try:
        row.size = path.stat().st_size
        if row.size == 0:
            row.finding = "empty file"
        elif path.suffix == ".json":
            data = json.loads(path.read_bytes())
            vocab = (
                data.get("model", {}).get("vocab")
                if isinstance(data, dict) and isinstance(data.get("model"), dict)
                else None
            )
            if isinstance(vocab, (dict, list)):
                row.details["vocab_size"] = len(vocab)
    except OSError as exc:
        row.finding = f"unreadable: {exc.strerror or exc}"
    except ValueError as exc:
        row.finding = f"corrupt: not valid JSON ({exc})"
    return row


# -- the scan ------------------------------------------------------------------------


def classify(name: str) -> str | None:
    """The kind of a file by its name, or None when the inventory ignores it."""
    lower = name.lower()
    if lower.endswith(".gguf"):
        return KIND_GGUF
    if lower.endswith(".safetensors"):
        return KIND_SAFETENSORS
    if lower == "config.json":
        return KIND_CONFIG
    if lower in TOKENIZER_FILES or (lower.startswith("tokenizer") and not lower.endswith((".py", ".pyc"))):
        return KIND_TOKENIZER
    return None


_READERS = {
    KIND_GGUF: read_gguf,
    KIND_SAFETENSORS: read_safetensors,
    KIND_CONFIG: read_config,
    KIND_TOKENIZER: read_tokenizer,
}


def scan_models(root: Path) -> list[ModelFile]:
    """Every model file under ``root``, sorted by path.

    Hidden files and directories are skipped: partial downloads (``.name.part``),
    temp files and the backup marker live there. Directory symlinks are not
    followed (no loops, no scanning a mounted backup twice); file symlinks are.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ModelScanError(f"models dir {root} does not exist or is not a directory")
    rows: list[ModelFile] = []
    walk_errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_errors.append):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            kind = None if name.startswith(".") else classify(name)
            if kind:
                path = Path(dirpath) / name
                try:
                    rows.append(_READERS[kind](path, root))
                except Exception as exc:  # a reader bug must cost one row, not the inventory
                    rows.append(
                        ModelFile(
                            path=str(path),
                            root=str(root),
                            kind=kind,
                            size=0,
                            finding=f"unreadable: unexpected {type(exc).__name__}: {exc}",
                        )  # fmt: skip
                    )
    for error in walk_errors:
        if error.filename and Path(error.filename) == root:
            raise ModelScanError(f"cannot read models dir {root}: {error.strerror}")
        # An unreadable subdirectory is a finding too: its models would vanish silently otherwise.
        rows.append(
            ModelFile(
                path=str(error.filename),
                root=str(root),
                kind="directory",
                size=0,
                finding=f"unreadable: {error.strerror}",
            )
        )
    return sorted(rows, key=lambda r: r.path)


# -- history -------------------------------------------------------------------------

_JSON_COLUMNS = ("tensor_types", "details")


def record_scan(history_file: Path, root: Path, rows: list[ModelFile], *, scanned_at: datetime | None = None) -> int:
    """Replace ``root``'s rows in ``model_files`` with ``rows`` in one transaction; returns the count."""
    from idp_ops.history import database as history

    scanned_at = scanned_at or datetime.now(UTC)
    root_text = str(Path(root).expanduser().resolve())
    values = []
    for row in rows:
        data = asdict(row)
        data["root"] = root_text
        for column in _JSON_COLUMNS:
            data[column] = json.dumps(data[column], sort_keys=True, default=str) if data[column] is not None else None
        values.append([data[c] for c in COLUMNS] + [scanned_at])
    placeholders = ", ".join("?" for _ in range(len(COLUMNS) + 1))
    with history.connect(history_file) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("DELETE FROM model_files WHERE root = ?", [root_text])
            # A path last scanned under another root (a parent or child dir) moves to this one.
            paths = [row.path for row in rows]
            if paths:
                con.execute("DELETE FROM model_files WHERE list_contains(?, path)", [paths])
                con.executemany(
                    f"INSERT INTO model_files ({', '.join(COLUMNS)}, scanned_at) VALUES ({placeholders})", values
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return len(rows)


def load_inventory(history_file: Path, root: Path | None = None) -> list[dict[str, Any]]:
    """The recorded rows (JSON columns decoded), for physics and reports."""
    from idp_ops.history import database as history

    if not Path(history_file).exists():
        return []
    query = "SELECT * FROM model_files"
    params: list[Any] = []
    if root is not None:
        query += " WHERE root = ?"
        params.append(str(Path(root).expanduser().resolve()))
    with history.connect(history_file, read_only=True) as con:
        cursor = con.execute(query + " ORDER BY path", params)
        names = [d[0] for d in cursor.description]
        result = [dict(zip(names, values)) for values in cursor.fetchall()]
    for item in result:
        for column in _JSON_COLUMNS:
            if item.get(column):
                item[column] = json.loads(item[column])
    return result
