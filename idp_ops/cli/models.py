"""`idp-ops inventory` and `idp-ops download`: the models domain's commands.

Exit status as for every command: 0 fine, 1 the work found a problem (a finding,
a failed download), 2 it could not run (bad settings, no such directory).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from idp_ops.errors import IdpOpsError


class UnknownModelError(IdpOpsError, LookupError):
    """--name named no declared download (exit 2)."""


def cmd_inventory(args: argparse.Namespace) -> int:
    from idp_ops.cli.main import emit
    from idp_ops.models.gguf_meta import record_scan, scan_models
    from idp_ops.settings import load_settings

    settings = None
    if args.dir is None or args.record:
        settings = load_settings(args.config)
    root = Path(args.dir).expanduser().resolve() if args.dir else settings.models_dir
    files = scan_models(root)
    if args.record:
        record_scan(settings.history_file, root, files)
    data = {
        "root": str(root),
        "files": [f.as_dict() for f in files],
        "findings": {f.relpath: f.finding for f in files if f.finding},
        "recorded": bool(args.record),
    }

    def human(d: dict) -> str:
        lines = [f"{d['root']}: {len(d['files'])} model files, {len(d['findings'])} findings"]
        for f in d["files"]:
            facts = " ".join(
                str(v)
                for v in (
                    f["architecture"],
                    f"{f['parameters'] / 1e9:.3f}B params" if f["parameters"] else None,
                    f["file_type"],
                    f"{f['block_count']} layers" if f["block_count"] else None,
                    f"ctx {f['context_length']}" if f["context_length"] else None,
                )
                if v
            )
            lines.append(f"  {f['kind']:<11} {f['relpath']:<48} {f['size'] / 1e9:>8.3f} GB  {facts}")
            if f["finding"]:
                lines.append(f"    FINDING: {f['finding']}")
        return "\n".join(lines)

    emit(args, data, human)
    return 1 if data["findings"] else 0


def cmd_download(args: argparse.Namespace) -> int:
    from idp_ops.cli.main import emit, progress
    from idp_ops.history.database import HistoryError
    from idp_ops.models.downloads import download_models, record_downloads
    from idp_ops.settings import load_settings

    settings = load_settings(args.config)
    specs = settings.model_downloads
    if args.name:
        unknown = sorted(set(args.name) - {s.name for s in specs})
        if unknown:
            raise UnknownModelError(f"no declared model download named {unknown}; declared: {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in args.name]
    from idp_ops.stack.secrets import HF_TOKEN_FILE_NAME

    log = progress(args)
    # Hub repos read the token from its 0600 file here, never from env or argv; at most a progress line a second.
    results = download_models(
        specs,
        settings.models_dir,
        hf_token_file=settings.secrets_dir / HF_TOKEN_FILE_NAME,
        log=log,
        progress=lambda p: log(p.describe()),
        progress_interval_s=1.0,
    )
    data = {"models_dir": str(settings.models_dir), "results": [r.as_dict() for r in results]}
    try:
        record_downloads(settings.history_file, results)
    except HistoryError as exc:  # the files are placed and verified either way
        log(f"warning: downloads not recorded in history: {exc}")

    def human(d: dict) -> str:
        if not d["results"]:
            return "no model downloads declared (settings: model_downloads)"
        lines = []
        for r in d["results"]:
            lines.append(f"{r['status']:<10} {r['name']:<30} {r['message']}")
            lines += [
                f"  {f['status']:<10} {f['path']}: {f['message']}" for f in r.get("files", []) if len(r["files"]) > 1
            ]
        return "\n".join(lines)

    emit(args, data, human)
    return 1 if any(r.status == "failed" for r in results) else 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    inventory = sub.add_parser(
        "inventory", parents=[common], help="model files and their header facts (GGUF, safetensors, configs)"
    )
    inventory.add_argument("dir", nargs="?", help="directory to scan (default: the settings' models_dir)")
    inventory.add_argument("--record", action="store_true", help="also replace this dir's rows in the history DB")
    inventory.set_defaults(func=cmd_inventory)

    download = sub.add_parser(
        "download",
        parents=[common],
        help="fetch the declared models: URLs or Hugging Face repos pinned to a commit (resumable, hash-verified)",
    )
    download.add_argument("--name", action="append", help="only this declared model (repeatable)")
    download.set_defaults(func=cmd_download)
