"""A tiny llama-architecture GGUF that the real llama-server loads and serves: random F32 weights, a few layers,
a small SentencePiece-style vocabulary with byte fallback (so any prompt tokenizes). Its text is noise, which is
what a second real model for switching and router tests needs: it loads, answers, and is not Gemma.

    write_tiny_gguf(path, seed=0, n_layers=2)         -> Path  (about 0.3 MB, well under a second)
    cached_tiny_gguf(cache_dir, seed=0, n_layers=2)   -> Path  (same bytes, built once per parameter set)

The same parameters always give the same bytes (weights come from a seeded generator), so a cached file, a
manifest hash and a test's expectation agree across runs. Different seeds give different files (and sha256).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

DEFAULT_CACHE = Path(os.environ.get("IDP_TINY_GGUF_CACHE", Path.home() / ".cache" / "idp-ops" / "tiny-gguf"))

# Word pieces after the control and byte tokens: enough that ordinary English prompts use a few merges.
_PIECES = ["▁", "▁the", "▁a", "▁is", "▁of", "▁and", "▁to", "▁in", "▁hello", "▁world", "er", "in", "on", "an", "re"]
_PIECES += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
_PIECES += [str(d) for d in range(10)] + list(".,!?'-:;()")


def _vocab() -> tuple[list[bytes], list[float], list[int]]:
    tokens: list[bytes] = [b"<unk>", b"<s>", b"</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    for b in range(256):  # byte fallback: llama.cpp's SPM tokenizer needs <0xNN> for anything not in the vocab
        tokens.append(f"<0x{b:02X}>".encode())
        types.append(TokenType.BYTE)
    for piece in _PIECES:
        tokens.append(piece.encode())
        types.append(TokenType.NORMAL)
    # SPM merges by score: longer pieces score higher so "▁hello" wins over its letters.
    scores = [0.0] * len(tokens)
    for i, tok in enumerate(tokens):
        if types[i] == TokenType.NORMAL:
            scores[i] = -100.0 + len(tok.decode()) * 10.0 - i * 0.001
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(
    path: Path,
    *,
    seed: int = 0,
    n_layers: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    context_length: int = 2048,
    name: str | None = None,
    drop_tensors: tuple[str, ...] = (),
) -> Path:
    """Write the model to ``path`` atomically (temp + rename) and return ``path``.

    ``drop_tensors`` leaves tensors out: the header stays valid (an inventory scan finds nothing wrong) but
    llama-server refuses to load the model, which is how a test makes a switch fail after its preflight.
    """
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError(f"n_embd ({n_embd}) must divide by n_head ({n_head}), n_head by n_head_kv ({n_head_kv})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    head_dim = n_embd // n_head

    def w(*shape: int) -> np.ndarray:  # numpy shape is (rows, cols) = GGUF ne reversed
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = GGUFWriter(tmp, "llama")
    writer.add_name(name or f"tiny-llama-s{seed}-l{n_layers}")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # ALL_F32
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    tensors: dict[str, np.ndarray] = {"token_embd.weight": w(n_vocab, n_embd)}
    for i in range(n_layers):
        tensors[f"blk.{i}.attn_norm.weight"] = np.ones(n_embd, dtype=np.float32)
        tensors[f"blk.{i}.attn_q.weight"] = w(n_head * head_dim, n_embd)
        tensors[f"blk.{i}.attn_k.weight"] = w(n_head_kv * head_dim, n_embd)
        tensors[f"blk.{i}.attn_v.weight"] = w(n_head_kv * head_dim, n_embd)
        tensors[f"blk.{i}.attn_output.weight"] = w(n_embd, n_head * head_dim)
        tensors[f"blk.{i}.ffn_norm.weight"] = np.ones(n_embd, dtype=np.float32)
        tensors[f"blk.{i}.ffn_gate.weight"] = w(n_ff, n_embd)
        tensors[f"blk.{i}.ffn_up.weight"] = w(n_ff, n_embd)
        tensors[f"blk.{i}.ffn_down.weight"] = w(n_embd, n_ff)
    tensors["output_norm.weight"] = np.ones(n_embd, dtype=np.float32)
    output = w(n_vocab, n_embd)
    output[:3] = 0.0  # <unk>/<s>/</s> never win at temperature 0: a completion always has some text
    tensors["output.weight"] = output
    unknown = sorted(set(drop_tensors) - set(tensors))
    if unknown:
        raise ValueError(f"drop_tensors names no tensor of this model: {unknown}")
    for tensor_name, data in tensors.items():
        if tensor_name not in drop_tensors:
            writer.add_tensor(tensor_name, data)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def cached_tiny_gguf(cache_dir: Path | None = None, *, filename: str | None = None, **params) -> Path:
    """The file ``write_tiny_gguf(**params)`` writes, built once under ``cache_dir`` (keyed by the parameters).

    ``filename`` names the cached file (default ``tiny-llama-<key>.gguf``); copy or hard-link it into a models
    directory rather than writing into the cache from a test.
    """
    cache_dir = Path(cache_dir or DEFAULT_CACHE)
    key = hashlib.sha256(json.dumps({"v": 2, **params}, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir / (filename or f"tiny-llama-{key}.gguf")
    stamp = path.with_name(path.name + ".params")
    if path.is_file() and stamp.is_file() and stamp.read_text() == key:
        return path
    write_tiny_gguf(path, **params)
    stamp.write_text(key)
    return path
