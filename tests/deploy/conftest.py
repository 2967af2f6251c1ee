"""Fixtures for the Helm chart tests: a real helm binary (installed by scripts/get_helm.sh when missing) and
helpers that render the chart and validate what comes out."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
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
    """koserve's cache (the rule scripts/get_helm.sh follows too)."""
    from koserve.fixtures import cache_dir

    return cache_dir()


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


# ------------------------------------------------------------------------------ containers and their commands

@dataclass
class RenderedContainer:
    """One container of a rendered pod template, with where it came from."""

    where: str  # Kind/name/role/container
    container: dict
    init: bool

    @property
    def argv(self) -> list[str]:
        return list(self.container.get("command", [])) + list(self.container.get("args", []))

    def port(self, name_or_number) -> int:
        """A probe's port: a number, or the containerPort with that name (KeyError when there is none)."""
        if isinstance(name_or_number, int):
            return name_or_number
        return {p["name"]: p["containerPort"] for p in self.container.get("ports", []) if "name" in p}[name_or_number]


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(role, pod spec) of every pod template in a rendered object (none for kinds without pods)."""
    if doc["kind"] == "LeaderWorkerSet":
        lwt = doc["spec"]["leaderWorkerTemplate"]
        return [(r, lwt[r]["spec"]) for r in ("leaderTemplate", "workerTemplate") if r in lwt]
    if doc["kind"] == "Pod":
        return [("pod", doc["spec"])]
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [("pod", doc["spec"]["template"]["spec"])]
    return []


def all_containers(docs: list[dict]) -> list[RenderedContainer]:
    out = []
    for doc in docs:
        for role, spec in pod_specs(doc):
            for init, key in ((True, "initContainers"), (False, "containers")):
                for c in spec.get(key, []):
                    where = f"{doc['kind']}/{doc['metadata']['name']}/{role}/{c['name']}"
                    out.append(RenderedContainer(where, c, init))
    return out


def shell_lines(script: str) -> list[str]:
    """The script's logical lines (backslash-newline continuations joined), heredoc bodies dropped."""
    lines, current, heredoc_end = [], "", None
    for raw in script.splitlines():
        if heredoc_end is not None:
            if raw.strip() == heredoc_end:
                heredoc_end = None
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        line = (current + raw).strip()
        current = ""
        match = re.search(r"<<-?\s*'?\"?([A-Za-z_]+)'?\"?", line)
        if match:
            heredoc_end = match.group(1)
        lines.append(line)
    return lines


def koserve_invocations(script: str) -> list[list[str]]:
    """argv (without the leading `koserve`) of every `koserve ...` / `exec koserve ...` line in a shell script.
    Shell variables stay as written ("$ENGINE_DIR"): argparse sees the same flags the pod's shell would pass."""
    found = []
    for line in shell_lines(script):
        if re.match(r"(exec\s+)?koserve(\s|$)", line):
            words = shlex.split(line)
            found.append(words[2:] if words[0] == "exec" else words[1:])
    return found


def parse_koserve(argv: list[str]):
    """``koserve <argv>`` parsed by koserve's real parser (built as src/koserve/cli/__init__.py does).
    Returns (namespace, None) or (None, argparse's message)."""
    import contextlib
    import io

    from koserve.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return None, f"exit {exc.code}: {err.getvalue().strip()}"
    if not getattr(args, "func", None):
        return None, "no subcommand"
    return args, None


@pytest.fixture(scope="session")
def tritonserver_flags() -> frozenset[str]:
    """Flag names (without --) that the real bundled tritonserver 2.51 prints in --help."""
    from koserve.errors import ConfigError

    try:
        from koserve.cpu_engine.pytriton_server import find_pytriton, server_env

        dist = find_pytriton()
    except ConfigError as e:
        pytest.skip(f"no bundled tritonserver: {e}")
    proc = subprocess.run([str(dist.binary), "--help"], env=server_env(dist), capture_output=True, text=True,
                          timeout=60)
    flags = frozenset(re.findall(r"^\s+--([a-z0-9][a-z0-9-]*)", proc.stdout + proc.stderr, re.M))
    assert {"model-repository", "http-restricted-api", "grpc-restricted-protocol", "exit-timeout-secs"} <= flags, \
        f"tritonserver --help printed no usable flag list:\n{(proc.stdout + proc.stderr)[:2000]}"
    return flags


def tritonserver_flag_problems(extra: list[str] | tuple[str, ...], flags: frozenset[str]) -> list[str]:
    """Arguments after `koserve serve ... --` whose flag name the real tritonserver does not know."""
    problems = []
    for arg in extra:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            if name not in flags:
                problems.append(f"tritonserver has no flag --{name} (in {arg!r})")
    return problems


def parse_quantity(q) -> float:
    """A Kubernetes quantity (512Mi, 1Gi, 500m, 2) as a number (bytes / cores)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "k": 1e3, "M": 1e6,
             "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18, "m": 1e-3}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert match, f"not a quantity: {q!r}"
    return float(match.group(1)) * units.get(match.group(2), 1) if match.group(2) else float(match.group(1))


# ----------------------------------------------------------------------------------- NetworkPolicy semantics

def _selects(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector against labels (matchLabels and matchExpressions; {} selects everything)."""
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        present, value = e["key"] in labels, labels.get(e["key"])
        op = e["operator"]
        if (op == "In" and value not in e["values"]) or (op == "NotIn" and present and value in e["values"]) \
                or (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


@dataclass(frozen=True)
class Peer:
    """The other end of a connection: a pod (its namespace, with the namespace's labels, and its own labels), or an
    address outside the cluster (``ip``; only ipBlock peers match it)."""

    namespace: str = ""
    labels: dict | None = None
    namespace_labels: dict | None = None
    ip: str | None = None

    def ns_labels(self) -> dict:
        return {"kubernetes.io/metadata.name": self.namespace, **(self.namespace_labels or {})}


def _peer_matches(peer_spec: dict, peer: Peer, policy_namespace: str) -> bool:
    """One NetworkPolicyPeer against a pod or an outside address (a peer with only podSelector means the policy's
    own namespace; ipBlock is for addresses outside the cluster)."""
    import ipaddress

    if "ipBlock" in peer_spec:
        if peer.ip is None:
            return False  # pod-to-pod traffic is judged by the selectors
        block = peer_spec["ipBlock"]
        address = ipaddress.ip_address(peer.ip)
        net = ipaddress.ip_network(block["cidr"])
        if address.version != net.version or address not in net:
            return False
        return not any(address.version == ipaddress.ip_network(e).version and address in ipaddress.ip_network(e)
                       for e in block.get("except", []))
    if peer.ip is not None:
        return False
    ns_sel = peer_spec.get("namespaceSelector")
    ns_ok = peer.namespace == policy_namespace if ns_sel is None else _selects(ns_sel, peer.ns_labels())
    return ns_ok and _selects(peer_spec.get("podSelector"), peer.labels or {})


def _rules_admit(rules: list | None, key: str, peer: Peer, port: int, protocol: str, policy_namespace: str) -> bool:
    for rule in rules or []:
        ports = rule.get("ports")
        if ports and not any(p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in ports):
            continue
        peers = rule.get(key)
        if not peers:
            return True
        if any(_peer_matches(spec, peer, policy_namespace) for spec in peers):
            return True
    return False


def network_policy_admits(policy: dict, peer: Peer, port: int, policy_namespace: str, protocol: str = "TCP") -> bool:
    """Whether an Ingress NetworkPolicy admits traffic from ``peer`` to ``port`` of the pods it selects
    (Kubernetes semantics: rules are ORed; a rule without ports admits every port, without from every source)."""
    return _rules_admit(policy["spec"].get("ingress"), "from", peer, port, protocol, policy_namespace)


def network_policy_allows_egress(policy: dict, peer: Peer, port: int, policy_namespace: str,
                                 protocol: str = "TCP") -> bool:
    """Whether the pods a NetworkPolicy selects may open connections to ``peer`` on ``port``: always when the policy
    has no Egress type; otherwise only when an egress rule allows it (a rule without ports allows every port,
    without `to` every destination)."""
    if "Egress" not in policy["spec"].get("policyTypes", []):
        return True
    return _rules_admit(policy["spec"].get("egress"), "to", peer, port, protocol, policy_namespace)


# ------------------------------------------------------------------------- a read-only root, as in the pods

_READ_ONLY_SETUP = r"""
set -eu
# Paths the test itself needs (the checkout, its venv and cache) that lie below an emptyDir's mount point, as a
# checkout under /tmp does: bound into a stash first and bound back after the emptyDirs are mounted.
stash=/var/tmp/koserve-ro-stash
mkdir -p "$stash"
mount -t tmpfs -o size=1m,mode=0700 tmpfs "$stash"
n=0
hidden=""
for keep in $KOSERVE_TEST_VISIBLE $KOSERVE_TEST_RW; do
  for dir in $KOSERVE_TEST_TMPFS; do
    case "$keep/" in "$dir"/*) n=$((n + 1)); mkdir "$stash/$n"; mount --bind "$keep" "$stash/$n"
                               hidden="$hidden $n:$keep"; break ;; esac
  done
done
# Every mount read-only (as readOnlyRootFilesystem makes the container's root), except the kernel's /proc, /sys and
# the device nodes (/dev, /dev/pts, /dev/mqueue); /dev/shm too, unless it is listed writable below.
for mp in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
  case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/pts|/dev/pts/*|/dev/mqueue) continue ;; esac
  mount -o remount,bind,ro "$mp"
done
# The emptyDirs: fresh, empty, writable.
for dir in $KOSERVE_TEST_TMPFS; do mount -t tmpfs -o size=1g,mode=1777 tmpfs "$dir"; done
for item in $hidden; do
  keep=${item#*:}
  mkdir -p "$keep"
  mount --bind "$stash/${item%%:*}" "$keep"
  mount -o remount,bind,ro "$keep"
done
# Writable folders whose content outlives the namespace (an emptyDir one container fills and the next one reads).
for dir in $KOSERVE_TEST_RW; do mount --bind "$dir" "$dir"; mount -o remount,bind,rw "$dir"; done
unset KOSERVE_TEST_TMPFS KOSERVE_TEST_RW KOSERVE_TEST_VISIBLE
exec "$@"
"""


def read_only_root_argv(argv: list[str], writable: list[str], keep: list[str] = ()
                        ) -> tuple[list[str], dict[str, str]]:
    """``argv`` run in a mount namespace of its own where every file system is read-only and only ``writable``
    (empty tmpfs mounts, like a pod's emptyDirs) and ``keep`` (folders bound writable, their content kept) can be
    written: (argv to run, env to add). The checkout, the running venv and the koserve cache stay visible even when
    they lie below a ``writable`` path (a clone under /tmp). Needs root (unshare -m). Paths with spaces are not
    supported."""
    visible = {str(REPO), sys.prefix, os.getcwd(), os.environ.get("KOSERVE_CACHE", "")}
    visible = sorted(v for v in visible if v and Path(v).is_dir())
    assert all(" " not in w for w in [*writable, *keep, *visible]), (writable, keep, visible)
    wrapped = ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", _READ_ONLY_SETUP,
               "read-only-root", *argv]
    return wrapped, {"KOSERVE_TEST_TMPFS": " ".join(writable), "KOSERVE_TEST_RW": " ".join(keep),
                     "KOSERVE_TEST_VISIBLE": " ".join(visible)}


def read_only_root_unavailable() -> str | None:
    """Why a read-only mount namespace cannot be made here (None when it can)."""
    if not shutil.which("unshare"):
        return "no unshare binary"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "bash", "-c",
                            "mount -o remount,bind,ro / && ! touch /.koserve-ro-probe 2>/dev/null"],
                           capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else f"unshare -m / remount failed: {probe.stderr.strip()[:200]}"


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
    pod_specs = staticmethod(pod_specs)
    all_containers = staticmethod(all_containers)
    shell_lines = staticmethod(shell_lines)
    koserve_invocations = staticmethod(koserve_invocations)
    parse_koserve = staticmethod(parse_koserve)
    tritonserver_flag_problems = staticmethod(tritonserver_flag_problems)
    parse_quantity = staticmethod(parse_quantity)
    network_policy_admits = staticmethod(network_policy_admits)
    network_policy_allows_egress = staticmethod(network_policy_allows_egress)
    read_only_root_argv = staticmethod(read_only_root_argv)
    read_only_root_unavailable = staticmethod(read_only_root_unavailable)
    Peer = Peer


@pytest.fixture(scope="session")
def kit() -> type[DeployKit]:
    return DeployKit
