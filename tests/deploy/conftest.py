"""Fixtures for the Helm chart tests: a real helm binary (installed by scripts/get_helm.sh when missing) and
helpers that render the chart and validate what comes out."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "koserve"
GET_HELM = REPO / "scripts" / "get_helm.sh"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
VALUES_FILES = sorted(p.name for p in CHART.glob("values-*.yaml"))
KUBERNETES_VERSION = "1.37"
HELM_TIMEOUT_S = 60

# Kinds defined by CRDs: checked against our own schemas of the fields the chart uses.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkerset.json",
}


def _cache_dir() -> Path:
    return Path(os.environ.get("KOSERVE_CACHE") or Path.home() / ".cache" / "koserve")


def _helm_runs(path: str | Path) -> bool:
    try:
        return subprocess.run([str(path), "version", "--short"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of a working helm: $KOSERVE_CACHE/bin/helm, else helm on PATH, else installed by scripts/get_helm.sh."""
    for candidate in (_cache_dir() / "bin" / "helm", shutil.which("helm")):
        if candidate and Path(candidate).is_file() and _helm_runs(candidate):
            return str(candidate)
    proc = subprocess.run(["bash", str(GET_HELM)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"scripts/get_helm.sh failed:\n{proc.stderr}"
    path = proc.stdout.strip().splitlines()[-1]
    assert _helm_runs(path), f"get_helm.sh printed {path!r}, which does not run"
    return path


@dataclass
class Rendered:
    docs: list[dict]

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
        return found[0]

    def names(self, kind: str) -> list[str]:
        return sorted(d["metadata"]["name"] for d in self.of_kind(kind))


def helm_args(values_files=(), sets=()) -> list[str]:
    args: list[str] = []
    for f in values_files:
        args += ["-f", str(CHART / f)]
    for s in sets:
        args += ["--set", s]
    return args


class Helm:
    def __init__(self, path: str):
        self.path = path
        self._cache: dict[tuple, Rendered] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.path, *args], capture_output=True, text=True, timeout=HELM_TIMEOUT_S,
                              env={**os.environ, "HELM_CACHE_HOME": str(_cache_dir() / "helm-home" / "cache"),
                                   "HELM_CONFIG_HOME": str(_cache_dir() / "helm-home" / "config"),
                                   "HELM_DATA_HOME": str(_cache_dir() / "helm-home" / "data")})

    def template(self, values_files=(), sets=(), *, release: str = "ks", tests: bool = True) -> Rendered:
        key = (tuple(values_files), tuple(sets), release)
        if key not in self._cache:
            proc = self.run("template", release, str(CHART), "--namespace", "serving", *helm_args(values_files, sets))
            assert proc.returncode == 0, f"helm template failed: {proc.stderr}"
            docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
            self._cache[key] = Rendered(docs)
        return self._cache[key]

    def template_error(self, values_files=(), sets=()) -> str:
        proc = self.run("template", "ks", str(CHART), *helm_args(values_files, sets))
        assert proc.returncode != 0, f"helm template accepted bad values {sets}"
        return proc.stderr


@pytest.fixture(scope="session")
def chart(helm) -> Helm:
    return Helm(helm)


def _crd_validator(api: str, kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(api, kind)]).read_text())
    return jsonschema.Draft202012Validator(schema)


def pod_template_as_pod(template: dict, name: str) -> dict:
    """A PodTemplateSpec (e.g. inside a LeaderWorkerSet) as a Pod, so kubernetes-validate checks its spec."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **template.get("metadata", {})},
            "spec": template["spec"]}


def validate_docs(docs: list[dict]) -> None:
    """Every rendered object: core kinds with kubernetes-validate --strict, CRD kinds with our schemas (and the
    pod templates inside a LeaderWorkerSet with kubernetes-validate). Anything else is an error."""
    problems = []
    for doc in docs:
        api, kind, name = doc.get("apiVersion"), doc.get("kind"), doc.get("metadata", {}).get("name")
        where = f"{kind}/{name}"
        if (api, kind) in CRD_SCHEMAS:
            errors = sorted(_crd_validator(api, kind).iter_errors(doc), key=lambda e: list(e.path))
            problems += [f"{where}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors]
            if kind == "LeaderWorkerSet":
                lwt = doc["spec"]["leaderWorkerTemplate"]
                for role in ("leaderTemplate", "workerTemplate"):
                    if role in lwt:
                        try:
                            kubernetes_validate.validate(pod_template_as_pod(lwt[role], f"{name}-{role.lower()}"),
                                                         KUBERNETES_VERSION, strict=True)
                        except kubernetes_validate.ValidationError as e:
                            problems.append(f"{where} {role}: {'.'.join(map(str, e.path))}: {e.message}")
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{where}: no schema: {e.message}")
    assert not problems, "invalid manifests:\n" + "\n".join(problems)


def containers(doc: dict) -> dict[str, dict]:
    spec = pod_spec(doc)
    return {c["name"]: c for c in spec.get("containers", []) + spec.get("initContainers", [])}


def pod_spec(doc: dict) -> dict:
    if doc["kind"] == "Pod":
        return doc["spec"]
    return doc["spec"]["template"]["spec"]


def gpu_count(container: dict) -> tuple[int, int]:
    res = container.get("resources", {})
    return (int(res.get("requests", {}).get("nvidia.com/gpu", 0)), int(res.get("limits", {}).get("nvidia.com/gpu", 0)))


def load_values(*files: str) -> dict:
    """values.yaml overlaid with the given values files (Helm's map merge)."""
    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a
    merged = yaml.safe_load((CHART / "values.yaml").read_text())
    for f in files:
        merged = merge(merged, yaml.safe_load((CHART / f).read_text()))
    return merged


class DeployKit:
    """The helpers above, handed to tests as a fixture (pytest runs with --import-mode=importlib, so test modules
    cannot import conftest)."""
    chart_dir = CHART
    repo = REPO
    get_helm = GET_HELM
    values_files = VALUES_FILES
    validate_docs = staticmethod(validate_docs)
    containers = staticmethod(containers)
    pod_spec = staticmethod(pod_spec)
    gpu_count = staticmethod(gpu_count)
    load_values = staticmethod(load_values)
    pod_template_as_pod = staticmethod(pod_template_as_pod)


@pytest.fixture(scope="session")
def kit() -> type[DeployKit]:
    return DeployKit
