"""Running rsync: the command, its progress, what it transferred, its exit status in words."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from idp_ops.backup.manifest import IN_PROGRESS_EXCLUDES, OWN_FILES, PROGRESS_INTERVAL_S
from idp_ops.backup.volume import BackupError

Log = Callable[[str], None]
PARTIAL_DIR = ".rsync-partial"


def _quiet(_: str) -> None:
    pass


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


# rsync(1) EXIT VALUES, so a failure reads as words and not a number.
RSYNC_EXIT_MEANINGS = {
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files or directories",
    5: "error starting client-server protocol",
    10: "error in socket I/O",
    11: "error in file I/O",
    12: "error in rsync protocol data stream",
    13: "errors with program diagnostics",
    14: "error in IPC code",
    20: "received SIGUSR1 or SIGINT",
    21: "some error returned by waitpid()",
    22: "error allocating core memory buffers",
    23: "partial transfer due to error",
    24: "partial transfer due to vanished source files",
    25: "the --max-delete limit stopped deletions",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
}
RSYNC_VANISHED = 24


@dataclass
class RsyncResult:
    exit_code: int
    transferred: dict[str, int]  # relative path -> size, for regular files rsync wrote
    stats: dict[str, int]
    stderr: str
    seconds: float
    command: list[str]

    @property
    def meaning(self) -> str:
        return RSYNC_EXIT_MEANINGS.get(self.exit_code, "unknown error")

    @property
    def out_of_space(self) -> bool:
        return "No space left on device" in self.stderr or "(28)" in self.stderr


_ITEMIZED_FILE = re.compile(r"^>f\S{9} (\d+) (.*)$")
_PROGRESS2 = re.compile(r"^\s*([\d,]+)\s+(\d+)%\s+(\S+)\s+(\S+)(?:\s+\(xfr#(\d+), (?:ir|to)-chk=(\d+)/(\d+)\))?")
_STAT_LINE = re.compile(r"^(Number of [a-z ]+|Total [a-z ]+|Literal data|Matched data|File list size): ([\d,]+)")
_ESCAPED = re.compile(r"\\#([0-7]{3})")


def _unescape(name: str) -> str:
    # rsync prints unprintable bytes in names as \#ooo.
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 8)), name)


def run_rsync(
    source: Path,
    target: Path,
    *,
    link_dest: Path | None = None,
    excludes: Iterable[str] = (),
    log: Log = _quiet,
    on_output: Callable[[str], None] | None = None,
    progress_interval_s: float = PROGRESS_INTERVAL_S,
) -> RsyncResult:
    """Copy ``source/`` into ``target/``; stream rsync's output, logging progress every
    ``progress_interval_s``; return the files it transferred and its ``--stats``.

    No ``--checksum``: rsync compares size and mtime (the manifest and the scrub do
    the reading), so an unchanged store costs one stat per file on each side.
    ``--delete`` only ever touches ``target`` (the in-progress snapshot), where it
    removes files a resumed run copied before they were deleted at the source.
    """
    if shutil.which("rsync") is None:
        raise BackupError("rsync is not installed (Debian/Ubuntu: apt-get install rsync)")
    command = [
        "rsync",
        "--archive",
        "--numeric-ids",
        # Compare mtimes to the nanosecond, as the manifest cache does: by default rsync
        # compares whole seconds and would hard-link a same-size file rewritten within
        # the second to its stale copy. (A volume that can hold --link-dest hard links
        # is a POSIX file system, which keeps nanoseconds.)
        "--modify-window=-1",
        "--delete",
        f"--partial-dir={PARTIAL_DIR}",
        "--out-format=%i %l %n",
        "--info=progress2",
        "--stats",
    ]
    if link_dest is not None:
        command.append(f"--link-dest={link_dest}")
    command += [f"--exclude={pattern}" for pattern in (*IN_PROGRESS_EXCLUDES, *excludes)]
    # A manifest written into the store (`idp-ops manifest DIR`) is not part of it, as in scan():
    # the snapshot holds exactly what its own manifest lists.
    command += [f"--exclude=/{name}" for name in sorted(OWN_FILES)]
    command += [f"{source}/", f"{target}/"]
    started = time.monotonic()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr_chunks: list[bytes] = []
    drain = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    drain.start()
    transferred: dict[str, int] = {}
    stats: dict[str, int] = {}
    last_progress: str | None = None
    next_log = started + progress_interval_s
    pending = b""

    def handle(line: str) -> None:
        nonlocal last_progress
        if on_output is not None:
            on_output(line)
        if match := _ITEMIZED_FILE.match(line):
            transferred[_unescape(match.group(2))] = int(match.group(1))
        elif match := _PROGRESS2.match(line):
            done, pct, rate, eta = match.group(1, 2, 3, 4)
            copied = _gb(int(done.replace(",", "")))
            last_progress = f"rsync: {copied} ({pct}%) at {rate}, eta {eta}, {len(transferred)} files so far"
        elif match := _STAT_LINE.match(line):
            key = match.group(1).lower().replace(" ", "_")
            stats[key] = int(match.group(2).replace(",", ""))

    fd = proc.stdout.fileno()
    try:
        while chunk := os.read(fd, 65536):
            # progress2 rewrites its line with \r; file names and stats end with \n.
            parts = re.split(rb"[\r\n]", pending + chunk)
            pending = parts.pop()
            for raw in parts:
                if raw.strip():
                    handle(os.fsdecode(raw))
            now = time.monotonic()
            if last_progress and now >= next_log:
                log(last_progress)
                next_log = now + progress_interval_s
        if pending.strip():
            handle(os.fsdecode(pending))
    except BaseException:
        # Interrupted (run terminated, Ctrl-C, a failing callback): rsync must not go on
        # writing into the snapshot after the lock is released.
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    exit_code = proc.wait()
    drain.join()
    stderr = b"".join(stderr_chunks).decode("utf-8", "replace").strip()
    return RsyncResult(exit_code, transferred, stats, stderr, time.monotonic() - started, command)
