"""`idp-ops manifest`, `verify`, `backup` and `restore`: the backup domain's commands.

Exit status as for every command: 0 fine, 1 the work found a problem (a
mismatched or missing file, a backup that made no good snapshot, refused a
shrunken or empty store, found the store corrupt or could not copy the box's
state), 2 it could not run (bad settings, no such directory or manifest, a
restore stopped before replacing anything, a restore target that exists).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def cmd_manifest(args: argparse.Namespace) -> int:
    from idp_ops.backup.manifest import build_manifest, write_manifest
    from idp_ops.cli.main import emit, progress
    from idp_ops.settings import load_settings

    settings = load_settings(args.config)
    root = Path(args.dir).expanduser().resolve()
    output = Path(args.output).expanduser().resolve() if args.output else root
    log = progress(args)
    built = build_manifest(
        root,
        cache_file=None if args.no_cache else settings.history_file,
        excludes=settings.backup.excludes,
        workers=settings.backup.hash_workers,
        progress=lambda p: log(p.describe()),
    )
    json_file, sums_file = write_manifest(built.manifest, output)
    data = {"root": str(root), "manifest": str(json_file), "sha256sums": str(sums_file), **built.stats.as_dict()}

    def human(d: dict) -> str:
        return (
            f"{d['root']}: {d['files']} files, {d['bytes'] / 1e9:.2f} GB; {d['hashed_files']} hashed "
            f"({d['hashed_bytes'] / 1e9:.2f} GB at {d['hash_rate_mb_s']} MB/s), {d['reused_files']} unchanged "
            f"(cached); {d['seconds']} s\n"
            f"  {d['manifest']}\n  {d['sha256sums']}  (cd {d['root']} && sha256sum -c {d['sha256sums']})"
        )

    emit(args, data, human)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from idp_ops.backup.manifest import verify
    from idp_ops.cli.main import emit, progress

    log = progress(args)
    result = verify(Path(args.dir).expanduser(), Path(args.manifest).expanduser(), progress=lambda p: log(p.describe()))

    def human(d: dict) -> str:
        lines = [
            f"{args.dir}: {d['checked']} files checked, {len(d['mismatched'])} mismatched, {len(d['missing'])} missing"
            + (" - OK" if d["ok"] else "")
        ]
        lines += [f"MISMATCH {p} ({result.reasons.get(p, 'differs')})" for p in d["mismatched"]]
        lines += [f"MISSING  {p}" for p in d["missing"]]
        return "\n".join(lines)

    emit(args, result.as_dict(), human)
    return 0 if result.ok else 1


def cmd_backup(args: argparse.Namespace) -> int:
    from idp_ops.backup.snapshots import backup_store
    from idp_ops.cli.main import emit, progress
    from idp_ops.settings import load_settings

    report = backup_store(
        load_settings(args.config), log=progress(args), allow_shrink=args.allow_shrink, config_file=args.config
    )

    def human(d: dict) -> str:
        head = f"backup {'REFUSED' if d['refused'] else d['status'].upper()} -> {d['destination']}"
        return head + "\n" + d["message"].replace("; ", "\n")

    emit(args, report.as_dict(), human)
    return 0 if report.ok else 1


def cmd_restore(args: argparse.Namespace) -> int:
    from idp_ops.backup.snapshots import restore
    from idp_ops.cli.main import emit, progress
    from idp_ops.settings import load_settings

    settings = load_settings(args.config)
    if args.state:
        return _restore_state(args, settings)
    if args.into or args.force:
        from idp_ops.cli.main import CommandError

        raise CommandError("--into and --force go with --state (models are restored into the models dir)")
    report = restore(
        settings.backup.destination,
        settings.models_dir,
        snapshot=args.snapshot,
        path=args.path,
        workers=settings.backup.hash_workers,
        log=progress(args),
    )

    def human(d: dict) -> str:
        lines = [
            f"from snapshot {d['snapshot']} ({d['chosen_because']}) into {d['target']}: {len(d['restored'])} "
            f"restored ({d['bytes_restored'] / 1e9:.2f} GB), {len(d['links_restored'])} link(s), "
            f"{len(d['unchanged'])} already identical"
        ]
        lines += [f"  skipped {name}: {why}" for name, why in d["skipped"].items()]
        lines += [f"  restored {p}" for p in d["restored"] + d["links_restored"]]
        return "\n".join(lines)

    emit(args, report.as_dict(), human)
    return 0


def _restore_state(args: argparse.Namespace, settings) -> int:
    from idp_ops.backup.snapshots import restore_state
    from idp_ops.backup.state import settings_file_in_use, state_sources
    from idp_ops.cli.main import CommandError, emit, progress

    if args.path:
        raise CommandError("give either PATH (models) or --state PART, not both")
    parts = list(dict.fromkeys(args.state))  # in the order given, once each
    targets: dict[str, Path | None] = {}
    for part in parts:
        if args.into:
            targets[part] = None  # DIR/<name>, decided once the snapshot is known (settings keep their file name)
        elif part == "settings":
            current = settings_file_in_use(args.config)
            targets[part] = current or Path("idp-ops.yaml").resolve()
        elif part == "secrets":
            targets[part] = settings.secrets_dir
        elif part == "history":
            targets[part] = settings.history_file
        elif part == "postgres":
            targets[part] = None  # the platform's database (restore_state), not a path
        else:
            home = os.environ.get("DAGSTER_HOME")
            if not home:
                raise CommandError("DAGSTER_HOME is not set: set it, or restore the Dagster instance with --into DIR")
            targets[part] = Path(home).expanduser().resolve()
    report = restore_state(
        settings.backup.destination,
        targets,
        snapshot=args.snapshot,
        force=args.force,
        log=progress(args),
        into=Path(args.into).expanduser().resolve() if args.into else None,
        postgres=state_sources(settings, config_file=args.config).postgres if "postgres" in parts else None,
    )

    def human(d: dict) -> str:
        lines = [f"from snapshot {d['snapshot']} ({d['chosen_because']}):"]
        for part in d["parts"]:
            aside = f" (the one replaced is kept as {part['kept_aside']})" if part["kept_aside"] else ""
            lines.append(f"  {part['part']} -> {part['target']}: {len(part['files'])} file(s){aside}")
        return "\n".join(lines)

    emit(args, report.as_dict(), human)
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    manifest = sub.add_parser(
        "manifest", parents=[common], help="sha256 of every file under DIR (incremental), as manifest.json + SHA256SUMS"
    )
    manifest.add_argument("dir")
    manifest.add_argument("--output", help="where to write manifest.json and SHA256SUMS (default: DIR itself)")
    manifest.add_argument("--no-cache", action="store_true", help="hash every file; do not read or write the cache")
    manifest.set_defaults(func=cmd_manifest)

    verify = sub.add_parser(
        "verify", parents=[common], help="re-hash every file a manifest lists; exit 1 naming each bad or missing one"
    )
    verify.add_argument("dir")
    verify.add_argument("--manifest", required=True, help="a manifest.json written by `idp-ops manifest` or a backup")
    verify.set_defaults(func=cmd_verify)

    backup = sub.add_parser(
        "backup",
        parents=[common],
        help="snapshot the model store and the box's state to the backup volume, verify it, prune old snapshots",
    )
    backup.add_argument(
        "--allow-shrink",
        action="store_true",
        help="back up even though the store lost more than backup.max_shrink_*_fraction of the latest snapshot "
        "(or is empty): for models removed on purpose; otherwise such a run is refused (exit 1)",
    )
    backup.set_defaults(func=cmd_backup)

    restore = sub.add_parser(
        "restore", parents=[common], help="copy a model (PATH) or the whole store back from a snapshot, verified first"
    )
    restore.add_argument("path", nargs="?", help="file or directory relative to the models dir (default: everything)")
    restore.add_argument("--snapshot", help="snapshot name (default: the latest that holds what is asked for)")
    restore.add_argument(
        "--state",
        action="append",
        choices=["settings", "secrets", "history", "dagster", "postgres"],
        metavar="PART",
        help="restore the box's state instead of models: settings, secrets, history, dagster or postgres "
        "(repeatable); into place (the settings file in use, secrets_dir, history.duckdb, $DAGSTER_HOME, the ops "
        "platform's database: empty, or replaced with --force) or --into DIR",
    )
    restore.add_argument("--into", metavar="DIR", help="with --state: restore into DIR instead of into place")
    restore.add_argument(
        "--force",
        action="store_true",
        help="with --state: replace what is there (it is kept aside as NAME.before-restore-<time>)",
    )
    restore.set_defaults(func=cmd_restore)
