"""The koserve Helm chart, checked offline with the real helm binary and Kubernetes' JSON schemas."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import time

import pytest
import yaml

ALL_VALUES = ["values.yaml", "values-akallama-70b-fp8-tp4.yaml", "values-komt-13b-fp8-tp1.yaml",
              "values-both-h100x8.yaml"]
# The built-in two-node recipe: TP2 × PP2 over 2 pods of 2 GPUs.
LWS_SETS = ("models.akallama-70b.enabled=true", "models.akallama-70b.multiNode.enabled=true",
            "models.akallama-70b.multiNode.sshSecret=akallama-ssh",
            "models.akallama-70b.engine.recipe=akallama-70b-fp8-h100-tp2pp2-2node",
            "models.akallama-70b.engine.tensorParallel=2", "models.akallama-70b.engine.pipelineParallel=2",
            "models.akallama-70b.engine.dir=engines/akallama-70b-fp8-h100-tp2pp2-2node",
            "models.komt-13b.enabled=false")
GATEWAY_SETS = ("gateway.enabled=true", "gateway.apiKeysSecret.name=koserve-api-keys")
MONITORING_SETS = ("monitoring.podMonitor.enabled=true", "monitoring.prometheusRule.enabled=true",
                   "monitoring.grafanaDashboard.enabled=true")

# Every values file, and every toggle on top of the two single-model files.
TOGGLES = {
    "defaults": ((), ()),
    "hpa": (("values-komt-13b-fp8-tp1.yaml",), ("models.komt-13b.autoscaling.enabled=true",)),
    "lws": ((), LWS_SETS),
    "lws-hpa": ((), LWS_SETS + ("models.akallama-70b.autoscaling.enabled=true",)),
    "gateway": (("values-both-h100x8.yaml",), GATEWAY_SETS),
    "build-job": (("values-akallama-70b-fp8-tp4.yaml",),
                  ("models.akallama-70b.build.enabled=true", "models.akallama-70b.engine.waitSeconds=43200")),
    "build-job-hub": (("values-komt-13b-fp8-tp1.yaml",),
                      ("models.komt-13b.build.enabled=true", "models.komt-13b.build.hubId=davidkim205/komt-Llama-2-13b-hf",
                       "models.komt-13b.build.hfTokenSecret.name=hf-token")),
    "monitoring": (("values-both-h100x8.yaml",), MONITORING_SETS),
    "servicemonitor": ((), ("monitoring.serviceMonitor.enabled=true",)),
    "hostpath": ((), ("storage.type=hostPath", "storage.hostPath.path=/raid/models")),
    "emptydir": ((), ("storage.type=emptyDir",)),
    "existing-claim": ((), ("storage.pvc.existingClaim=engines",)),
    "restricted-secret": ((), ("triton.restrictedApi.secret.name=triton-admin",)),
    "netpol-from": ((), ('networkPolicy.from[0].namespaceSelector.matchLabels.team=chat',) + GATEWAY_SETS),
    "netpol-off": ((), ("networkPolicy.enabled=false", "tests.enabled=false", "serviceAccount.create=false")),
    "everything": (("values-both-h100x8.yaml",), GATEWAY_SETS + MONITORING_SETS + (
        "models.komt-13b.autoscaling.enabled=true", "models.akallama-70b.build.enabled=true",
        "triton.extraArgs[0]=--log-info=true")),
    "lws-gateway": ((), LWS_SETS + GATEWAY_SETS),
    "gateway-bls-ports": (("values-komt-13b-fp8-tp1.yaml",), GATEWAY_SETS + (
        "gateway.target=tensorrt_llm_bls", "gateway.port=9100", "triton.ports.grpc=9001", "triton.ports.http=9002",
        "triton.ports.metrics=9003", "triton.ports.health=9004", "triton.logVerbose=1",
        "triton.extraArgs[0]=--grpc-infer-allocation-pool-size=16", "triton.extraArgs[1]=--log-format=ISO8601")),
    "extra-init": ((), ("extraInitContainers[0].name=fetch-engine", "extraInitContainers[0].image=busybox:1.36",
                        "extraInitContainers[0].command[0]=/bin/sh", "extraInitContainers[0].command[1]=-c",
                        "extraInitContainers[0].command[2]=test -d /models || exit 1",
                        "extraInitContainers[1].name=own-limits", "extraInitContainers[1].image=busybox:1.36",
                        "extraInitContainers[1].command[0]=/bin/sh", "extraInitContainers[1].command[1]=-c",
                        "extraInitContainers[1].command[2]=exit 0",
                        "extraInitContainers[1].resources.limits.memory=64Mi")),
}
TOGGLES.update({f"file:{f}": ((f,), ()) for f in ALL_VALUES[1:]})


def triton_workload(rendered, model: str) -> dict:
    return rendered.one("Deployment", f"-{model}")


# ---------------------------------------------------------------------------------------------------------- helm

def test_get_helm_is_idempotent(kit, helm):
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(kit.get_helm)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("/bin/helm")
    assert time.monotonic() - t0 < 30, "a second run must not download again"
    version = subprocess.run([proc.stdout.strip(), "version", "--short"], capture_output=True, text=True, timeout=30)
    assert version.stdout.startswith("v"), version


@pytest.mark.parametrize("values_file", ALL_VALUES)
def test_helm_lint_strict(chart, kit, values_file):
    proc = chart.run("lint", "--strict", str(kit.chart_dir), "-f", str(kit.chart_dir / values_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


@pytest.mark.parametrize("case", ["everything", "lws-hpa", "build-job-hub", "servicemonitor", "hostpath"])
def test_helm_lint_strict_with_toggles(chart, kit, case):
    files, sets = TOGGLES[case]
    args = [a for f in files for a in ("-f", str(kit.chart_dir / f))] + [a for s in sets for a in ("--set", s)]
    proc = chart.run("lint", "--strict", str(kit.chart_dir), *args)
    assert proc.returncode == 0 and "[WARNING]" not in proc.stdout, proc.stdout + proc.stderr


def test_helm_lint_strict_fails_on_bad_value(chart, kit):
    proc = chart.run("lint", "--strict", str(kit.chart_dir), "--set", "models.komt-13b.engine.tensorParallel=3")
    assert proc.returncode != 0
    assert "tensorParallel" in proc.stdout + proc.stderr


@pytest.mark.parametrize("case", sorted(TOGGLES))
def test_rendered_manifests_validate(chart, kit, case):
    files, sets = TOGGLES[case]
    rendered = chart.template(files, sets)
    assert rendered.docs, "nothing rendered"
    kit.validate_docs(rendered.docs)
    # No Secret objects: secrets are referenced, never created by the chart.
    assert not rendered.of_kind("Secret")
    # Names are unique per kind.
    for kind in {d["kind"] for d in rendered.docs}:
        names = rendered.names(kind)
        assert len(names) == len(set(names)), f"duplicate {kind} names: {names}"


def test_validation_catches_an_unknown_field(chart, kit):
    """The validator used above really rejects a misspelt field (so a pass means something)."""
    deployment = json.loads(json.dumps(triton_workload(chart.template(), "komt-13b")))
    deployment["spec"]["template"]["spec"]["containers"][0]["startupProbes"] = {}
    with pytest.raises(AssertionError, match="startupProbes"):
        kit.validate_docs([deployment])
    lws = json.loads(json.dumps(chart.template((), LWS_SETS).one("LeaderWorkerSet")))
    lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(AssertionError, match="gpus"):
        kit.validate_docs([lws])
    rule = json.loads(json.dumps(chart.template((), MONITORING_SETS[1:2]).one("PrometheusRule")))
    rule["spec"]["groups"][0]["rules"][0]["recrod"] = "x"
    with pytest.raises(AssertionError, match="recrod"):
        kit.validate_docs([rule])


# ------------------------------------------------------------------------------------------------- GPUs = TP × PP

EXPECTED_GPUS = {
    "values-akallama-70b-fp8-tp4.yaml": {"akallama-70b": 4},
    "values-komt-13b-fp8-tp1.yaml": {"komt-13b": 1},
    "values-both-h100x8.yaml": {"akallama-70b": 4, "komt-13b": 1},
}


@pytest.mark.parametrize("values_file", sorted(EXPECTED_GPUS))
def test_gpu_count_is_tp_times_pp(chart, kit, values_file):
    rendered = chart.template([values_file])
    values = kit.load_values(values_file)
    enabled = {k for k, m in values["models"].items() if m["enabled"]}
    assert enabled == set(EXPECTED_GPUS[values_file])
    for model, gpus in EXPECTED_GPUS[values_file].items():
        engine = values["models"][model]["engine"]
        assert engine["tensorParallel"] * engine["pipelineParallel"] == gpus
        c = kit.containers(triton_workload(rendered, model))
        assert kit.gpu_count(c["triton"]) == (gpus, gpus)
        assert kit.gpu_count(c["render-repository"]) == (0, 0)
        env = {e["name"]: e.get("value") for e in c["render-repository"]["env"]}
        assert env["KOSERVE_WORLD_SIZE"] == str(gpus)
        assert env["ENGINE_DIR"] == f"/models/{engine['dir']}"
        # The recipe named in values builds an engine of the same size (koserve's own recipe loader).
        from koserve.engines.recipe import load_recipe

        par = load_recipe(engine["recipe"]).parallelism
        assert (par.tp, par.pp) == (engine["tensorParallel"], engine["pipelineParallel"]), values_file
    # All models together fit one 8-GPU node.
    total = sum(kit.gpu_count(kit.containers(d)["triton"])[1] for d in rendered.of_kind("Deployment"))
    assert total <= 8


def test_both_models_share_one_node(chart, kit):
    rendered = chart.template(["values-both-h100x8.yaml"])
    for d in rendered.of_kind("Deployment"):
        affinity = kit.pod_spec(d)["affinity"]
        term = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "triton"
        node_term = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        assert node_term["matchExpressions"][0] == {"key": "nvidia.com/gpu.product", "operator": "In",
                                                    "values": ["NVIDIA-H100-80GB-HBM3"]}


def test_multi_node_splits_gpus_over_the_group(chart, kit):
    rendered = chart.template((), LWS_SETS)
    assert not [d for d in rendered.of_kind("Deployment") if "akallama" in d["metadata"]["name"]]
    lws = rendered.one("LeaderWorkerSet", "-akallama-70b")
    lwt = lws["spec"]["leaderWorkerTemplate"]
    assert lwt["size"] == 2 and lwt["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader = {c["name"]: c for c in lwt["leaderTemplate"]["spec"]["containers"]}["triton"]
    worker = {c["name"]: c for c in lwt["workerTemplate"]["spec"]["containers"]}["mpi-worker"]
    # TP2 × PP2 = 4 ranks over 2 pods: 2 GPUs each, 4 ranks in total.
    assert kit.gpu_count(leader) == (2, 2) and kit.gpu_count(worker) == (2, 2)
    init = lwt["leaderTemplate"]["spec"]["initContainers"][0]
    assert {e["name"]: e.get("value") for e in init["env"]}["KOSERVE_WORLD_SIZE"] == "4"
    assert "slots=2" in leader["args"][0] and "koserve serve" in leader["args"][0]
    assert "sshd" in worker["args"][0]
    # The Service targets the leader only.
    svc = rendered.one("Service", "-akallama-70b")
    assert svc["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    # Pods of a group may talk to each other on any port (MPI, NCCL, SSH).
    netpol = rendered.one("NetworkPolicy", "-akallama-70b")
    assert any("from" in rule and "ports" not in rule for rule in netpol["spec"]["ingress"])


def test_multi_node_hpa_targets_the_leaderworkerset(chart):
    hpa = chart.template((), LWS_SETS + ("models.akallama-70b.autoscaling.enabled=true",)).one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"
    assert hpa["spec"]["scaleTargetRef"]["apiVersion"] == "leaderworkerset.x-k8s.io/v1"


# ------------------------------------------------------------------------------------ probes, shutdown, command

@pytest.mark.parametrize("values_file,model,min_startup_s", [
    ("values-akallama-70b-fp8-tp4.yaml", "akallama-70b", 30 * 60),
    ("values-komt-13b-fp8-tp1.yaml", "komt-13b", 10 * 60),
])
def test_probes_and_graceful_shutdown(chart, kit, values_file, model, min_startup_s):
    values = kit.load_values(values_file)
    d = triton_workload(chart.template([values_file]), model)
    c = kit.containers(d)["triton"]
    # koserve serve's health server, not Triton's /v2/health (which stays 200 after a python stub died).
    assert c["startupProbe"]["httpGet"] == {"path": "/health/ready", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "health"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "health"}
    assert "--health-port 8003 " in c["args"][0]
    # A dead stub takes the pod out of the Service within seconds, not minutes.
    assert c["readinessProbe"]["periodSeconds"] * c["readinessProbe"]["failureThreshold"] <= 10
    startup_budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert startup_budget >= min_startup_s, f"engine load budget {startup_budget}s is too short"
    # koserve serve waits as long as the startupProbe before it gives up on Triton.
    assert f"--ready-timeout {startup_budget} " in c["args"][0]
    # Graceful shutdown: drain, then Triton's own exit timeout, inside the grace period.
    spec = kit.pod_spec(d)
    drain, exit_timeout = values["shutdown"]["drainSeconds"], values["shutdown"]["exitTimeoutSeconds"]
    assert c["lifecycle"]["preStop"]["exec"]["command"][-1] == f"sleep {drain}"
    assert f"--exit-timeout-secs={exit_timeout}" in c["args"][0]
    assert spec["terminationGracePeriodSeconds"] > drain + exit_timeout
    # /dev/shm is a memory emptyDir of the configured size.
    shm = {v["name"]: v for v in spec["volumes"]}["dshm"]["emptyDir"]
    assert shm == {"medium": "Memory", "sizeLimit": values["models"][model]["shmSize"]}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002,
                                                                     "health": 8003}
    assert d["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_server_and_render_commands(chart, kit):
    d = triton_workload(chart.template(["values-akallama-70b-fp8-tp4.yaml"]), "akallama-70b")
    c = kit.containers(d)
    script = c["triton"]["args"][0]
    assert re.search(r"exec koserve serve --repo /repo/model_repository \\\n\s+--http-port 8000 --grpc-port 8001 "
                     r"--metrics-port 8002 \\\n\s+--health-port 8003 \\\n\s+--host 0.0.0.0 --ready-timeout 2400 "
                     r"\\\n\s+--drain-grace 830 \\\n\s+-- \\", script), script
    restricted = ",".join(kit.load_values()["triton"]["restrictedApi"]["categories"]) + \
        ":koserve-admin-key=${TRITON_ADMIN_KEY}"
    for flag in ("--model-control-mode=none", "--metrics-config histogram_latencies=true",
                 f'--http-restricted-api="{restricted}"', f'--grpc-restricted-protocol="{restricted}"'):
        assert flag in script
    render = c["render-repository"]["args"][0]
    assert ('exec koserve repo render --profile akallama-70b --tokenizer "$TOKENIZER_DIR" --engine "$ENGINE_DIR" '
            '--out /repo/model_repository') in render
    mounts = {m["name"]: m for m in c["triton"]["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True


def test_restricted_api_key_comes_from_a_secret_reference(chart, kit):
    d = triton_workload(chart.template((), ("triton.restrictedApi.secret.name=triton-admin",)), "komt-13b")
    env = {e["name"]: e for e in kit.containers(d)["triton"]["env"]}
    assert env["TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "triton-admin", "key": "admin-key"}


def _shell_scripts(rendered, kit):
    for doc in rendered.docs:
        specs = []
        if doc["kind"] == "LeaderWorkerSet":
            lwt = doc["spec"]["leaderWorkerTemplate"]
            specs = [("leader", lwt["leaderTemplate"]["spec"]), ("worker", lwt["workerTemplate"]["spec"])]
        elif doc["kind"] in ("Deployment", "Job", "Pod"):
            specs = [("pod", kit.pod_spec(doc))]
        for role, spec in specs:
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                if c.get("command", [])[:1] == ["/bin/bash"]:
                    yield f"{doc['kind']}/{doc['metadata']['name']}/{role}/{c['name']}", c["args"][0]


def test_embedded_shell_scripts_parse(chart, kit):
    rendered = chart.template(("values-both-h100x8.yaml",), LWS_SETS[1:7])
    scripts = dict(_shell_scripts(rendered, kit))
    assert len(scripts) >= 6  # init + server of each Deployment, LWS leader/worker init + main
    for where, script in scripts.items():
        proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{where}: {proc.stderr}"


def _render_script(chart, kit, sets=()):
    d = triton_workload(chart.template(["values-akallama-70b-fp8-tp4.yaml"], sets), "akallama-70b")
    init = kit.containers(d)["render-repository"]
    return init["args"][0], {e["name"]: e["value"] for e in init["env"]}


def _run_init(script, env, engine_dir, tmp_path, timeout=60):
    import os
    env = {**env, "ENGINE_DIR": str(engine_dir), "TOKENIZER_DIR": str(tmp_path / "tok"),
           "PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    return subprocess.run(["bash", "-ec", script], env=env, capture_output=True, text=True, timeout=timeout)


def _until_first_koserve(script: str) -> str:
    lines = script.splitlines()
    first = next(i for i, line in enumerate(lines) if re.match(r"\s*(exec\s+)?koserve\s", line))
    return "\n".join(lines[:first] + ["exit 0"])


def test_init_refuses_an_engine_of_another_world_size(chart, kit, tmp_path):
    """The init container's check runs for real: a TP2 engine under a TP4 deployment stops the pod with a clear
    message before anything is rendered."""
    script, env = _render_script(chart, kit)
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps(
        {"pretrained_config": {"mapping": {"world_size": 2, "tp_size": 2, "pp_size": 1}}}))
    proc = _run_init(script, env, engine, tmp_path)
    assert proc.returncode != 0
    assert "built for world_size=2 (tp=2, pp=1)" in proc.stderr and "runs 4 ranks" in proc.stderr
    assert not (tmp_path / "repo").exists()


def test_init_accepts_a_matching_engine_and_reports_a_missing_one(chart, kit, tmp_path):
    script, env = _render_script(chart, kit)
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps(
        {"pretrained_config": {"mapping": {"world_size": 4, "tp_size": 4, "pp_size": 1}}}))
    # Stop right before the first koserve command (the version preflight and `koserve repo render` need
    # TensorRT-LLM and a real tokenizer; test_pod_commands_run_with_the_real_koserve_cli runs them).
    proc = _run_init(_until_first_koserve(script), env, engine, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "tp=4 pp=1 world_size=4" in proc.stdout
    missing = _run_init(script, env, tmp_path / "nowhere", tmp_path)
    assert missing.returncode != 0 and "engine not found" in missing.stderr and "waited 0s" in missing.stderr


# --------------------------------------------------------------------------------------------------- security

@pytest.mark.parametrize("case", ["everything", "lws"])
def test_security_contexts(chart, kit, case):
    rendered = chart.template(*TOGGLES[case])
    pod_specs = []
    for doc in rendered.docs:
        if doc["kind"] in ("Deployment", "Job", "Pod"):
            pod_specs.append((doc["metadata"]["name"], kit.pod_spec(doc)))
        elif doc["kind"] == "LeaderWorkerSet":
            lwt = doc["spec"]["leaderWorkerTemplate"]
            pod_specs += [(doc["metadata"]["name"], lwt[r]["spec"]) for r in ("leaderTemplate", "workerTemplate")]
    assert pod_specs
    for name, spec in pod_specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, f"{name}/{c['name']}"
            assert sc["capabilities"]["drop"] == ["ALL"], f"{name}/{c['name']}"
            assert not sc.get("privileged"), f"{name}/{c['name']}"
            for e in c.get("env", []):
                assert "value" in e or "secretKeyRef" in e.get("valueFrom", {}), e
                if re.search(r"(^|_)(TOKEN|KEYS?)$", e["name"]):
                    assert "valueFrom" in e, f"{name}/{c['name']}: {e['name']} must come from a Secret reference"


def _pod_labels(doc: dict, kit) -> dict:
    return doc["metadata"]["labels"] if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"]["labels"]


# Pods around the release, judged by the rendered NetworkPolicy (namespace "serving", as chart.template renders).
PROMETHEUS = {"app.kubernetes.io/name": "prometheus", "app.kubernetes.io/managed-by": "prometheus-operator",
              "prometheus": "kps-prometheus"}


def test_network_policy_admits_only_gateway_tests_and_prometheus_by_default(chart, kit):
    rendered = chart.template((), GATEWAY_SETS)
    netpol = rendered.one("NetworkPolicy", "-komt-13b")
    assert netpol["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # Every rule names its sources: a rule without `from` would admit any pod of any namespace.
    assert all(rule.get("from") for rule in netpol["spec"]["ingress"]), netpol["spec"]["ingress"]
    gateway = _pod_labels(rendered.one("Deployment", "-komt-13b-gateway"), kit)
    test_pod = rendered.one("Pod", "-komt-13b-test-chat")["metadata"]["labels"]
    Peer = kit.Peer
    admits = lambda peer, port: kit.network_policy_admits(netpol, peer, port, "serving")  # noqa: E731
    for port in (8000, 8001):
        assert admits(Peer("serving", gateway), port)
        assert admits(Peer("serving", test_pod), port)
        assert not admits(Peer("serving", {"app": "anything"}), port), "a random pod of the namespace"
        assert not admits(Peer("other", gateway), port), "a look-alike gateway in another namespace"
        assert not admits(Peer("monitoring", PROMETHEUS), port), "Prometheus needs the metrics port only"
    assert admits(Peer("monitoring", PROMETHEUS), 8002)
    assert not admits(Peer("serving", gateway), 8002)
    assert not admits(Peer("other", {"app": "x"}), 8002)
    # The health port is only for the kubelet (node traffic, which NetworkPolicies do not filter).
    assert not any(admits(Peer(ns, labels), 8003) for ns, labels in
                   (("serving", gateway), ("monitoring", PROMETHEUS), ("other", {})))
    # Another model's gateway does not reach this model's Triton.
    both = chart.template(("values-both-h100x8.yaml",), GATEWAY_SETS)
    aka_gateway = _pod_labels(both.one("Deployment", "-akallama-70b-gateway"), kit)
    komt_policy = both.one("NetworkPolicy", "-komt-13b")
    assert not kit.network_policy_admits(komt_policy, Peer("serving", aka_gateway), 8001, "serving")
    gw = rendered.one("NetworkPolicy", "-gateway")
    assert [p["port"] for p in gw["spec"]["ingress"][0]["ports"]] == [8080]


def test_network_policy_with_no_client_admits_nobody(chart, kit, tmp_path):
    """No gateway, no helm test pods, no `from`: the HTTP/gRPC ports get no rule at all (an empty `from` would admit
    everyone); an empty metricsFrom closes the metrics port too."""
    closed = tmp_path / "closed.yaml"
    closed.write_text("tests: {enabled: false}\nnetworkPolicy: {metricsFrom: []}\n")
    rendered = chart.template((str(closed),))
    netpol = rendered.one("NetworkPolicy", "-komt-13b")
    assert netpol["spec"]["ingress"] == []
    for peer in (kit.Peer("serving", {}), kit.Peer("monitoring", PROMETHEUS)):
        for port in (8000, 8001, 8002, 8003):
            assert not kit.network_policy_admits(netpol, peer, port, "serving")


def test_network_policy_from_adds_peers(chart, kit):
    rendered = chart.template((), TOGGLES["netpol-from"][1])
    netpol = rendered.one("NetworkPolicy", "-komt-13b")
    chat_ns = kit.Peer("apps", {"app": "chatbot"}, {"team": "chat"})
    assert kit.network_policy_admits(netpol, chat_ns, 8001, "serving")
    assert not kit.network_policy_admits(netpol, chat_ns, 8002, "serving")
    assert not kit.network_policy_admits(netpol, kit.Peer("apps", {"app": "chatbot"}, {"team": "ads"}), 8001, "serving")
    gateway = _pod_labels(rendered.one("Deployment", "-komt-13b-gateway"), kit)
    assert kit.network_policy_admits(netpol, kit.Peer("serving", gateway), 8001, "serving")
    # Peers that are not NetworkPolicyPeer objects are refused by the schema.
    error = chart.template_error((), ("networkPolicy.from[0].namespace=chat",))
    assert "/networkPolicy/from/0" in error, error


def test_network_policy_evaluator_can_say_yes_to_everything(kit):
    """The evaluator above is not a constant no: a rule without `from` admits every pod, one without ports every
    port (the cases the chart must never render for Triton's API ports)."""
    open_rule = {"spec": {"ingress": [{"ports": [{"port": 8001, "protocol": "TCP"}]}]}}
    assert kit.network_policy_admits(open_rule, kit.Peer("anywhere", {}), 8001, "serving")
    assert not kit.network_policy_admits(open_rule, kit.Peer("anywhere", {}), 8000, "serving")
    any_ns = {"spec": {"ingress": [{"from": [{"namespaceSelector": {}}]}]}}
    assert kit.network_policy_admits(any_ns, kit.Peer("anywhere", {}), 1234, "serving")


# ------------------------------------------------------------------------------ autoscaling and monitoring

def test_hpa_off_by_default_and_on_the_queue_compute_ratio(chart, kit):
    assert not chart.template().of_kind("HorizontalPodAutoscaler")
    files, sets = TOGGLES["hpa"]
    rendered = chart.template(files, sets)
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": triton_workload(rendered, "komt-13b")["metadata"]["name"]}
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "triton:queue_compute:ratio"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 8)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    # The HPA owns the replica count.
    assert "replicas" not in triton_workload(rendered, "komt-13b")["spec"]


def _balanced(expr: str) -> bool:
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    in_str = False
    for ch in expr:
        if ch == '"':
            in_str = not in_str
        elif in_str:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and not in_str


def test_prometheus_rule_records_what_the_hpa_and_dashboard_use(chart, kit):
    rendered = chart.template(*TOGGLES["monitoring"])
    rule = rendered.one("PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    records = {r["record"]: r["expr"] for r in rules if "record" in r}
    ratio = records["triton:queue_compute:ratio"]
    assert "rate(nv_inference_queue_duration_us" in ratio and "clamp_min(" in ratio
    assert "rate(nv_inference_compute_infer_duration_us" in ratio
    assert "by (namespace, pod," in ratio, "prometheus-adapter needs namespace and pod labels for a Pods metric"
    for name in ("triton:kv_cache_utilization:ratio", "triton:first_response_ms:p95", "triton:request_failure:ratio1m"):
        assert name in records
    for r in rules:
        assert _balanced(r["expr"]), f"unbalanced PromQL: {r['expr']}"
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {"KoserveTritonDown", "KoserveQueueSaturated", "KoserveKVCacheFull"} <= alerts
    # The monitor scrapes the metrics port of the Triton pods and labels series with the model key used above.
    pm = rendered.one("PodMonitor")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pm["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["targetLabel"] == "koserve_model"
    assert pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "triton"


def test_grafana_dashboard(chart, kit):
    path = kit.chart_dir / "dashboards" / "koserve.json"
    dashboard = json.loads(path.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    text = "\n".join(exprs)
    for needle in ("nv_inference_request_success", "nv_inference_queue_duration_us",
                   "nv_inference_first_response_histogram_ms_bucket", "nv_trt_llm_kv_cache_block_metrics",
                   "nv_trt_llm_request_metrics", "triton:queue_compute:ratio"):
        assert needle in text, needle
    assert all(_balanced(e) for e in exprs)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cm = chart.template(*TOGGLES["monitoring"]).one("ConfigMap", "-dashboard")
    assert json.loads(cm["data"]["koserve.json"]) == dashboard
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


# ------------------------------------------------------------------------------ gateway, build job, helm test

def test_gateway(chart, kit):
    from koserve.gateway import load_config

    rendered = chart.template(*TOGGLES["gateway"])
    for model in ("akallama-70b", "komt-13b"):
        d = rendered.one("Deployment", f"-{model}-gateway")
        c = kit.containers(d)["gateway"]
        triton_svc = rendered.one("Service", f"-{model}")["metadata"]["name"]
        assert c["command"] == ["koserve"]
        args, error = kit.parse_koserve(c["args"])
        assert error is None, error
        assert (args.command, args.host, args.port) == ("gateway", "0.0.0.0", 8080)
        # The gateway's own config loader accepts the route: OpenAI name = model key, the profile, Triton over gRPC.
        route, = load_config(model_specs=args.models, environ={}).models
        tokenizer = "/models/" + kit.load_values("values-both-h100x8.yaml")["models"][model]["engine"]["tokenizerDir"]
        assert (route.name, route.profile, route.url, route.protocol, route.target, route.tokenizer) == (
            model, model, f"{triton_svc}:8001", "grpc", "ensemble", tokenizer)
        # ... which the gateway reads from the models PVC, mounted read-only.
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
        claim = {v["name"]: v for v in kit.pod_spec(d)["volumes"]}["models"]["persistentVolumeClaim"]["claimName"]
        assert claim == rendered.one("PersistentVolumeClaim")["metadata"]["name"]
        env = {e["name"]: e for e in c["env"]}
        assert env["KOSERVE_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "koserve-api-keys", "key": "api-keys"}
        assert kit.gpu_count(c) == (0, 0)
        # Ready = the gateway's /health (200 only while its Triton answers ready); alive = /metrics (no backend).
        assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "http"}
        assert "tcpSocket" not in c["readinessProbe"] and "tcpSocket" not in c["livenessProbe"]
        svc = rendered.one("Service", f"-{model}-gateway")
        assert [p["port"] for p in svc["spec"]["ports"]] == [8080]
    bls = kit.containers(chart.template(*TOGGLES["gateway-bls-ports"]).one("Deployment", "-komt-13b-gateway"))
    args, error = kit.parse_koserve(bls["gateway"]["args"])
    assert error is None and args.port == 9100, error
    assert load_config(model_specs=args.models, environ={}).models[0].target == "tensorrt_llm_bls"
    assert load_config(model_specs=args.models, environ={}).models[0].url.endswith(":9001")
    # hostPath volumes live on the GPU nodes: the gateway then goes without the model's tokenizer and mounts nothing.
    host = chart.template(("values-komt-13b-fp8-tp1.yaml",), GATEWAY_SETS + TOGGLES["hostpath"][1])
    c = kit.containers(host.one("Deployment", "-komt-13b-gateway"))["gateway"]
    args, error = kit.parse_koserve(c["args"])
    assert error is None and load_config(model_specs=args.models, environ={}).models[0].tokenizer is None
    assert [m["name"] for m in c["volumeMounts"]] == ["tmp", "home"]


def test_engine_build_job(chart, kit):
    rendered = chart.template(*TOGGLES["build-job"])
    job = rendered.one("Job")
    c = kit.containers(job)["build"]
    env = {e["name"]: e for e in c["env"]}
    assert c["command"] == ["/opt/koserve/scripts/build_engines.sh"]
    assert env["RECIPE"]["value"] == "akallama-70b-fp8-h100-tp4"
    assert env["CHECKPOINT_DIR"]["value"] == "/models/checkpoints/AkaLlama-llama3-70b-v0.1"
    assert env["ENGINE_DIR"]["value"] == "/models/engines/akallama-70b-fp8-h100-tp4"
    assert "HF_TOKEN" not in env
    assert kit.gpu_count(c) == (4, 4)
    assert {m["name"]: m.get("readOnly", False) for m in c["volumeMounts"]}["models"] is False
    # The server waits for the finished engine (its manifest is written last).
    init_env = {e["name"]: e.get("value") for e in
                kit.containers(triton_workload(rendered, "akallama-70b"))["render-repository"]["env"]}
    assert init_env["ENGINE_READY_FILE"] == "engine_manifest.json" and init_env["ENGINE_WAIT_SECONDS"] == "43200"

    hub = chart.template(*TOGGLES["build-job-hub"]).one("Job")
    env = {e["name"]: e for e in kit.containers(hub)["build"]["env"]}
    assert env["CHECKPOINT_DIR"]["value"] == "davidkim205/komt-Llama-2-13b-hf"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}


def test_engine_build_job_extra_env_reaches_the_script(chart, kit):
    files, sets = TOGGLES["build-job"]
    sets = (*sets, "models.akallama-70b.build.extraEnv[0].name=TRTLLM_EXAMPLES",
            "models.akallama-70b.build.extraEnv[0].value=/models/TensorRT-LLM/examples")
    env = {e["name"]: e.get("value") for e in kit.containers(chart.template(files, sets).one("Job"))["build"]["env"]}
    assert env["TRTLLM_EXAMPLES"] == "/models/TensorRT-LLM/examples" and env["RECIPE"] == "akallama-70b-fp8-h100-tp4"
    # An unquoted number would be an invalid EnvVar: the schema says so before Kubernetes does.
    error = chart.template_error(files, (*sets[:-1], "models.akallama-70b.build.extraEnv[0].value=1"))
    assert "extraEnv/0/value" in error


@pytest.mark.parametrize("values_file,profile", [("values-akallama-70b-fp8-tp4.yaml", "akallama-70b"),
                                                 ("values-komt-13b-fp8-tp1.yaml", "komt-13b")])
def test_helm_test_pod_chats_in_korean(chart, kit, values_file, profile):
    rendered = chart.template([values_file])
    pods = rendered.of_kind("Pod")
    assert len(pods) == 1
    pod = pods[0]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    svc = rendered.one("Service", f"-{profile}")["metadata"]["name"]
    assert c["command"] == ["koserve"]
    args, error = kit.parse_koserve(c["args"])
    assert error is None, error
    assert (args.command, args.url, args.protocol, args.profile, args.prompt, args.target) == (
        "chat", f"{svc}:8001", "grpc", profile, "네 이름은 뭐야?", "ensemble")
    assert pod["spec"]["restartPolicy"] == "Never"


# ------------------------------------------------------------------------------------------------- bad values

BAD_VALUES = {
    "tp not a power of two": (("models.komt-13b.engine.tensorParallel=3",),
                              "/models/komt-13b/engine/tensorParallel"),
    "unknown profile": (("models.komt-13b.profile=gpt-4",), "/models/komt-13b/profile"),
    "misspelt key": (("models.komt-13b.shmSzie=1Gi",), "shmSzie"),
    "negative replicas": (("models.komt-13b.replicas=-1",), "/models/komt-13b/replicas"),
    "bad storage type": (("storage.type=nfs",), "/storage/type"),
    "bad shm quantity": (("models.komt-13b.shmSize=lots",), "/models/komt-13b/shmSize"),
    "model control explicit": (("triton.modelControlMode=explicit",), "/triton/modelControlMode"),
    "absolute engine dir": (("models.komt-13b.engine.dir=/engines/x",), "/models/komt-13b/engine/dir"),
    "gateway without keys": (GATEWAY_SETS[:1], "the gateway needs gateway.apiKeysSecret.name"),
    "both monitors": (("monitoring.podMonitor.enabled=true", "monitoring.serviceMonitor.enabled=true"),
                      "podMonitor or serviceMonitor, not both"),
    "world size beyond a node": (("models.komt-13b.engine.tensorParallel=8", "models.komt-13b.engine.pipelineParallel=2",
                                  "models.komt-13b.engine.recipe=custom"), "16 GPUs does not fit one node"),
    "nodes do not divide world": (("models.komt-13b.engine.tensorParallel=4", "models.komt-13b.multiNode.enabled=true",
                                   "models.komt-13b.multiNode.nodes=3", "models.komt-13b.multiNode.sshSecret=s"),
                                  "cannot be split evenly over multiNode.nodes = 3"),
    "multi-node without ssh key": (("models.komt-13b.multiNode.enabled=true",), "multiNode.sshSecret"),
    "gpu in resources": (("models.komt-13b.resources.limits.nvidia\\.com/gpu=2",), "do not set nvidia.com/gpu"),
    "hub id without token": (("models.komt-13b.build.enabled=true", "models.komt-13b.build.hubId=a/b"),
                             "hfTokenSecret.name"),
    "min above max replicas": (("models.komt-13b.autoscaling.enabled=true", "models.komt-13b.autoscaling.minReplicas=5",
                                "models.komt-13b.autoscaling.maxReplicas=2"), "minReplicas (5) is larger than maxReplicas (2)"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_rejected_with_a_clear_message(chart, case):
    sets, message = BAD_VALUES[case]
    err = chart.template_error((), sets)
    assert message in err, err


# ------------------------------------------------------------------- the pod's commands against the real koserve CLI

def test_pod_commands_run_with_the_real_koserve_cli(chart, kit, tmp_path):
    """The init container's script renders a real GPU model repository with `koserve repo render` (engine folder =
    a TensorRT-LLM 1.x config.json + rank files), and the server script's `koserve serve` accepts every flag and
    builds the mpirun command (--print-command: no GPU here)."""
    import os
    import sys

    from koserve.errors import ConfigError
    from koserve.fixtures import tokenizer_dir

    try:
        tokenizer = tokenizer_dir("llama3")
    except ConfigError as e:
        pytest.skip(f"tokenizer fixtures missing ({e}); run `koserve setup fixtures`")
    d = triton_workload(chart.template(["values-akallama-70b-fp8-tp4.yaml"]), "akallama-70b")
    c = kit.containers(d)
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps({
        "version": "1.2.1",
        "pretrained_config": {"architecture": "LlamaForCausalLM", "dtype": "bfloat16",
                              "mapping": {"world_size": 4, "tp_size": 4, "pp_size": 1},
                              "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}},
        "build_config": {"max_batch_size": 64, "max_input_len": 4096, "max_seq_len": 8192, "max_num_tokens": 8192},
    }))
    for rank in range(4):
        (engine / f"rank{rank}.engine").write_bytes(b"")
    repo = tmp_path / "repo" / "model_repository"
    env = {"PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "KOSERVE_CACHE": os.environ.get("KOSERVE_CACHE", str(kit.repo / ".cache" / "koserve"))}
    # TensorRT-LLM does not install here: the version preflight imports a stand-in package that only carries the
    # version of the image's TensorRT-LLM (as tests/build does).
    site = tmp_path / "site" / "tensorrt_llm"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text('__version__ = "1.2.1"\n')
    env["PYTHONPATH"] = str(site.parent)

    init_env = {e["name"]: e["value"] for e in c["render-repository"]["env"]}
    init_env.update(env, ENGINE_DIR=str(engine), TOKENIZER_DIR=str(tokenizer))
    init = c["render-repository"]["args"][0].replace("/repo/model_repository", str(repo))
    # A fresh wrapper process reports the peak RSS of the script's processes (RUSAGE_CHILDREN: the largest one).
    peak = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
            "print('peak-rss-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", peak, "bash", "-ec", init], env=init_env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'backend: "tensorrtllm"' in (repo / "tensorrt_llm" / "config.pbtxt").read_text()
    # The init container's memory limit leaves at least 2x headroom over what rendering really takes.
    peak_bytes = int(re.search(r"peak-rss-kib (\d+)", proc.stderr).group(1)) * 1024
    limit = kit.parse_quantity(c["render-repository"]["resources"]["limits"]["memory"])
    print(f"init container peak RSS {peak_bytes / 2**20:.0f} MiB, limit {limit / 2**20:.0f} MiB")
    assert peak_bytes * 2 <= limit, f"render-repository peaked at {peak_bytes / 2**20:.0f} MiB of {limit / 2**20:.0f}"

    server = c["triton"]["args"][0].replace("/repo/model_repository", str(repo))
    server = server.replace("exec koserve serve ", "exec koserve serve --print-command ")
    proc = subprocess.run(["bash", "-ec", server], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cmd = proc.stdout.strip()
    ranks = cmd.split(" : ")
    assert len(ranks) == 4 and cmd.startswith("mpirun ")
    rank0 = ranks[0]
    for flag in ("--http-address=0.0.0.0", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002",
                 "--model-control-mode=none", "--exit-timeout-secs=30", "--metrics-config histogram_latencies=true",
                 f"--model-repository={repo}"):
        assert flag in rank0, f"{flag} not in {rank0}"
    apis = ",".join(kit.load_values()["triton"]["restrictedApi"]["categories"])
    assert {"model-config", "statistics", "logging", "model-repository"} <= set(apis.split(","))
    key = re.search(rf"--http-restricted-api={apis}:koserve-admin-key=([0-9a-f]+)", rank0)
    assert key and len(key.group(1)) == 64, rank0
    assert f"--grpc-restricted-protocol={apis}:koserve-admin-key={key.group(1)}" in rank0
    assert all("--allow-http=false" in r for r in ranks[1:])


def test_dockerfile_derives_from_the_trtllm_triton_image(kit):
    text = (kit.repo / "deploy" / "docker" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3" in text
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert '"$(ls /tmp/koserve-dist/koserve-*.whl)[server]"' in text and "pip install -e" not in text  # tests/image
    # Everything it copies exists in the source tree (build context = repository root).
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in src.split():
            assert (kit.repo / path).exists(), f"Dockerfile copies {path}, which is not in the repository"
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] == "1000", "the image must end as the non-root uid the chart runs as"
    assert str(kit.load_values()["podSecurityContext"]["runAsUser"]) == users[-1].split(":")[0]


def test_install_dry_run_prints_usage_notes(chart, kit):
    """`helm install --dry-run=client` (no cluster) renders everything including NOTES.txt."""
    proc = chart.run("install", "koserve", str(kit.chart_dir), "--dry-run=client", "--namespace", "koserve",
                     "-f", str(kit.chart_dir / "values-both-h100x8.yaml"))
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    for model, gpus in (("akallama-70b", 4), ("komt-13b", 1)):
        assert f"{gpus} GPU(s) per server" in notes
        assert f'koserve chat --url 127.0.0.1:8001 --protocol grpc -p {model} "네 이름은 뭐야?"' in notes
    assert "helm test koserve -n koserve" in notes


# ------------------------------------------------------- every rendered container command against the real programs

SHELLS = {"/bin/bash": "bash", "/bin/sh": "sh", "bash": "bash", "sh": "sh"}


class CommandCheck:
    """Checks one rendered container's command + args (and its exec hooks) against what really runs it:
    `koserve ...` through koserve's real argument parser (and the gateway's config loader), the flags `koserve serve`
    passes to tritonserver against the real tritonserver's --help, shell scripts with `bash -n` / `sh -n` (and the
    `koserve` lines inside them like direct commands), scripts of the image (/opt/koserve/...) in this repository."""

    def __init__(self, kit, tritonserver_flags):
        self.kit = kit
        self.flags = tritonserver_flags
        self.problems: list[str] = []
        self.seen: set[str] = set()  # koserve subcommands checked

    def container(self, rc) -> None:
        argv = rc.argv
        if not argv:
            self.problems.append(f"{rc.where}: no command (the image's entrypoint is not checked)")
        else:
            self.command(rc, argv, main=True)
        hooks = [rc.container.get("lifecycle", {}).get(h, {}) for h in ("preStop", "postStart")]
        hooks += [rc.container.get(p, {}) for p in ("startupProbe", "readinessProbe", "livenessProbe")]
        for hook in hooks:
            if "exec" in hook:
                self.command(rc, hook["exec"]["command"], main=False)
            for kind in ("httpGet", "tcpSocket", "grpc"):
                if kind in hook:
                    try:
                        rc.port(hook[kind]["port"])
                    except KeyError:
                        self.problems.append(f"{rc.where}: a probe uses port {hook[kind]['port']!r}, which the "
                                             f"container does not declare")

    def command(self, rc, argv: list[str], *, main: bool) -> None:
        if argv[0] == "koserve":
            self.koserve(rc, argv[1:], main=main)
        elif argv[0] in SHELLS and len(argv) >= 3 and argv[1].startswith("-") and "c" in argv[1]:
            shell, script = SHELLS[argv[0]], argv[2]
            proc = subprocess.run([shell, "-n"], input=script, capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:
                self.problems.append(f"{rc.where}: {shell} -n: {proc.stderr.strip()}")
            for words in self.kit.koserve_invocations(script):
                self.koserve(rc, words, main=main)
        elif argv[0].startswith("/opt/koserve/"):
            path = self.kit.repo / argv[0].removeprefix("/opt/koserve/")
            if not path.is_file():
                self.problems.append(f"{rc.where}: {argv[0]} is not in the repository (the image copies it from there)")
            elif path.suffix == ".sh":
                proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
                if proc.returncode != 0:
                    self.problems.append(f"{rc.where}: bash -n {path.name}: {proc.stderr.strip()}")
        else:
            self.problems.append(f"{rc.where}: unknown command {argv[0]!r}: teach tests/deploy how to check it")

    def koserve(self, rc, words: list[str], *, main: bool) -> None:
        from koserve.cli.serve import server_extra_args
        from koserve.errors import ConfigError
        from koserve.gateway import load_config

        where = f"{rc.where}: koserve {shlex.join(words)}"
        args, error = self.kit.parse_koserve(words)
        if error:
            self.problems.append(f"{where}: {error}")
            return
        self.seen.add(args.command)
        if args.command == "serve":
            self.problems += [f"{where}: {p}" for p in
                              self.kit.tritonserver_flag_problems(server_extra_args(args), self.flags)]
            if main:  # the ports koserve serve listens on are the ones the container declares
                for name, value in (("http", args.http_port), ("grpc", args.grpc_port),
                                    ("metrics", args.metrics_port), ("health", args.health_port)):
                    try:
                        if rc.port(name) != value:
                            self.problems.append(f"{where}: serves {name} on {value}, the container declares "
                                                 f"{rc.port(name)}")
                    except KeyError:
                        self.problems.append(f"{where}: serves {name} on {value}; the container has no such port")
        elif args.command == "gateway":
            try:
                load_config(args.config, model_specs=args.models, environ={})
            except ConfigError as e:
                self.problems.append(f"{where}: {e}")
            if main and rc.port("http") != args.port:
                self.problems.append(f"{where}: listens on {args.port}, the container declares {rc.port('http')}")


@pytest.mark.parametrize("case", sorted(TOGGLES))
def test_every_container_command_runs_with_the_real_programs(chart, kit, tritonserver_flags, case):
    rendered = chart.template(*TOGGLES[case])
    check = CommandCheck(kit, tritonserver_flags)
    containers = kit.all_containers(rendered.docs)
    assert containers
    for rc in containers:
        check.container(rc)
    assert not check.problems, "\n".join(check.problems)
    # Every Triton pod's script really contains the koserve commands that were checked.
    assert {"serve", "repo"} <= check.seen, check.seen


def test_command_check_covers_every_koserve_subcommand_the_chart_uses(chart, kit, tritonserver_flags):
    check = CommandCheck(kit, tritonserver_flags)
    for case in ("everything", "lws-gateway"):
        for rc in kit.all_containers(chart.template(*TOGGLES[case]).docs):
            check.container(rc)
    assert not check.problems, "\n".join(check.problems)
    assert check.seen == {"serve", "repo", "build", "gateway", "chat"}


def test_command_check_catches_the_old_mistakes(kit, tritonserver_flags):
    """The check fails on the chart's former gateway argv and gRPC restriction flag (both made pods exit at start)."""
    from types import SimpleNamespace

    def problems(container):
        check = CommandCheck(kit, tritonserver_flags)
        check.container(SimpleNamespace(where="x", container=container, argv=container["command"] + container["args"],
                                        port=lambda name: {"http": 9000, "grpc": 8001, "metrics": 8002,
                                                           "health": 8003}[name]))
        return "\n".join(check.problems)

    old_gateway = {"command": ["koserve"], "args": ["gateway", "--triton-url", "svc:8001", "--protocol", "grpc",
                                                    "--host", "0.0.0.0", "--port", "9000"]}
    assert "unrecognized arguments: --triton-url svc:8001 --protocol grpc" in problems(old_gateway)
    unknown_profile = {"command": ["koserve"], "args": ["gateway", "--model", "m=svc:8001,profile=gpt-4"]}
    assert "gpt-4" in problems(unknown_profile)
    old_serve = {"command": ["/bin/bash", "-ec"], "args": [
        'exec koserve serve --repo /r --http-port 8000 --grpc-port 8001 --metrics-port 8002 --health-port 8003 \\\n'
        '  -- --grpc-restricted-api="model-repository:k=${KEY}" --exit-timeout-secs=5']}
    assert "tritonserver has no flag --grpc-restricted-api" in problems(old_serve)
    assert "bash -n" in problems({"command": ["/bin/bash", "-ec"], "args": ["if true; then echo"]})
    assert "serves health on 8003; the container has no such port" not in problems(old_serve)


def test_init_containers_have_memory_limits(chart, kit):
    for case in ("everything", "lws", "extra-init"):
        for rc in kit.all_containers(chart.template(*TOGGLES[case]).docs):
            if rc.init:  # (a memory limit alone also sets the request)
                assert "memory" in rc.container.get("resources", {}).get("limits", {}), rc.where
    values = kit.load_values()
    init = {rc.container["name"]: rc.container for rc in kit.all_containers(chart.template(*TOGGLES["extra-init"]).docs)
            if rc.init and "komt-13b" in rc.where}
    assert init["render-repository"]["resources"] == values["initContainer"]["resources"]
    # An extra init container without resources gets the same; one with its own keeps them.
    assert init["fetch-engine"]["resources"] == values["initContainer"]["resources"]
    assert init["own-limits"]["resources"] == {"limits": {"memory": "64Mi"}}
    error = chart.template_error((), ("initContainer.resources.limits=null",))
    assert "initContainer/resources" in error, error
