"""Small GGUF files written by the gguf package."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFEndian, GGUFWriter


def tiny_gguf(path: Path) -> bytes:
    """A small but complete GGUF (header, metadata and tensors) written by the gguf package."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_context_length(2048)
    writer.add_embedding_length(32)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_file_type(1)  # MOSTLY_F16
    for i in range(2):
        writer.add_tensor(f"blk.{i}.attn_q.weight", np.ones((32, 32), dtype=np.float16))
    writer.add_tensor("token_embd.weight", np.ones((100, 32), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


# Sizes no test machine can hold: a header with no tensor data, the rest a sparse hole.
def write_gguf_header(path: Path, *, arch: str, layers: int, file_type: int | None, endian=GGUFEndian.LITTLE,
                       hidden: int = 8192, ffn: int = 28672, vocab: int = 128256, kv_heads: int = 8,
                       qtype=GGMLQuantizationType.Q4_K) -> int:  # fmt: skip
    """A llama-shaped GGUF header with no tensor data; returns the total tensor bytes."""
    writer = GGUFWriter(path, arch, endianess=endian)
    writer.add_block_count(layers)
    writer.add_context_length(131072)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(64)
    writer.add_head_count_kv(kv_heads)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_array("general.tags", ["synthetic"])

    def tensor(name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType) -> None:
        block, size = GGML_QUANT_SIZES[qtype]
        writer.add_tensor_info(name, shape, np.float16, int(np.prod(shape)) * size // block, raw_dtype=qtype)

    tensor("token_embd.weight", (vocab, hidden), GGMLQuantizationType.Q6_K)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (hidden,), GGMLQuantizationType.F32)
        tensor(f"blk.{i}.attn_q.weight", (hidden, hidden), qtype)
        tensor(f"blk.{i}.attn_k.weight", (hidden // 8, hidden), qtype)
        tensor(f"blk.{i}.attn_v.weight", (hidden // 8, hidden), qtype)
        tensor(f"blk.{i}.attn_output.weight", (hidden, hidden), qtype)
        tensor(f"blk.{i}.ffn_gate.weight", (ffn, hidden), qtype)
        tensor(f"blk.{i}.ffn_up.weight", (ffn, hidden), qtype)
        tensor(f"blk.{i}.ffn_down.weight", (hidden, ffn), qtype)
    tensor("output_norm.weight", (hidden,), GGMLQuantizationType.F32)
    tensor("output.weight", (vocab, hidden), GGMLQuantizationType.Q6_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    total = sum(writer.ggml_pad(info.nbytes, 32) for info in writer.tensors[0].values())
    data_start = writer.ggml_pad(path.stat().st_size, 32)
    os.truncate(path, data_start + total)  # sparse: the "tensor data" costs no disk
    return total
