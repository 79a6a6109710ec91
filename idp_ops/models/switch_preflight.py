"""Preflight of a model switch: is the model in the inventory, intact, visible to the service, does it fit, and
what can it reach against the endpoint's acceptance criteria. Nothing here starts or stops a container.

Each check is a row (check, status, detail); ``refused`` rows stop the switch before anything is recreated.
Statuses: ok, refused, unknown (could not be judged: never a refusal), warning, unattainable (a criterion
the model's physics ceiling cannot reach: shown, not refused, as validation reports it).
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from idp_ops.errors import IdpOpsError
from idp_ops.models.fit import Budget, assess_fit, gpu_free_vram, host_mem_available, service_shape
from idp_ops.models.gguf_meta import KIND_GGUF, ModelFile, scan_models
from idp_ops.models.selection import SWITCHABLE_SERVICES

OK, REFUSED, UNKNOWN, WARNING, UNATTAINABLE = "ok", "refused", "unknown", "warning", "unattainable"


class SwitchInputError(IdpOpsError, ValueError):
    """The request names an endpoint or model that does not exist (exit 2): the message lists the choices."""


@dataclass
class Check:
    check: str
    status: str
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Preflight:
    model: ModelFile
    container_path: str | None
    checks: list[Check] = field(default_factory=list)
    fit: dict[str, Any] | None = None
    sha256: str | None = None

    @property
    def refused(self) -> list[Check]:
        return [c for c in self.checks if c.status == REFUSED]

    def add(self, check: str, status: str, detail: str) -> None:
        self.checks.append(Check(check, status, detail))

    def table(self) -> list[dict]:
        return [c.as_dict() for c in self.checks]


# -- choices -----------------------------------------------------------------------------


def switchable_endpoints(settings) -> list[str]:
    return [e.name for e in settings.endpoints or [] if (e.compose_service or "") in SWITCHABLE_SERVICES]


def gguf_choices(models_dir: Path) -> list[ModelFile]:
    """The inventory's GGUFs (findings included: a broken file is still a named choice, refused later)."""
    return [row for row in scan_models(models_dir) if row.kind == KIND_GGUF]


def resolve_endpoint(settings, name: str):
    choices = switchable_endpoints(settings)
    endpoint = next((e for e in settings.endpoints or [] if e.name == name), None)
    if endpoint is None:
        raise SwitchInputError(f"unknown endpoint {name!r}; endpoints that can switch models: {choices}")
    if endpoint.name not in choices:
        raise SwitchInputError(
            f"endpoint {name!r} (service {endpoint.compose_service!r}) does not switch GGUF models; "
            f"endpoints that can: {choices}"
        )
    return endpoint


def resolve_model(rows: list[ModelFile], name: str) -> ModelFile:
    """By relative path, file name, or file name without ``.gguf`` (when that names one file)."""
    for key in (lambda r: r.relpath, lambda r: Path(r.relpath).name, lambda r: Path(r.relpath).stem):
        matches = [r for r in rows if key(r) == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise SwitchInputError(f"model {name!r} names {len(matches)} files; give the path: "
                                   f"{[m.relpath for m in matches]}")  # fmt: skip
    raise SwitchInputError(f"unknown model {name!r}; GGUFs in the inventory: {[r.relpath for r in rows]}")


# -- the checks -----------------------------------------------------------------------


def compose_service(settings, service: str) -> dict:
    """The service as compose will run it (interpolated with deploy's own environment)."""
    from idp_ops.stack.audit import deploy_environment
    from idp_ops.stack.audit_load import interpolate_values, load_compose, services_of

    env = deploy_environment(settings)
    services = services_of(interpolate_values(load_compose(settings.compose_file, env), env))
    if service not in services:
        raise SwitchInputError(f"no service {service!r} in {settings.compose_file}")
    return services[service]


def container_path(service: dict, host_path: Path) -> str | None:
    """Where the service sees ``host_path`` through its bind mounts; None when no mount covers it."""
    from idp_ops.stack.audit_load import split_short_volume

    host_path = Path(host_path).resolve()
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            source, target, _ = split_short_volume(entry)
        elif isinstance(entry, dict) and entry.get("type", "bind") == "bind":
            source, target = str(entry.get("source") or ""), str(entry.get("target") or "")
        else:
            continue
        if not source.startswith("/"):
            continue
        try:
            rel = host_path.relative_to(Path(source).resolve())
        except ValueError:
            continue
        return posixpath.join(target, rel.as_posix())
    return None


def _uses_gpu(service: dict) -> bool:
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
    return bool(devices) or service.get("runtime") == "nvidia"


def check_manifest(settings, model: ModelFile, pre: Preflight) -> None:
    """Against the store's last manifest (backup/manifest.py): a mismatch refuses; no entry is hashed and said."""
    from idp_ops.backup.manifest import MANIFEST_NAME, ManifestError, check_entries, hash_file, load_manifest
    from idp_ops.backup.snapshots import manifest_dir

    manifest_file = manifest_dir(settings) / MANIFEST_NAME
    entry = None
    try:
        entry = load_manifest(manifest_file).entries.get(model.relpath)
        where = f"manifest {manifest_file}"
    except ManifestError:
        where = "no manifest yet"
    if entry is not None:
        result = check_entries(Path(model.root), [entry])
        if result.ok:
            pre.sha256 = entry.sha256
            pre.add("manifest", OK, f"sha256 {entry.sha256[:16]}… matches the {where}")
        else:
            why = result.reasons.get(model.relpath) or ("missing" if result.missing else "differs")
            pre.add("manifest", REFUSED, f"{model.relpath} does not match the manifest: {why}")
        return
    try:
        digest, _ = hash_file(Path(model.path))
    except OSError as exc:
        pre.add("manifest", REFUSED, f"cannot read {model.relpath}: {exc}")
        return
    pre.sha256 = digest
    pre.add("manifest", WARNING, f"not in a manifest yet ({where}); sha256 {digest[:16]}… (refresh: model_manifest)")


def check_fit(settings, endpoint, service: dict, model: ModelFile, current: ModelFile | None, pre: Preflight,
              *, nvml: Any = None) -> None:  # fmt: skip
    shape = service_shape(service)
    weights = model.tensor_bytes or model.size
    # What the running model releases when its container is recreated counts as free.
    release = 0
    if current is not None and not current.finding:
        kv = current.kv_cache_bytes_per_token() or 0
        release = (current.tensor_bytes or current.size) + kv * (shape.ctx_size or 0)
    budgets = []
    if _uses_gpu(service):
        vram = gpu_free_vram(nvml)
        if vram.bytes is not None:
            vram = Budget(vram.name, vram.bytes + release, "free + what the current model releases")
        budgets.append(vram)
    else:
        if shape.memory_limit:
            budgets.append(Budget("container limit", shape.memory_limit))
        else:
            budgets.append(Budget("container limit", None, "no deploy.resources.limits.memory"))
        host = host_mem_available()
        if host.bytes is not None:
            host = Budget(host.name, host.bytes + release, "MemAvailable + what the current model releases")
        budgets.append(host)
    fit = assess_fit(weights_bytes=weights, kv_bytes_per_token=model.kv_cache_bytes_per_token(),
                     ctx_size=shape.ctx_size, budgets=budgets)  # fmt: skip
    pre.fit = fit.as_dict()
    status = {"fits": OK, "does not fit": REFUSED}.get(fit.status, UNKNOWN)
    pre.add("fit", status, fit.message)


def check_physics(settings, endpoint, model: ModelFile, pre: Preflight) -> None:
    """The new model's single-stream ceiling beside each acceptance criterion physics bounds."""
    from idp_ops.physics.bandwidth_store import latest_measured_bandwidth
    from idp_ops.physics.ceilings import endpoint_ceiling
    from idp_ops.physics.formulas import criterion_status, min_step_ms

    candidate = endpoint.model_copy(update={"model_file": model.relpath, "weights_gb": None})
    try:
        measured = latest_measured_bandwidth(settings.history_file)
    except Exception as exc:  # a locked or old history must not block a switch: datasheet figures then
        pre.add("physics", UNKNOWN, f"measured bandwidth unreadable ({exc}); datasheet figures used")
        measured = None
    ceiling = endpoint_ceiling(candidate, models_dir=settings.models_dir, hardware=settings.hardware,
                               measured=measured)  # fmt: skip
    if ceiling is None:
        pre.add("ceiling", UNKNOWN, "no ceiling: the model's weight bytes or the device bandwidth is unknown")
        return
    floor = min_step_ms(ceiling.tok_s)
    pre.add("ceiling", OK, f"{ceiling.tok_s:.1f} tok/s single stream ({ceiling.weight_bytes / 1e9:.3f} GB per token "
                           f"at {ceiling.bandwidth_gbs:g} GB/s {ceiling.bandwidth_source}); no step under {floor:.2f} ms")  # fmt: skip
    crit = endpoint.acceptance
    if crit.decode_tok_s_min is not None:
        status = criterion_status(None, crit.decode_tok_s_min, ceiling.tok_s, higher_is_better=True)
        pre.add("criterion decode_throughput", UNATTAINABLE if status == "unattainable" else OK,
                f"needs >= {crit.decode_tok_s_min:g} tok/s, ceiling {ceiling.tok_s:.1f} tok/s")  # fmt: skip
    for name, value in (("ttft_p50", crit.ttft_p50_ms), ("ttft_p95", crit.ttft_p95_ms), ("slo_itl", crit.slo_itl_ms)):
        if value is not None:
            status = UNATTAINABLE if value < floor else OK
            pre.add(f"criterion {name}", status, f"needs <= {value:g} ms, one decode step takes >= {floor:.2f} ms")


def run_preflight(settings, endpoint, model: ModelFile, current: ModelFile | None, *, nvml: Any = None) -> Preflight:
    service = compose_service(settings, endpoint.compose_service)
    host_path = Path(model.path)
    pre = Preflight(model=model, container_path=container_path(service, host_path))
    if model.finding:
        pre.add("inventory", REFUSED, f"{model.relpath}: {model.finding}")
        return pre  # a broken header: nothing else about it can be trusted
    pre.add("inventory", OK, f"{model.relpath}: {model.architecture or '?'} {model.size_label or ''} "
                             f"{model.file_type or ''}, {model.size / 1e6:.1f} MB".replace("  ", " "))  # fmt: skip
    if pre.container_path is None:
        pre.add("mount", REFUSED, f"service {endpoint.compose_service} mounts no directory holding {host_path}")
    else:
        pre.add("mount", OK, f"the service sees it as {pre.container_path}")
    check_fit(settings, endpoint, service, model, current, pre, nvml=nvml)
    check_physics(settings, endpoint, model, pre)
    if pre.refused:  # hashing costs a full read (a 40 GB model: minutes) and would change nothing
        pre.add("manifest", UNKNOWN, "not checked: refused already")
    else:
        check_manifest(settings, model, pre)
    return pre
