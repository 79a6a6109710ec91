import os
import stat

import pytest

from idp_ops.stack.secrets import ENV_FILE_NAME, KEY_BYTES, SecretsError, ensure_keys, read_key

KEYS = {"openai_api_key": ["openai-standin"], "llamacpp_api_key": ["llamacpp-cpu"]}


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_256_bit_private_files_in_a_private_dir(tmp_path):
    secrets_dir = tmp_path / "secrets"
    report = ensure_keys(secrets_dir, KEYS)
    assert sorted(report.created) == sorted(KEYS)
    assert mode(secrets_dir) == 0o700
    keys = {name: read_key(secrets_dir / name) for name in KEYS}
    for name, key in keys.items():
        assert mode(secrets_dir / name) == 0o600
        assert len(bytes.fromhex(key)) == KEY_BYTES
    assert len(set(keys.values())) == len(keys), "every service gets its own key"
    env_file = secrets_dir / ENV_FILE_NAME
    assert mode(env_file) == 0o600
    assert f"OPENAI_API_KEY={keys['openai_api_key']}" in env_file.read_text()
    assert not list(secrets_dir.glob(".*.tmp")), "no temp file left behind"


def test_generation_is_idempotent_and_repairs_loose_permissions(tmp_path):
    secrets_dir = tmp_path / "secrets"
    ensure_keys(secrets_dir, KEYS)
    before = {name: read_key(secrets_dir / name) for name in KEYS}
    os.chmod(secrets_dir / "openai_api_key", 0o644)
    os.chmod(secrets_dir, 0o755)
    report = ensure_keys(secrets_dir, KEYS)
    assert report.created == [] and report.rotated == [] and sorted(report.unchanged) == sorted(KEYS)
    assert {name: read_key(secrets_dir / name) for name in KEYS} == before
    assert mode(secrets_dir / "openai_api_key") == 0o600 and mode(secrets_dir) == 0o700


def test_rotation_replaces_only_the_named_key_and_names_services_to_restart(tmp_path):
    secrets_dir = tmp_path / "secrets"
    ensure_keys(secrets_dir, KEYS)
    before = {name: read_key(secrets_dir / name) for name in KEYS}
    report = ensure_keys(secrets_dir, KEYS, rotate=["openai_api_key"])
    assert report.rotated == ["openai_api_key"]
    assert report.services_to_restart == ["openai-standin"]
    assert read_key(secrets_dir / "openai_api_key") != before["openai_api_key"]
    assert read_key(secrets_dir / "llamacpp_api_key") == before["llamacpp_api_key"]
    assert read_key(secrets_dir / "openai_api_key") in (secrets_dir / ENV_FILE_NAME).read_text()

    report = ensure_keys(secrets_dir, KEYS, rotate=True)
    assert sorted(report.services_to_restart) == ["llamacpp-cpu", "openai-standin"]


def test_reports_never_carry_key_values(tmp_path):
    secrets_dir = tmp_path / "secrets"
    report = ensure_keys(secrets_dir, KEYS)
    text = repr(report.as_dict())
    for name in KEYS:
        assert read_key(secrets_dir / name) not in text


def test_bad_requests_are_refused_clearly(tmp_path):
    with pytest.raises(SecretsError, match="unknown keys"):
        ensure_keys(tmp_path / "s", KEYS, rotate=["nope"])
    with pytest.raises(SecretsError, match="invalid key name"):
        ensure_keys(tmp_path / "s", {"../escape": []})
    with pytest.raises(SecretsError, match="does not exist"):
        read_key(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretsError, match="empty"):
        read_key(tmp_path / "empty")
