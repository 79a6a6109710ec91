import pytest

from idp_ops.settings import SettingsError, load_settings


def test_embedded_default_is_the_cpu_profile_under_a_project_local_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.profile == "cpu"
    assert settings.models_dir == tmp_path / ".idp-data" / "models"
    assert settings.compose_file.name == "docker-compose.cpu.yml" and settings.compose_file.is_file()
    assert [e.protocol for e in settings.endpoints] == ["openai", "llamacpp"]
    assert settings.gpu_services == ["openai-standin"]
    assert all(e.url.startswith("http://127.0.0.1:") for e in settings.endpoints)


def test_yaml_overrides_defaults_and_env_overrides_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "idp-ops.yaml").write_text("profile: gpu\nthermal:\n  warn_c: 80\n  contain_c: 88\n")
    settings = load_settings()
    assert settings.profile == "gpu" and settings.thermal.warn_c == 80
    assert [e.name for e in settings.endpoints] == ["vllm-gpu", "llamacpp-cpu"]
    assert settings.compose_file.name == "docker-compose.yml"

    monkeypatch.setenv("IDP_THERMAL__WARN_C", "82")
    monkeypatch.setenv("IDP_PROFILE", "expert")
    settings = load_settings()
    assert settings.thermal.warn_c == 82 and settings.thermal.contain_c == 88
    assert settings.compose_profiles == ["expert"]
    assert "llamacpp-70b-hybrid" in [e.name for e in settings.endpoints]


def test_idp_config_names_the_yaml_file(tmp_path, monkeypatch):
    config = tmp_path / "elsewhere.yaml"
    config.write_text(f"home: {tmp_path / 'box'}\n")
    monkeypatch.setenv("IDP_CONFIG", str(config))
    assert load_settings().secrets_dir == tmp_path / "box" / "secrets"


@pytest.mark.parametrize(
    "yaml_text, field",
    [
        ("profile: tpu\n", "profile"),
        ("thermal:\n  warn_c: hot\n", "thermal.warn_c"),
        ("thermal:\n  warn_c: 95\n", "thermal"),
        ("endpoints:\n  - name: x\n    protocol: grpc\n    url: http://127.0.0.1:1\n", "endpoints.0.protocol"),
        ("endpoints:\n  - name: x\n    protocol: openai\n    url: ftp://host\n", "endpoints.0.url"),
        ("modles_dir: /mnt/models\n", "modles_dir"),
        ("hardware_profile: rtx9090\n", "hardware_profile"),
    ],
)
def test_invalid_settings_fail_at_load_naming_the_field(tmp_path, yaml_text, field):
    config = tmp_path / "idp-ops.yaml"
    config.write_text(yaml_text)
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    assert f"  {field}:" in str(info.value)
    assert str(config) in str(info.value)


def test_invalid_env_value_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IDP_DEPLOY_TIMEOUT_S", "soon")
    with pytest.raises(SettingsError, match="deploy_timeout_s.*IDP_DEPLOY_TIMEOUT_S"):
        load_settings()


def test_settings_file_that_is_not_yaml_or_missing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: [cpu\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad)
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(bad)


def test_compose_environment_carries_paths_ports_and_images_never_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    env = settings.compose_environment()
    assert env["IDP_OPENAI_PORT"] == "18000" and env["IDP_LLAMACPP_PORT"] == "18001"
    assert env["IDP_MODELS_DIR"] == str(settings.models_dir)
    assert not any("KEY" in name for name in env)
