"""Settings for the safety paths that outlive a settings file which stops parsing.

The thermal sensor, the guard and the containment run must keep protecting the card
while a person is halfway through editing ``idp-ops.yaml``. Each good load is kept
in memory (per settings source) and as a snapshot file beside the data; a bad load
returns the last good settings together with the problem, which the caller alerts.
The snapshot is what a separate process (the containment run) falls back to: the
sensor passes its path in the run config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from idp_ops.fsutil import atomic_write_text
from idp_ops.settings import Settings, SettingsError, load_settings

SNAPSHOT_NAME = "settings.last-good.json"

# source key -> (settings, its JSON): one code-server or guard process lives for weeks.
_last_good: dict[str, tuple[Settings, str]] = {}


def snapshot_path(settings: Settings) -> Path:
    return settings.data_dir / SNAPSHOT_NAME


def _source_key(config_file: str | Path | None) -> str:
    if config_file:
        return str(Path(config_file).expanduser().resolve())
    return os.environ.get("IDP_CONFIG") or f"default:{Path.cwd()}"


def load_or_last_good(
    config_file: str | Path | None = None, *, snapshot: str | Path | None = None
) -> tuple[Settings, str | None]:
    """(settings, problem). ``problem`` is None when the settings loaded; otherwise it says
    why they did not and that the last good ones stay in force. Raises SettingsError only
    when there is nothing good to fall back to."""
    key = _source_key(config_file)
    try:
        settings = load_settings(config_file)
    except SettingsError as exc:
        fallback = _last_good.get(key, (None, ""))[0]
        if fallback is None and snapshot is not None:
            fallback = read_snapshot(snapshot)
        if fallback is None:
            raise
        return fallback, f"the settings stopped loading; the last good settings stay in force: {exc}"
    text = settings.model_dump_json()
    if _last_good.get(key, (None, ""))[1] != text:
        _last_good[key] = (settings, text)
        try:
            # 0600: the settings may hold a webhook URL with a token in it.
            atomic_write_text(snapshot_path(settings), text, mode=0o600)
        except OSError:
            # A full disk must not stop the watch; the copy in memory still serves this
            # process, and the next changed load tries the file again.
            _last_good[key] = (settings, "")
    return settings, None


def read_snapshot(path: str | Path) -> Settings | None:
    """The settings a snapshot holds, validated again but read from no other source."""
    try:
        data = json.loads(Path(path).read_text())
        # model_validate, not the constructor: the constructor would re-read the broken
        # YAML file and the environment, which is exactly what must not decide here.
        return Settings.model_validate(data)
    except (OSError, ValueError):
        return None


def forget() -> None:
    """Drop what this process remembers (tests)."""
    _last_good.clear()
