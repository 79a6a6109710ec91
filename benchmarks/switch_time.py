"""Model switch time: `switch_model` (preflight + recreate + prove) against a bare
`docker compose up -d --no-deps --force-recreate SERVICE` of the same service, side by side.

The bare recreate is timed until /health answers 200 (the earliest moment anyone could use the model), and
also to the command's return. Ours is the whole switch: preflight (inventory, fit, manifest hash), the
atomic selection write, the recreate, and the proof (health, 401 without key, a completion, served model).
Each round switches Gemma -> tiny and tiny -> Gemma, and recreates each model bare once, so both sides load
the same model equally often.

Usage: .venv/bin/python benchmarks/switch_time.py [ROUNDS]   (default 5)
Starts its own private CPU stack (a temp dir, free ports) and removes it at the end; needs dockerd, the
llama-server image and the demo model (compose/setup.sh).
"""

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # idp_ops_harness: the tests' helpers

from idp_ops.models.switch import switch_model
from idp_ops.settings import DEMO_MODEL_FILE, REPO_ROOT, load_settings
from idp_ops.stack.deploy import compose_project
from idp_ops.stack.secrets import ensure_keys
from idp_ops_harness.settings_files import cpu_stack_settings, write_settings
from idp_ops_harness.tiny_gguf import cached_tiny_gguf

SERVICE = ENDPOINT = "llamacpp-cpu"


def wait_health(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not healthy after {timeout_s} s")


def main(rounds: int) -> None:
    repo = load_settings(REPO_ROOT / "idp-ops.yaml")
    root = Path(tempfile.mkdtemp(prefix="idp-switch-bench-"))
    models = root / "models"
    models.mkdir()
    shutil.copyfile(repo.models_dir / DEMO_MODEL_FILE, models / DEMO_MODEL_FILE)
    shutil.copyfile(cached_tiny_gguf(), models / "tiny-llama.gguf")
    values = cpu_stack_settings(root / "home", models, repo.llama_server_image, "idp-switch-bench")
    for endpoint in values["endpoints"]:
        endpoint["model_file"] = DEMO_MODEL_FILE
    config = write_settings(root / "idp-ops.yaml", **values)
    settings = load_settings(config)
    ensure_keys(settings.secrets_dir, settings.key_names, owner_uid=settings.service_uid,
                owner_gid=settings.service_gid)  # fmt: skip
    compose_project(settings).up([SERVICE], timeout=180)
    url = settings.endpoint(ENDPOINT).url
    ours: dict[str, list[float]] = {"tiny-llama.gguf": [], DEMO_MODEL_FILE: []}
    bare: dict[str, list[float]] = {"tiny-llama.gguf": [], DEMO_MODEL_FILE: []}
    bare_cmd: list[float] = []
    phases: list[tuple[float, float, float]] = []
    try:
        for _ in range(rounds):
            for target in ("tiny-llama.gguf", DEMO_MODEL_FILE):
                started = time.perf_counter()
                result = switch_model(load_settings(config), ENDPOINT, target)
                ours[target].append(time.perf_counter() - started)
                assert result.outcome == "switched", result.message
                phases.append((result.preflight_s, result.recreate_s, result.prove_s))
                # Bare: the same service, same model (the selection now names it), nothing checked.
                project = compose_project(load_settings(config))
                started = time.perf_counter()
                project.run("up", "-d", "--no-deps", "--force-recreate", SERVICE, timeout=180)
                bare_cmd.append(time.perf_counter() - started)
                wait_health(url)
                bare[target].append(time.perf_counter() - started)
    finally:
        compose_project(settings).down()
        shutil.rmtree(root, ignore_errors=True)

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):6.2f} s (min {min(values):.2f})"

    print(f"rounds: {rounds} (each: switch to tiny, bare recreate, switch to Gemma, bare recreate)")
    for target, label in (("tiny-llama.gguf", "to tiny "), (DEMO_MODEL_FILE, "to Gemma")):
        o, b = statistics.median(ours[target]), statistics.median(bare[target])
        print(f"{label}  switch_model median {med(ours[target])}   bare recreate+health median "
              f"{med(bare[target])}   ratio {o / b:.2f}x")  # fmt: skip
    print(f"bare `compose up -d --force-recreate` return alone: median {med(bare_cmd)}")
    pre, rec, prove = (statistics.median(p[i] for p in phases) for i in range(3))
    print(f"switch phases (median over all): preflight {pre:.2f} s, recreate+ready {rec:.2f} s, prove {prove:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
