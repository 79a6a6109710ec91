"""Backup assets: the model store's sha256 manifest and its verified weekly snapshot; the restore op.

Thin: the work is core/manifest.py and core/rsync.py. Here the results become
metadata the UI shows, asset checks that name every bad file, and a failed run
whenever no new good snapshot was made (a refused run included: a shrunken or
empty store), or the store itself is corrupt, or the box's state could not be copied.
"""

from typing import Optional

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSelection,
    Config,
    DefaultScheduleStatus,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    Output,
    ScheduleDefinition,
    asset,
    define_asset_job,
    in_process_executor,
    job,
    load_asset_checks_from_current_module,
    load_assets_from_current_module,
    op,
)

from idp_ops.backup.manifest import ManifestError, build_manifest, write_manifest
from idp_ops.backup.snapshots import BackupReport, RestoreError, backup_store, manifest_dir, restore
from idp_ops.resources import SettingsResource
from idp_ops.runs import HEAVY_TAG, SCHEDULE_TIMEZONE

GROUP = "backup"
# Names shown in a check's description before "and N more" (the metadata lists all).
NAMED_IN_DESCRIPTION = 20


@asset(
    group_name=GROUP,
    description="sha256 of every file in the model store (manifest.json + SHA256SUMS), incremental: "
    "files whose size, mtime and inode are unchanged reuse their cached hash.",
)
def model_manifest(context: AssetExecutionContext, settings: SettingsResource) -> MaterializeResult:
    cfg = settings.load()
    try:
        built = build_manifest(
            cfg.models_dir,
            cache_file=cfg.history_file,
            excludes=cfg.backup.excludes,
            workers=cfg.backup.hash_workers,
            progress=lambda p: context.log.info(p.describe()),
        )
        json_file, sums_file = write_manifest(built.manifest, manifest_dir(cfg))
    except ManifestError as exc:
        raise Failure(description=f"manifest of {cfg.models_dir} failed: {exc}") from None
    stats = built.stats
    context.log.info(
        f"{stats.files} files, {stats.hashed_files} hashed ({stats.hashed_bytes / 1e9:.2f} GB), "
        f"{stats.reused_files} reused from the cache, {stats.seconds:.2f} s"
    )
    return MaterializeResult(
        metadata={
            "models_dir": MetadataValue.path(str(cfg.models_dir)),
            "manifest": MetadataValue.path(str(json_file)),
            "sha256sums": MetadataValue.path(str(sums_file)),
            "files": stats.files,
            "bytes": stats.bytes,
            "hashed_files": stats.hashed_files,
            "hashed_bytes": stats.hashed_bytes,
            "reused_files": stats.reused_files,
            "reused_bytes": stats.reused_bytes,
            "seconds": round(stats.seconds, 3),
            "hash_rate_mb_s": round(stats.hash_rate_bytes_s / 1e6, 1),
            "vanished_during_pass": stats.vanished,
        }
    )


class BackupRunConfig(Config):
    # Back up a store that lost more than backup.max_shrink_*_fraction of the latest
    # snapshot's files or bytes, or is empty: for this run only (models removed on purpose).
    allow_shrink: bool = False


@asset(
    group_name=GROUP,
    deps=[model_manifest],
    description="A verified rsync snapshot of the model store on the backup volume (unchanged files hard-linked "
    "to the previous snapshot), with a rotating scrub that re-reads 1/N of the store on both sides, and the box's "
    "state (settings, secrets, history, Dagster instance: its SQLite files, or a pg_dump of the ops platform's "
    "Postgres). An empty or shrunken store is refused unless the run config allows it (allow_shrink).",
    check_specs=[
        AssetCheckSpec(
            "backup_verified",
            asset="model_backup",
            description="Every file written this run hashes to its manifest value; no file is missing from the snapshot.",
        ),
        AssetCheckSpec(
            "scrub_clean",
            asset="model_backup",
            description="This run's scrub slice is identical on the store and the backup; where they differ, both "
            "are hashed to name the rotten side (catches bit rot that size and mtime cannot see).",
        ),
        AssetCheckSpec(
            "file_count_matches",
            asset="model_backup",
            description="The snapshot holds as many files as the manifest lists (the original plan's check: weak).",
        ),
    ],
)
def model_backup(context: AssetExecutionContext, config: BackupRunConfig, settings: SettingsResource):
    cfg = settings.load()
    # backup_store refreshes the manifest itself (near free after model_manifest: all
    # cache hits) so the snapshot is checked against the store as it is now.
    report = backup_store(
        cfg,
        run_id=context.run.run_id,
        log=context.log.info,
        allow_shrink=config.allow_shrink,
        config_file=settings.config_file,
    )
    for warning in report.warnings:
        context.log.warning(warning)
    metadata = _backup_metadata(report)
    checks = _check_results(report)
    if report.snapshot is None:
        # No new good snapshot: record the failed checks (they name the files), then fail the run.
        yield from checks
        raise Failure(description=report.message, metadata=metadata)
    yield MaterializeResult(metadata=metadata, check_results=checks)
    if not report.ok:
        # The snapshot is good but the store is not: a red run is what gets noticed.
        raise Failure(description=report.message, metadata=metadata)


def _backup_metadata(report: BackupReport) -> dict:
    v = report.verification
    metadata = {
        "status": report.status,
        "summary": MetadataValue.md(report.message.replace("; ", "\n\n")),
        "destination": MetadataValue.path(report.destination),
        "destination_trusted_by": report.destination_kind or "refused",
        "snapshot": report.snapshot or "none",
        "previous_snapshot": report.previous or "none",
        "resumed_incomplete_snapshot": report.resumed,
        "duration_s": report.duration_s,
        "rsync_exit": report.rsync_exit if report.rsync_exit is not None else -1,
        "rsync_seconds": report.rsync_seconds,
        "files_total": report.files_total,
        "bytes_total": report.bytes_total,
        "files_transferred": report.files_transferred,
        "bytes_transferred": report.bytes_transferred,
        "pruned": report.pruned,
        "refused": report.refused,
        "prune_skipped": report.prune_skipped or "",
        "kept_snapshots": MetadataValue.json(report.retention),
        "links": report.links,
    }
    if report.refused:
        metadata["refused_reason"] = report.message
    if report.shrink:
        metadata["shrink"] = MetadataValue.json(report.shrink)
    if report.state:
        metadata["state_parts"] = MetadataValue.json(report.state["parts"])
        metadata["state_errors"] = report.state["errors"]
        dump = report.state.get("postgres")
        if dump:  # the ops platform's instance, dumped with pg_dump in its container
            metadata["postgres_dump_bytes"] = dump["bytes"]
            metadata["postgres_dump_tables"] = dump["tables"]
            metadata["postgres_dump_rows"] = dump["rows"]
            metadata["postgres_dump_toc_entries"] = dump["toc_entries"]
            metadata["postgres_dump_seconds"] = dump["seconds"]
    if report.manifest_stats:
        metadata["manifest_hashed_files"] = report.manifest_stats["hashed_files"]
        metadata["manifest_seconds"] = report.manifest_stats["seconds"]
    if v is not None:
        metadata.update(
            {
                "verified_files": v.checked_files,
                "verified_bytes": v.checked_bytes,
                "mismatched": v.mismatched,
                "missing": v.missing,
                "scrub_slice": f"{v.scrub_slice + 1}/{v.scrub_slices}",
                "scrubbed_files": v.scrubbed_files,
                "scrubbed_bytes": v.scrubbed_bytes,
                "scrub_coverage": round(v.scrubbed_bytes / report.bytes_total, 4) if report.bytes_total else 1.0,
                "source_corrupt": v.source_corrupt,
                "repaired_backup_copies": v.repaired,
                "vanished_during_run": v.vanished,
                "files_in_snapshot": v.files_in_snapshot,
                "files_expected": v.files_expected,
            }
        )
    return metadata


def _named(paths: list[str], reasons: dict[str, str]) -> str:
    shown = [f"{p} ({reasons[p]})" if p in reasons else p for p in paths[:NAMED_IN_DESCRIPTION]]
    more = len(paths) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _check_results(report: BackupReport) -> list[AssetCheckResult]:
    v = report.verification
    if v is None:
        # The run stopped before anything could be verified (refused destination, rsync failure, ...).
        return [
            AssetCheckResult(
                check_name=name,
                passed=False,
                severity=AssetCheckSeverity.ERROR,
                description=f"not verified: {report.message}",
            )
            for name in ("backup_verified", "scrub_clean", "file_count_matches")
        ]
    problems = []
    if v.mismatched:
        problems.append("MISMATCHED: " + _named(v.mismatched, v.reasons))
    if v.missing:
        problems.append("MISSING from the backup: " + _named(v.missing, v.reasons))
    verified = AssetCheckResult(
        check_name="backup_verified",
        passed=not v.mismatched and not v.missing,
        severity=AssetCheckSeverity.ERROR,
        description="; ".join(problems) or f"{v.checked_files} files written this run match the manifest; none missing",
        metadata={
            "verified_files": v.checked_files,
            "verified_bytes": v.checked_bytes,
            "mismatched": MetadataValue.json(v.mismatched),
            "missing": MetadataValue.json(v.missing),
        },
    )
    scrub_problems = []
    if v.source_corrupt:
        scrub_problems.append("SOURCE CORRUPT (restore from the snapshot): " + _named(v.source_corrupt, v.reasons))
    if v.repaired:
        scrub_problems.append("BACKUP COPY ROTTEN (replaced in this snapshot): " + _named(v.repaired, v.reasons))
    scrub = AssetCheckResult(
        check_name="scrub_clean",
        passed=not scrub_problems,
        # Source rot needs a person; a repaired backup copy is already fixed in the new snapshot.
        severity=AssetCheckSeverity.ERROR if v.source_corrupt else AssetCheckSeverity.WARN,
        description="; ".join(scrub_problems)
        or f"slice {v.scrub_slice + 1}/{v.scrub_slices}: {v.scrubbed_files} files re-read on both sides, all match",
        metadata={
            "scrub_slice": f"{v.scrub_slice + 1}/{v.scrub_slices}",
            "scrubbed_files": v.scrubbed_files,
            "scrubbed_bytes": v.scrubbed_bytes,
            "source_corrupt": MetadataValue.json(v.source_corrupt),
            "repaired": MetadataValue.json(v.repaired),
        },
    )
    count = AssetCheckResult(
        check_name="file_count_matches",
        passed=v.count_ok,
        severity=AssetCheckSeverity.ERROR,
        description=f"{v.files_in_snapshot} files in the snapshot, {v.files_expected} expected",
        metadata={"files_in_snapshot": v.files_in_snapshot, "files_expected": v.files_expected},
    )
    return [verified, scrub, count]


class RestoreConfig(Config):
    # Snapshot name (e.g. 20250105T030000Z); empty: the latest verified snapshot that holds files (and path).
    snapshot: Optional[str] = None
    # A file or directory relative to the model store; empty: the whole store.
    path: Optional[str] = None


@op(description="Copy a model (or the whole store) back from a snapshot, verifying every copy before replacing.")
def restore_models(context: OpExecutionContext, config: RestoreConfig, settings: SettingsResource):
    cfg = settings.load()
    try:
        report = restore(
            cfg.backup.destination,
            cfg.models_dir,
            snapshot=config.snapshot or None,
            path=config.path or None,
            workers=cfg.backup.hash_workers,
            log=context.log.info,
        )
    except (RestoreError, ManifestError) as exc:
        raise Failure(description=str(exc)) from None
    context.log.info(
        f"restored {len(report.restored)} file(s) ({report.bytes_restored / 1e9:.2f} GB) from {report.snapshot} "
        f"({report.chosen_because}); {len(report.unchanged)} already identical"
    )
    yield Output(
        report.as_dict(),
        metadata={
            "snapshot": report.snapshot,
            "snapshot_chosen_because": report.chosen_because,
            "skipped_snapshots": MetadataValue.json(report.skipped),
            "path": report.path or "(whole store)",
            "restored": report.restored,
            "unchanged": report.unchanged,
            "bytes_restored": report.bytes_restored,
            "seconds": report.seconds,
        },
    )


# -- jobs and schedule ---------------------------------------------------------

weekly_backup_job = define_asset_job(
    "weekly_backup_job",
    selection=AssetSelection.groups("backup"),
    description="Refresh the model store's sha256 manifest (incremental), snapshot it to the backup volume with rsync, "
    "verify the copy and a rotating scrub slice, prune old snapshots.",
    executor_def=in_process_executor,
    tags=HEAVY_TAG,
)


@job(
    executor_def=in_process_executor,
    tags=HEAVY_TAG,
    description="Copy a model (config path) or the whole store back from a snapshot (config snapshot; default the "
    "latest), verifying every copy against the snapshot's manifest before replacing anything.",
)
def restore_job():
    restore_models()


weekly_backup_schedule = ScheduleDefinition(
    name="weekly_backup_schedule",
    job=weekly_backup_job,
    cron_schedule="0 3 * * 0",  # Sunday 03:00
    execution_timezone=SCHEDULE_TIMEZONE,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Weekly verified snapshot of the model store.",
)


defs = Definitions(
    assets=load_assets_from_current_module(),
    asset_checks=load_asset_checks_from_current_module(),
    jobs=[weekly_backup_job, restore_job],
    schedules=[weekly_backup_schedule],
)
