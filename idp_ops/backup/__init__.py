"""Backups of the model store: the sha256 manifest, rsync snapshots and their verification and
scrub, the shrink and rot guards, retention, restore, and the box state kept in each snapshot.
defs.py: model_manifest, model_backup, weekly_backup_job, restore_job and the weekly schedule."""
