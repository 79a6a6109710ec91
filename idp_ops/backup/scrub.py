"""The scrub: a rotating slice of the store re-read on both sides, byte for byte, each run.

It catches what size+mtime cannot: bit rot on the source (the manifest cache and rsync
both trust the stat) and on the backup copy (hard-linked from snapshot to snapshot,
never re-read by rsync). Where the two copies differ both are hashed against the
manifest to name the rotten side.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from idp_ops.backup.manifest import BLOCK_SIZE, Entry, hash_files
from idp_ops.backup.volume import copy_verified as _copy_verified

if TYPE_CHECKING:
    from idp_ops.backup.snapshots import Verification

Log = Callable[[str], None]


def scrub_slice_of(path: str, slices: int) -> int:
    """Which scrub slice a small file belongs to (big ones are split, see scrub_ranges):
    a hash of its path, so adding or removing files never moves the others."""
    return int.from_bytes(hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()[:8], "big") % slices


# Files at least this big are scrubbed a 1/N byte range per run (every run reads the
# same share of the store, however few and big the files); smaller ones whole, in the
# run their path hashes to.
SCRUB_SPLIT_BYTES = 64 * 1024 * 1024
# Ranges are compared in pieces of at most this size, so one big file uses every thread.
SCRUB_TASK_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ScrubRange:
    path: str
    offset: int
    length: int


def scrub_ranges(entries: Iterable[Entry], slice_index: int, slices: int) -> list[ScrubRange]:
    """What run ``slice_index`` of every ``slices`` re-reads: over ``slices`` consecutive
    runs every byte of every file exactly once. Stable when files come and go."""
    ranges = []
    for entry in entries:
        if entry.size >= SCRUB_SPLIT_BYTES:
            start = entry.size * slice_index // slices
            end = entry.size * (slice_index + 1) // slices
            if end > start:
                ranges.append(ScrubRange(entry.path, start, end - start))
        elif scrub_slice_of(entry.path, slices) == slice_index:
            ranges.append(ScrubRange(entry.path, 0, entry.size))
    return ranges


def _ranges_equal(a: Path, b: Path, offset: int, length: int) -> bool:
    """Byte-compare the same range of two files. Memory speed (~14 GB/s measured here
    against 1.6 GB/s for sha256): the scrub only hashes when the copies disagree."""
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        for handle in (fa, fb):
            os.posix_fadvise(handle.fileno(), offset, length, os.POSIX_FADV_SEQUENTIAL)
        fa.seek(offset)
        fb.seek(offset)
        try:
            remaining = length
            while remaining > 0:
                n = min(BLOCK_SIZE, remaining)
                x, y = fa.read(n), fb.read(n)
                if x != y or len(x) != n:
                    return False
                remaining -= n
            return True
        finally:
            # The backup copy's pages are never needed again (see hash_file).
            os.posix_fadvise(fb.fileno(), offset, length, os.POSIX_FADV_DONTNEED)


def run_scrub(
    source: Path,
    work_data: Path,
    expected: dict[str, Entry],
    ranges: list[ScrubRange],
    v: Verification,
    *,
    dest_sha: dict[str, str],
    written: set[str],
    workers: int,
    log: Log,
) -> None:
    """Compare this run's slice between the store and the backup; where they differ,
    hash both whole files to tell which side matches the manifest."""
    tasks = [
        (r.path, offset, min(SCRUB_TASK_BYTES, r.offset + r.length - offset))
        for r in ranges
        for offset in range(r.offset, r.offset + max(r.length, 1), SCRUB_TASK_BYTES)
    ]

    def compare(task: tuple[str, int, int]) -> tuple[str, str | None]:
        rel, offset, length = task
        try:
            return rel, None if _ranges_equal(source / rel, work_data / rel, offset, length) else "differ"
        except FileNotFoundError as exc:
            return rel, "source gone" if not os.path.lexists(source / rel) else f"cannot read: {exc.strerror}"
        except OSError as exc:
            return rel, f"cannot read: {exc.strerror or exc}"

    from concurrent.futures import ThreadPoolExecutor

    from idp_ops.backup.manifest import default_workers

    outcome: dict[str, str] = {}
    if tasks:
        threads = min(default_workers(workers), len(tasks))
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scrub") as pool:
            for rel, problem in pool.map(compare, tasks):
                if problem and rel not in outcome:
                    outcome[rel] = problem
    gone = {rel for rel, problem in outcome.items() if problem == "source gone"}
    v.scrubbed_files = len({r.path for r in ranges} - gone)
    v.scrubbed_bytes = sum(r.length for r in ranges if r.path not in gone)
    for rel, problem in outcome.items():
        if problem.startswith("cannot read"):
            v.source_corrupt.append(rel)
            v.reasons.setdefault(rel, f"scrub {problem}")
    suspects = sorted(rel for rel, problem in outcome.items() if problem == "differ")
    if not suspects:
        return
    log(f"scrub: {len(suspects)} file(s) differ between the store and the backup; hashing both to tell which is right")
    sizes = [(rel, expected[rel].size) for rel in suspects]
    at_source = hash_files(source, sizes, workers=workers)
    at_dest = hash_files(work_data, [s for s in sizes if s[0] not in dest_sha], workers=workers, drop_cache=True)
    for rel in suspects:
        good = expected[rel].sha256
        if rel not in at_source.hashes:
            if rel in at_source.errors:
                v.source_corrupt.append(rel)
                v.reasons.setdefault(rel, f"source {at_source.errors[rel]}")
            continue  # gone from the source since: nothing to judge
        src_sha, src_stat = at_source.hashes[rel]
        if src_sha != good:
            if (src_stat.st_size, src_stat.st_mtime_ns) == (expected[rel].size, expected[rel].mtime_ns):
                v.source_corrupt.append(rel)
                v.reasons.setdefault(
                    rel, "source content differs from its manifest hash with size and mtime unchanged (bit rot)"
                )
            else:
                log(f"{rel} changed on the source during the run; the next run backs up the new version")
        copy_sha = dest_sha.get(rel) or (at_dest.hashes[rel][0] if rel in at_dest.hashes else None)
        if rel in written or copy_sha == good:
            continue  # written copies were judged against the manifest already
        if copy_sha is not None and src_sha == good and _copy_verified(source / rel, work_data / rel, good):
            v.repaired.append(rel)
            v.reasons[rel] = (
                "backup copy differed from the manifest (bit rot); replaced in this snapshot by a verified copy"
            )
        else:
            v.mismatched.append(rel)
            v.reasons[rel] = "backup copy differs from the manifest and the source cannot replace it"
