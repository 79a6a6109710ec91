"""What a backup must refuse to take as the new truth, judged against the last snapshot's own manifest.

* A store that shrank: an unmounted models disk leaves an empty mount point, and
  a snapshot of it would verify (it holds exactly what its manifest lists) while
  retention pruned the real ones. A run whose store is empty, or lost more than a
  set share of the last snapshot's files or bytes, is refused unless a person
  allows it for that run.
* Source rot that the hash cache cannot vouch for: when the cache is lost
  (history.duckdb deleted, the store moved so inodes changed) a rotten file is
  re-hashed and its new hash would become the record. Same size and mtime as in
  the last snapshot but another sha256 is not a change, it is rot or tampering:
  the snapshot's record stays the truth.
* Symlinks that leave the store: rsync copies the link, not what it points to, so
  the content would be reported as backed up while it is not.

Pure functions over manifests (and, for links, the live store), no writes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from idp_ops.backup.manifest import Entry, Manifest

# How many lost files a refusal names (the report counts them all).
NAMED = 10


@dataclass
class ShrinkCheck:
    previous: str | None  # the snapshot compared with
    files_before: int
    bytes_before: int
    files_now: int
    bytes_now: int
    # Files of the last snapshot whose path is gone and whose content is nowhere in the
    # store (a model moved or renamed is not lost), and bytes gone: theirs, plus what
    # files still present lost by shrinking.
    files_lost: int = 0
    bytes_lost: int = 0
    lost: list[str] = field(default_factory=list)
    max_files_fraction: float = 0.1
    max_bytes_fraction: float = 0.1
    reason: str | None = None  # why the run should be refused; None: fine

    @property
    def files_lost_fraction(self) -> float:
        return self.files_lost / self.files_before if self.files_before else 0.0

    @property
    def bytes_lost_fraction(self) -> float:
        return self.bytes_lost / self.bytes_before if self.bytes_before else 0.0

    @property
    def refused(self) -> bool:
        return self.reason is not None

    def as_dict(self) -> dict:
        data = asdict(self)
        data["lost"] = self.lost[:NAMED]
        data["files_lost_fraction"] = round(self.files_lost_fraction, 4)
        data["bytes_lost_fraction"] = round(self.bytes_lost_fraction, 4)
        return data


def check_shrink(
    previous: Manifest | None,
    current: Manifest,
    *,
    previous_name: str | None = None,
    max_files_fraction: float = 0.1,
    max_bytes_fraction: float = 0.1,
) -> ShrinkCheck:
    """Compare the store's manifest with the last snapshot's; ``reason`` is set when the
    store is empty or lost more than either share."""
    before = previous.entries if previous else {}
    check = ShrinkCheck(
        previous_name,
        len(before),
        sum(e.size for e in before.values()),
        len(current.entries),
        current.total_bytes,
        max_files_fraction=max_files_fraction,
        max_bytes_fraction=max_bytes_fraction,
    )
    present = {e.sha256 for e in current.entries.values()}
    for path, old in before.items():
        now = current.entries.get(path)
        if now is None:
            if old.sha256 not in present:
                check.files_lost += 1
                check.bytes_lost += old.size
                check.lost.append(path)
        elif now.size < old.size:
            check.bytes_lost += old.size - now.size
    root = current.root
    if not current.entries:
        check.reason = (
            f"the model store {root} holds no files"
            + (f" (snapshot {previous_name} holds {check.files_before}, {_gb(check.bytes_before)})" if before else "")
            + f": is the models disk mounted at {root}?"
        )
    elif check.files_lost_fraction > max_files_fraction or check.bytes_lost_fraction > max_bytes_fraction:
        named = ", ".join(check.lost[:NAMED]) + (
            f" and {len(check.lost) - NAMED} more" if len(check.lost) > NAMED else ""
        )
        check.reason = (
            f"the model store {root} lost {check.files_lost} of the {check.files_before} files "
            f"({check.files_lost_fraction:.0%}) and {_gb(check.bytes_lost)} of the {_gb(check.bytes_before)} "
            f"({check.bytes_lost_fraction:.0%}) that snapshot {previous_name} holds, more than "
            f"backup.max_shrink_files_fraction={max_files_fraction} or max_shrink_bytes_fraction={max_bytes_fraction} "
            f"allow" + (f" (gone: {named})" if named else "")
        )
    return check


def refusal_message(check: ShrinkCheck, destination: Path) -> str:
    return (
        f"refusing to back up: {check.reason}. Nothing was written to {destination} and every snapshot is kept. "
        "If a disk is not mounted, mount it and run again; if the models were removed on purpose, allow it for one "
        "run: `idp-ops backup --allow-shrink`, or run config {ops: {model_backup: {config: {allow_shrink: true}}}}."
    )


def source_rot(previous: Manifest | None, current: Manifest) -> dict[str, Entry]:
    """Files whose sha256 differs from the last snapshot's record while size and mtime did not
    move, mapped to that record (the good hash, which the snapshot's copy holds)."""
    if previous is None:
        return {}
    rotten = {}
    for path, now in current.entries.items():
        old = previous.entries.get(path)
        if old and (old.size, old.mtime_ns) == (now.size, now.mtime_ns) and old.sha256 != now.sha256:
            rotten[path] = old
    return rotten


def links_leaving(root: Path, links: dict[str, str]) -> list[str]:
    """Symlinks under ``root`` that resolve outside it (``path -> target``): only the link would be kept.

    Resolved on the live store (a chain of links is followed to its end). A dangling
    link inside the store is fine: it is backed up as exactly what it is.
    """
    root = Path(os.path.realpath(root))
    leaving = []
    for path, target in sorted(links.items()):
        resolved = Path(os.path.realpath(root / path))
        if resolved != root and root not in resolved.parents:
            leaving.append(f"{path} -> {target}")
    return leaving


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"
