"""Small GGUF files written by the gguf package."""

from __future__ import annotations

from pathlib import Path


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
