"""Which model each switchable llama.cpp service serves: ``<data_dir>/model-selection.json``, written only by
``switch_model`` (atomically) and read wherever settings are loaded.

The compose files never change. Each switchable service reads its model from one variable (``--model
${IDP_LLAMACPP_MODEL_PATH:-...}``, ``--alias ${IDP_LLAMACPP_MODEL_NAME:-...}``); ``Settings.compose_environment``
fills those from this file, so ``idp-ops deploy``, the audit (which interpolates the same environment) and
containment all run and judge the switched model, and the endpoint's ``model``/``model_file`` follow it for
probes, physics ceilings and benchmarks.

A selection records what the settings configured when it was made (``base``). When the settings file has since
been edited for that endpoint, the settings win and the selection is ignored: a hand edit is never silently
overridden by an old switch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SELECTION_NAME = "model-selection.json"
FORMAT = "idp-ops-model-selection/1"

# Service -> (variable with the model's path inside the container, variable with the served name).
# The name variables are the ones settings already fill from Endpoint.model.
SWITCHABLE_SERVICES: dict[str, tuple[str, str]] = {
    "llamacpp-cpu": ("IDP_LLAMACPP_MODEL_PATH", "IDP_LLAMACPP_MODEL_NAME"),
    "openai-standin": ("IDP_OPENAI_MODEL_PATH", "IDP_OPENAI_MODEL_NAME"),
}


def selection_file(data_dir: Path) -> Path:
    return Path(data_dir) / SELECTION_NAME


def read_selection(data_dir: Path) -> dict[str, Any]:
    """{service: {endpoint, model_file, model, container_path, base: {model, model_file}, switched_at}}.

    A missing file is an empty selection; an unreadable one is an error (deploying a model nobody chose
    would be worse than stopping).
    """
    path = selection_file(data_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"model selection {path} cannot be read ({exc}); fix or remove it") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("services"), dict):
        raise ValueError(f"{path} is not an idp-ops model selection (expected format {FORMAT!r})")
    return data["services"]


def write_selection(data_dir: Path, services: dict[str, Any]) -> Path:
    from idp_ops.fsutil import atomic_write_json

    path = selection_file(data_dir)
    atomic_write_json(path, {"format": FORMAT, "services": services})
    return path


def _applies(entry: dict[str, Any], endpoint: Any) -> bool:
    base = entry.get("base") or {}
    return (
        entry.get("endpoint") == endpoint.name
        and base.get("model") == endpoint.model
        and base.get("model_file") == endpoint.model_file
    )


def apply_selection(settings: Any) -> None:
    """Point each switched endpoint at its selected model (called once while settings resolve)."""
    services = read_selection(settings.data_dir)
    for endpoint in settings.endpoints or []:
        entry = services.get(endpoint.compose_service or "")
        if entry and _applies(entry, endpoint):
            endpoint.model = entry["model"]
            endpoint.model_file = entry["model_file"]


def selection_environment(settings: Any) -> dict[str, str]:
    """The model-path variables of the switched services (the name variables already follow Endpoint.model).

    Only entries the endpoints now agree with count: a selection the settings overrode sets nothing.
    """
    services = read_selection(settings.data_dir)
    env = {}
    for endpoint in settings.endpoints or []:
        entry = services.get(endpoint.compose_service or "")
        variables = SWITCHABLE_SERVICES.get(endpoint.compose_service or "")
        if entry and variables and (endpoint.model, endpoint.model_file) == (entry["model"], entry["model_file"]):
            env[variables[0]] = entry["container_path"]
    return env
