"""Chart hardening (read-only roots, restricted APIs, egress, digests, the gateway's sources) and what a first
install needs (placeholder image, the gateway's Secret, TP against the recipe, the documented helm commands, the
helm cache, the gateway port), checked with the real helm, kubernetes-validate, koserve's own CLI parser and recipe
loader. tests/deploy/test_chart_on_real_servers.py runs the rendered commands with a read-only root."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

GATEWAY = ("gateway.enabled=true", "gateway.apiKeysSecret.name=koserve-api-keys")
LWS = ("models.akallama-70b.enabled=true", "models.komt-13b.enabled=false",
       "models.akallama-70b.multiNode.enabled=true", "models.akallama-70b.multiNode.sshSecret=akallama-ssh",
       "models.akallama-70b.engine.recipe=akallama-70b-fp8-h100-tp2pp2-2node",
       "models.akallama-70b.engine.tensorParallel=2", "models.akallama-70b.engine.pipelineParallel=2",
       "models.akallama-70b.engine.dir=engines/akallama-70b-fp8-h100-tp2pp2-2node")
BUILD = ("models.komt-13b.build.enabled=true", "models.komt-13b.engine.waitSeconds=21600")
FLEET = GATEWAY + ("gateway.mode=sidecar", "inferencePool.enabled=true")
EXTRA_INIT = ("extraInitContainers[0].name=fetch-engine", "extraInitContainers[0].image=busybox:1.36",
              "extraInitContainers[0].command[0]=/bin/true")
CASES = {
    "defaults": ((), ()),
    "both-gateway-build": (("values-both-h100x8.yaml",), GATEWAY + BUILD),
    "lws-gateway": ((), LWS + GATEWAY),
    "fleet": ((), FLEET),
    "extra-init": ((), EXTRA_INIT),
}
DIGEST = "sha256:" + "0123456789abcdef" * 4
HOME = "/home/koserve"
# Restricted-API names tritonserver accepts, from triton-inference-server/server src/restricted_features.h: the same
# nine at r24.10 (Triton 2.51, e0f0734d61c789535ac58c22b79d67eabc5d7477) and r26.04 (Triton 2.68, the production
# image's, dd16c0cad0399599240e8eb37178865eca994303); docs/customization_guide/inference_protocols.md lists them.
TRITON_RESTRICTED_NAMES = {"health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
                           "statistics", "trace", "logging"}


def _volumes(spec: dict) -> dict[str, dict]:
    return {v["name"]: v for v in spec.get("volumes", [])}


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _writable(container: dict) -> dict[str, str]:
    """mountPath → volume name of every mount the container may write."""
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", []) if not m.get("readOnly")}


# ------------------------------------------------------------------------------------------- read-only roots

@pytest.mark.parametrize("case", sorted(CASES))
def test_every_container_has_a_read_only_root_and_emptydirs_for_what_it_writes(chart, kit, case):
    rendered = chart.template(*CASES[case])
    # The Inference Extension's kinds are checked against their CRDs in test_chart_fleet.py.
    kit.validate_docs([d for d in rendered.docs if d["kind"] not in ("InferencePool", "HTTPRoute")])
    koserve_images = {c.container["image"] for c in kit.all_containers(rendered.docs)
                      if c.container["name"] in ("triton", "render-repository", "gateway", "chat")}
    seen = 0
    for doc in rendered.docs:
        for role, spec in kit.pod_specs(doc):
            volumes = _volumes(spec)
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                where = f"{doc['kind']}/{doc['metadata']['name']}/{role}/{c['name']}"
                seen += 1
                assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
                for path, volume in _writable(c).items():
                    source = volumes[volume]
                    if volume == "models" and doc["kind"] == "Job":
                        continue  # the engine build writes engines onto the models volume
                    if "emptyDir" not in source and c["name"] == "fetch-engine":
                        continue  # a user's own init container mounts what it defines
                    assert "emptyDir" in source, f"{where}: {path} is writable but volume {volume} is {source}"
                    assert source["emptyDir"].get("sizeLimit"), f"{where}: emptyDir {volume} has no sizeLimit"
                if c["image"] in koserve_images:
                    # koserve's containers: temp files in /tmp, HOME and KOSERVE_CACHE on a writable emptyDir.
                    writable = _writable(c)
                    assert "/tmp" in writable, where
                    env = _env(c)
                    for var in ("HOME", "KOSERVE_CACHE"):
                        if var in env:
                            assert any(env[var] == p or env[var].startswith(p + "/") for p in writable), \
                                f"{where}: {var}={env[var]} is not on a writable mount {sorted(writable)}"
    assert seen >= 3


def test_writable_mounts_are_exactly_what_each_container_writes(chart, kit):
    rendered = chart.template(("values-both-h100x8.yaml",), GATEWAY + BUILD)
    containers = {}
    for rc in kit.all_containers(rendered.docs):
        containers.setdefault(rc.container["name"], rc.container)
    expected = {
        "render-repository": {"/repo", "/tmp", HOME},
        "triton": {"/dev/shm", "/tmp", HOME},
        "gateway": {"/tmp", HOME},
        "chat": {"/tmp", HOME},
        "build": {"/models", "/dev/shm", "/tmp", HOME},
    }
    for name, paths in expected.items():
        assert set(_writable(containers[name])) == paths, (name, containers[name]["volumeMounts"])
        assert _env(containers[name])["HOME"] == HOME, name
        assert _env(containers[name])["KOSERVE_CACHE"] == f"{HOME}/.cache/koserve", name
    # Triton reads the rendered repository and the engines, never writes them.
    mounts = {m["mountPath"]: m for m in containers["triton"]["volumeMounts"]}
    assert mounts["/repo"]["readOnly"] is True and mounts["/models"]["readOnly"] is True
    lws = chart.template((), LWS)
    for rc in kit.all_containers(lws.docs):
        if rc.container["name"] in ("triton", "mpi-worker"):
            # The leader's ~/.ssh + hostfile and a worker's sshd files live in $HOME.
            assert set(_writable(rc.container)) == {"/dev/shm", "/tmp", HOME}, rc.where
            assert "$HOME/" in rc.container["args"][0], rc.where


def test_read_only_root_can_be_turned_off_for_debugging(chart, kit):
    rendered = chart.template((), ("containerSecurityContext.readOnlyRootFilesystem=false",))
    assert all(rc.container["securityContext"]["readOnlyRootFilesystem"] is False
               for rc in kit.all_containers(rendered.docs))


# ---------------------------------------------------------------------------------------------- restricted APIs

def test_statistics_and_model_config_are_restricted_by_default(chart, kit):
    categories = kit.load_values()["triton"]["restrictedApi"]["categories"]
    assert {"statistics", "model-config", "model-repository", "shared-memory", "logging", "trace"} <= set(categories)
    # What must stay open: the probes and clients call health and inference (and read metadata).
    assert not {"health", "inference", "metadata"} & set(categories)
    assert set(categories) <= TRITON_RESTRICTED_NAMES
    schema_enum = set(yaml.safe_load((kit.chart_dir / "values.schema.json").read_text())["properties"]["triton"][
        "properties"]["restrictedApi"]["properties"]["categories"]["items"]["enum"])
    assert schema_enum <= TRITON_RESTRICTED_NAMES
    script = kit.containers(chart.template().one("Deployment", "-komt-13b"))["triton"]["args"][0]
    restricted = ",".join(categories) + ":koserve-admin-key=${TRITON_ADMIN_KEY}"
    assert f'--http-restricted-api="{restricted}"' in script
    assert f'--grpc-restricted-protocol="{restricted}"' in script
    # An unknown name is refused by the schema; closing both places a client learns a model's inputs from, by name.
    error = chart.template_error((), ("triton.restrictedApi.categories[0]=stats",))
    assert "/triton/restrictedApi/categories/0" in error, error
    error = chart.template_error((), ("triton.restrictedApi.categories={model-config,metadata}",))
    assert "restrict model-config or metadata, not both" in error, error
    only_metadata = chart.template((), ("triton.restrictedApi.categories={logging,metadata}",))
    assert '--http-restricted-api="logging,metadata:' in kit.containers(
        only_metadata.one("Deployment", "-komt-13b"))["triton"]["args"][0]


# ------------------------------------------------------------------------------------------------------ egress

KUBE_DNS = {"k8s-app": "kube-dns", "pod-template-hash": "5d78c9869d"}


def _pod_labels(doc: dict, role: str = "") -> dict:
    if doc["kind"] == "LeaderWorkerSet":
        return doc["spec"]["leaderWorkerTemplate"][role]["metadata"]["labels"]
    return doc["spec"]["template"]["metadata"]["labels"]


def test_triton_egress_allows_dns_only_by_default(chart, kit):
    rendered = chart.template(("values-both-h100x8.yaml",), GATEWAY)
    kit.validate_docs(rendered.of_kind("NetworkPolicy"))
    Peer = kit.Peer
    komt = rendered.one("NetworkPolicy", "-komt-13b")
    assert komt["spec"]["policyTypes"] == ["Ingress", "Egress"]
    allows = lambda peer, port, proto="TCP": kit.network_policy_allows_egress(komt, peer, port, "serving", proto)  # noqa: E731
    dns = Peer("kube-system", KUBE_DNS)
    assert allows(dns, 53, "UDP") and allows(dns, 53, "TCP")
    assert not allows(dns, 443), "only DNS on the DNS pods"
    assert not allows(Peer("kube-system", {"component": "kube-apiserver"}), 443)
    assert not allows(Peer(ip="52.216.0.1"), 443), "no internet"
    assert not allows(Peer(ip="10.96.0.10"), 53, "UDP"), "DNS by pod selector, not any address"
    # Not the other model's Triton, not the gateways.
    aka = _pod_labels(rendered.one("Deployment", "-akallama-70b"))
    gateway = _pod_labels(rendered.one("Deployment", "-komt-13b-gateway"))
    for peer in (Peer("serving", aka), Peer("serving", gateway)):
        for port in (8000, 8001, 8002, 22):
            assert not allows(peer, port)


def test_multi_node_groups_reach_each_other_and_nothing_else(chart, kit):
    rendered = chart.template(("values-komt-13b-fp8-tp1.yaml",), LWS[:1] + LWS[2:])
    lws = rendered.one("LeaderWorkerSet", "-akallama-70b")
    policy = rendered.one("NetworkPolicy", "-akallama-70b")
    leader, worker = _pod_labels(lws, "leaderTemplate"), _pod_labels(lws, "workerTemplate")
    Peer = kit.Peer
    for port in (2222, 12345, 50000):  # sshd, MPI daemons, NCCL's sockets
        assert kit.network_policy_allows_egress(policy, Peer("serving", worker), port, "serving")
        assert kit.network_policy_allows_egress(policy, Peer("serving", leader), port, "serving")
        assert kit.network_policy_admits(policy, Peer("serving", leader), port, "serving")
    komt = _pod_labels(rendered.one("Deployment", "-komt-13b"))
    assert not kit.network_policy_allows_egress(policy, Peer("serving", komt), 2222, "serving")
    assert not kit.network_policy_allows_egress(policy, Peer("other", worker), 2222, "serving")
    assert kit.network_policy_allows_egress(policy, Peer("kube-system", KUBE_DNS), 53, "serving", "UDP")


def test_egress_extra_rules_and_off_switch(chart, kit, tmp_path):
    store = tmp_path / "store.yaml"
    store.write_text(yaml.safe_dump({"networkPolicy": {"egress": {
        "extraRules": [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 443, "protocol": "TCP"}]}],
        "dnsTo": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}},
                  {"ipBlock": {"cidr": "169.254.20.10/32"}}]}}}))
    rendered = chart.template((str(store),))
    kit.validate_docs(rendered.docs)
    policy = rendered.one("NetworkPolicy", "-komt-13b")
    Peer = kit.Peer
    allows = lambda peer, port, proto="TCP": kit.network_policy_allows_egress(policy, peer, port, "serving", proto)  # noqa: E731
    assert allows(Peer(ip="10.20.1.5"), 443) and not allows(Peer(ip="10.20.1.5"), 80)
    assert not allows(Peer(ip="10.21.0.1"), 443)
    assert allows(Peer(ip="169.254.20.10"), 53, "UDP"), "NodeLocal DNSCache"
    off = chart.template((), ("networkPolicy.egress.enabled=false",))
    policy = off.one("NetworkPolicy", "-komt-13b")
    assert policy["spec"]["policyTypes"] == ["Ingress"] and "egress" not in policy["spec"]
    assert kit.network_policy_allows_egress(policy, Peer(ip="52.216.0.1"), 443, "serving")
    # A rule that is not a NetworkPolicyEgressRule is refused by the schema.
    error = chart.template_error((), ("networkPolicy.egress.extraRules[0].toPorts=1",))
    assert "/networkPolicy/egress/extraRules/0" in error, error


def test_gateway_egress_reaches_its_triton_grpc_port_and_dns_only(chart, kit):
    rendered = chart.template(("values-both-h100x8.yaml",), GATEWAY)
    policy = rendered.one("NetworkPolicy", "-gateway")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    Peer = kit.Peer
    allows = lambda peer, port, proto="TCP": kit.network_policy_allows_egress(policy, peer, port, "serving", proto)  # noqa: E731
    for model in ("komt-13b", "akallama-70b"):
        triton = _pod_labels(rendered.one("Deployment", f"-{model}"))
        assert allows(Peer("serving", triton), 8001)
        assert not allows(Peer("serving", triton), 8000) and not allows(Peer("serving", triton), 8002)
    assert allows(Peer("kube-system", KUBE_DNS), 53, "UDP")
    assert not allows(Peer(ip="52.216.0.1"), 443)
    assert not allows(Peer("serving", {"app": "anything"}), 8001)


# ------------------------------------------------------------------------------------------ the gateway's sources

def test_gateway_admits_any_source_by_default_and_narrows_to_a_value(chart, kit, tmp_path):
    Peer = kit.Peer
    policy = chart.template((), GATEWAY).one("NetworkPolicy", "-gateway")
    for peer in (Peer(ip="203.0.113.9"), Peer(ip="2001:db8::1"), Peer("apps", {"app": "web"}),
                 Peer("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})):
        assert kit.network_policy_admits(policy, peer, 8080, "serving"), peer
        assert not kit.network_policy_admits(policy, peer, 8001, "serving"), peer
    narrow = chart.template((), GATEWAY + (
        "gateway.networkPolicy.from[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=ingress-nginx",))
    kit.validate_docs(narrow.docs)
    policy = narrow.one("NetworkPolicy", "-gateway")
    assert kit.network_policy_admits(policy, Peer("ingress-nginx", {"app": "controller"}), 8080, "serving")
    assert not kit.network_policy_admits(policy, Peer(ip="203.0.113.9"), 8080, "serving")
    assert not kit.network_policy_admits(policy, Peer("apps", {"app": "web"}), 8080, "serving")
    nobody = tmp_path / "nobody.yaml"
    nobody.write_text("gateway: {networkPolicy: {from: []}}\n")
    closed = chart.template((str(nobody),), GATEWAY)
    policy = closed.one("NetworkPolicy", "-gateway")
    assert policy["spec"]["ingress"] == [], "no peers must mean no rule (an empty from admits everyone)"


def test_deploy_readme_gives_the_gateway_sources_default_and_reason(kit):
    text = (kit.repo / "deploy" / "README.md").read_text()
    section = text[text.index("gateway.networkPolicy.from"):][:1200]
    assert "API key" in section and "any source" in section, section


# ------------------------------------------------------------------------------------------------- image digests

def test_image_digest_wins_over_the_tag(chart, kit):
    rendered = chart.template(("values-komt-13b-fp8-tp1.yaml",), GATEWAY + (f"image.digest={DIGEST}",))
    images = {rc.container["image"] for rc in kit.all_containers(rendered.docs)}
    assert images == {f"registry.example.com/koserve/koserve-triton@{DIGEST}"}, images
    own = chart.template((), GATEWAY + ("gateway.image.repository=registry.example.com/koserve/gateway",
                                        f"gateway.image.digest={DIGEST}"))
    gateway = kit.containers(own.one("Deployment", "-komt-13b-gateway"))["gateway"]
    assert gateway["image"] == f"registry.example.com/koserve/gateway@{DIGEST}"
    assert kit.containers(own.one("Deployment", "-komt-13b"))["triton"]["image"].endswith(":0.1.0-26.04-trtllm")
    error = chart.template_error((), ("image.digest=sha256:abc",))
    assert "/image/digest" in error, error


def _notes(chart, kit, *sets: str) -> str:
    args = [a for s in sets for a in ("--set", s)]
    proc = chart.run("install", "koserve", str(kit.chart_dir), "--dry-run=client", "--namespace", "koserve", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


def test_notes_warn_about_the_placeholder_and_tag_only_images(chart, kit):
    notes = _notes(chart, kit)
    assert "registry.example.com/koserve/koserve-triton:0.1.0-26.04-trtllm is the chart's placeholder image" in notes
    assert "set image.repository and image.digest" in notes
    notes = _notes(chart, kit, "image.repository=ghcr.io/acme/koserve-triton")
    assert "placeholder" not in notes
    assert "WARNING: ghcr.io/acme/koserve-triton:0.1.0-26.04-trtllm runs by tag alone" in notes
    assert "set\nimage.digest (sha256:…), which wins over the tag" in notes
    notes = _notes(chart, kit, "image.repository=ghcr.io/acme/koserve-triton", f"image.digest={DIGEST}", *GATEWAY,
                   "gateway.image.repository=ghcr.io/acme/koserve-gateway")
    assert f"ghcr.io/acme/koserve-triton@{DIGEST}" not in notes
    assert "WARNING: ghcr.io/acme/koserve-gateway:0.1.0-26.04-trtllm runs by tag alone" in notes
    assert "gateway.image.digest" in notes
    notes = _notes(chart, kit, "image.repository=ghcr.io/acme/koserve-triton", f"image.digest={DIGEST}")
    assert "WARNING" not in notes


# ------------------------------------------------------------------------------------- first-install refusals

def test_gateway_without_its_secret_says_what_to_set(chart):
    for sets in (GATEWAY[:1], GATEWAY[:1] + ("gateway.mode=sidecar",)):
        error = chart.template_error((), sets)
        assert "the gateway needs gateway.apiKeysSecret.name" in error, error
        assert "allOf" not in error and "minLength" not in error, error


@pytest.mark.parametrize("sets,message", [
    (("models.komt-13b.engine.tensorParallel=2",),
     "models.komt-13b.engine: tensorParallel=2, pipelineParallel=1 contradict engine.recipe komt-13b-fp8-h100-tp1 "
     "(recipes/komt-13b-fp8-h100-tp1.yaml: tp 1, pp 1)"),
    (("models.akallama-70b.enabled=true", "models.akallama-70b.engine.tensorParallel=2"),
     "contradict engine.recipe akallama-70b-fp8-h100-tp4 (recipes/akallama-70b-fp8-h100-tp4.yaml: tp 4, pp 1)"),
    (("models.komt-13b.profile=akallama-70b",),
     "models.komt-13b.profile=akallama-70b contradicts engine.recipe komt-13b-fp8-h100-tp1, which builds profile "
     "komt-13b"),
    (LWS + ("models.akallama-70b.multiNode.nodes=4",),
     "multiNode.nodes=4 gives 1 GPU(s) per pod but engine.recipe akallama-70b-fp8-h100-tp2pp2-2node is built for 2"),
])
def test_engine_settings_that_contradict_the_recipe_are_refused(chart, sets, message):
    error = chart.template_error((), sets)
    assert message in error, error


def test_a_custom_recipe_renders_with_a_note(chart, kit):
    rendered = chart.template((), ("models.komt-13b.engine.recipe=komt-13b-bf16-a100-tp2",
                                   "models.komt-13b.engine.tensorParallel=2"))
    assert kit.gpu_count(kit.containers(rendered.one("Deployment", "-komt-13b"))["triton"]) == (2, 2)
    notes = _notes(chart, kit, "models.komt-13b.engine.recipe=komt-13b-bf16-a100-tp2",
                   "models.komt-13b.engine.tensorParallel=2")
    assert "komt-13b-bf16-a100-tp2 is not a built-in recipe" in notes


def test_the_charts_recipe_catalogue_matches_the_recipes(kit):
    spec = importlib.util.spec_from_file_location("engine_recipes", Path(__file__).parent / "engine_recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render_catalogue()
    shipped = (kit.chart_dir / "engine-recipes.yaml").read_text()
    assert shipped == expected, ("deploy/helm/koserve/engine-recipes.yaml is stale; regenerate it with\n"
                                 "  .venv/bin/python tests/deploy/engine_recipes.py > "
                                 "deploy/helm/koserve/engine-recipes.yaml")
    catalogue = yaml.safe_load(shipped)
    from koserve.engines.recipe import builtin_recipe_names

    assert sorted(catalogue) == builtin_recipe_names()
    # Every values file names a built-in recipe whose parallelism it uses.
    for f in kit.values_files:
        for name, m in kit.load_values(f)["models"].items():
            if m["enabled"]:
                r = catalogue[m["engine"]["recipe"]]
                assert (r["tp"], r["pp"], r["profile"]) == (
                    m["engine"]["tensorParallel"], m["engine"]["pipelineParallel"], m["profile"]), (f, name)


# ------------------------------------------------------------------------------------- the documented commands

def _helm_commands(text: str) -> list[str]:
    """`helm …` lines of the bash blocks (continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("helm "):
                commands.append(line)
    return commands


def test_documented_helm_commands_run_with_the_real_helm(chart, kit, tmp_path):
    """Every `helm template` / `install` / `lint` line of deploy/README.md and docs/deploy.md runs offline as
    written (install with --dry-run=client added); the others need a cluster."""
    ran = set()
    for doc in (kit.repo / "deploy" / "README.md", kit.repo / "docs" / "deploy.md"):
        for line in _helm_commands(doc.read_text()):
            argv = shlex.split(line.split(" > ", 1)[0])  # `helm template … > rendered.yaml`: helm's own argv
            verb = argv[1]
            if verb in ("test", "upgrade", "rollback", "history", "uninstall", "status"):
                continue
            assert verb in ("template", "install", "lint"), f"{doc.name}: unexpected helm command: {line}"
            if verb == "install":
                argv.append("--dry-run=client")
            proc = subprocess.run([chart.path, *argv[1:]], cwd=kit.repo, capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "HELM_CACHE_HOME": str(tmp_path / "c"),
                                       "HELM_CONFIG_HOME": str(tmp_path / "cfg"), "HELM_DATA_HOME": str(tmp_path / "d")})
            assert proc.returncode == 0, f"{doc.name}: {line}\n{proc.stderr}"
            ran.add((doc.name, verb))
    assert ("README.md", "template") in ran and ("README.md", "install") in ran, ran


def test_deploy_readme_says_what_to_set_before_installing(kit):
    text = (kit.repo / "deploy" / "README.md").read_text()
    box = re.search(r"## Before you install.*?(?=\n## )", text, re.S)
    assert box, "deploy/README.md has no 'Before you install' section"
    box = box.group(0)
    values = kit.load_values()
    named = set(re.findall(r"`((?:image|storage|models|gateway|triton)\.[A-Za-z0-9_.<>*-]+)`", box))
    for must in ("image.repository", "image.digest", "storage.type", "models.<m>.gpu.product",
                 "models.<m>.engine.dir", "models.<m>.engine.tokenizerDir"):
        assert must in named, f"{must} missing from the box: {sorted(named)}"
    for path in named:
        for model in values["models"]:
            node = values
            for part in path.replace("<m>", model).split("."):
                if part == "*":
                    break
                assert isinstance(node, dict) and part in node, f"`{path}` in the box is not a value"
                node = node[part]


# ---------------------------------------------------------------------------------------- helm's cache, the port

def test_get_helm_uses_koserves_cache_rule(kit, tmp_path):
    def where(env):
        proc = subprocess.run(["bash", str(kit.get_helm), "--where"], env=env, capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def koserve_cache(env):
        proc = subprocess.run([sys.executable, "-c", "from koserve.fixtures import cache_dir; print(cache_dir())"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    base = {k: v for k, v in os.environ.items() if k != "KOSERVE_CACHE"}
    base["HOME"] = str(tmp_path / "home")
    assert where(base) == f"{koserve_cache(base)}/bin/helm" == str(kit.repo / ".cache" / "koserve" / "bin" / "helm")
    custom = {**base, "KOSERVE_CACHE": str(tmp_path / "cache")}
    assert where(custom) == f"{koserve_cache(custom)}/bin/helm" == str(tmp_path / "cache" / "bin" / "helm")
    proc = subprocess.run(["bash", str(kit.get_helm), "--bogus"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage: get_helm.sh [--where]" in proc.stderr


def test_gateway_port_is_koserve_gateways_default_everywhere(chart, kit):
    args, error = kit.parse_koserve(["gateway", "--model", "m=127.0.0.1:8001"])
    assert error is None, error
    port = kit.load_values()["gateway"]["port"]
    assert port == args.port
    svc = chart.template((), GATEWAY).one("Service", "-komt-13b-gateway")
    assert [p["port"] for p in svc["spec"]["ports"]] == [port]
    for doc in (kit.repo / "deploy" / "README.md", kit.repo / "docs" / "deploy.md"):
        text = doc.read_text()
        assert f"-gateway:{port}" in text, f"{doc.name} does not give the gateway Service's port {port}"
        assert not re.search(r"-gateway:(?!%d)\d+" % port, text), f"{doc.name} names another gateway port"


# ------------------------------------------------------------------ the init container's script, read-only root

def test_init_container_script_runs_with_a_read_only_root(chart, kit):
    """The render-repository container's script as rendered (engine wait, world-size check in a python heredoc, the
    TensorRT-LLM version preflight, `koserve repo render`) in a mount namespace where only its mounts are writable:
    /repo (kept, as the Triton container reads it next), /tmp and $HOME (fresh). Engine and tokenizer are read-only,
    as the chart mounts the models volume."""
    import json
    import shutil
    import tempfile

    from koserve.errors import ConfigError
    from koserve.fixtures import tokenizer_dir

    why_not = kit.read_only_root_unavailable()
    if why_not:
        pytest.skip(f"cannot make a read-only mount namespace here: {why_not}")
    try:
        tokenizer = tokenizer_dir("llama2")
    except ConfigError as e:
        pytest.skip(f"tokenizer fixtures missing ({e}); run `koserve setup fixtures`")
    rendered = chart.template(("values-komt-13b-fp8-tp1.yaml",))
    init = kit.containers(rendered.one("Deployment", "-komt-13b"))["render-repository"]
    assert set(_writable(init)) == {"/repo", "/tmp", HOME}
    work = Path(tempfile.mkdtemp(prefix="koserve-init-ro-", dir="/var/tmp" if Path("/var/tmp").is_dir() else None))
    try:
        engine, repo_volume, home, site = (work / "engine", work / "repo", work / "home", work / "site")
        for d in (engine, repo_volume, home, site / "tensorrt_llm"):
            d.mkdir(parents=True)
        (engine / "config.json").write_text(json.dumps({
            "version": "1.2.1",
            "pretrained_config": {"architecture": "LlamaForCausalLM", "dtype": "float16",
                                  "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
                                  "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}},
            "build_config": {"max_batch_size": 128, "max_input_len": 3072, "max_seq_len": 4096,
                             "max_num_tokens": 8192}}))
        (engine / "rank0.engine").write_bytes(b"")
        # TensorRT-LLM does not install here: the preflight imports a stand-in carrying the image's version.
        (site / "tensorrt_llm" / "__init__.py").write_text('__version__ = "1.2.1"\n')
        env = {e["name"]: e["value"].replace(HOME, str(home)) for e in init["env"]}
        env.update(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", PYTHONPATH=str(site),
                   ENGINE_DIR=str(engine), TOKENIZER_DIR=str(tokenizer))
        script = init["args"][0].replace("/repo/model_repository", str(repo_volume / "model_repository"))
        argv, extra = kit.read_only_root_argv(["bash", "-ec", script], ["/tmp", str(home)], [str(repo_volume)])
        proc = subprocess.run(argv, env={**env, **extra}, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "tp=1 pp=1 world_size=1" in proc.stdout
        assert 'backend: "tensorrtllm"' in (repo_volume / "model_repository" / "tensorrt_llm" / "config.pbtxt").read_text()
        # The same script cannot write beside the engine (the models volume is read-only to it).
        probe = script.replace("exec koserve repo render", f"touch {engine}/written-by-init; exec koserve repo render")
        argv, extra = kit.read_only_root_argv(["bash", "-ec", probe], ["/tmp", str(home)], [str(repo_volume)])
        proc = subprocess.run(argv, env={**env, **extra}, capture_output=True, text=True, timeout=180)
        assert proc.returncode != 0 and "Read-only file system" in proc.stderr, proc.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)
