"""The chart's fleet options with the real helm: routing through the Gateway API Inference Extension (InferencePool,
endpoint picker, HTTPRoute; the koserve gateway as a sidecar of each Triton pod), KEDA autoscaling on the
TensorRT-LLM backend's gauges, and the drain (preStop, --exit-timeout-secs, terminationGracePeriodSeconds).

Custom resources are checked as the API server would admit them: the upstream CRD's openAPIV3Schema at a cited
release (tests/deploy/schemas/SOURCES.md) with the schema's defaults applied, unknown fields refused (the API server
would prune them silently) and the CRD's CEL rules evaluated with cel-python. Core kinds go to kubernetes-validate
through the shared kit."""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import celpy
import jsonschema
import pytest
import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"
EPP_FACTS = json.loads((SCHEMAS / "gaie-v1.5.0-epp.json").read_text())
CRD_FILES = {
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepool-v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-v1alpha1.json",
}
KEY_SECRET = "gateway.apiKeysSecret.name=koserve-api-keys"
FLEET = ("gateway.enabled=true", "gateway.mode=sidecar", KEY_SECRET, "inferencePool.enabled=true")
KEDA = ("keda.enabled=true", "monitoring.podMonitor.enabled=true")
BOTH = ("values-both-h100x8.yaml",)
MULTI_NODE = ("models.akallama-70b.enabled=true", "models.komt-13b.enabled=false",
              "models.akallama-70b.multiNode.enabled=true", "models.akallama-70b.multiNode.sshSecret=ssh",
              "models.akallama-70b.engine.recipe=akallama-70b-fp8-h100-tp2pp2-2node",
              "models.akallama-70b.engine.tensorParallel=2", "models.akallama-70b.engine.pipelineParallel=2")


# ------------------------------------------------------------------ CRD admission: defaults, pruning, schema, CEL

# Kubernetes escapes property names that are CEL keywords or hold these characters (KEP-2876, "Escaping").
_CEL_KEYWORDS = {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
                 "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}


def _cel_name(name: str) -> str:
    if name in _CEL_KEYWORDS:
        return f"__{name}__"
    return (name.replace("__", "__underscores__").replace(".", "__dot__").replace("-", "__dash__")
            .replace("/", "__slash__"))


def _with_defaults(schema: dict, data):
    """``data`` with the structural schema's defaults filled in (objects only, as the API server defaults)."""
    if isinstance(data, dict):
        out = dict(data)
        for key, sub in schema.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = _with_defaults(sub, out[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in set(out) - set(schema.get("properties", {})):
                out[key] = _with_defaults(extra, out[key])
        return out
    if isinstance(data, list) and isinstance(schema.get("items"), dict):
        return [_with_defaults(schema["items"], item) for item in data]
    return data


def _pruned_fields(schema: dict, data, path: str = "") -> list[str]:
    """Fields the API server would drop silently: not in ``properties`` of a structural object schema."""
    found = []
    if isinstance(data, dict) and schema.get("type") == "object" and not schema.get(
            "x-kubernetes-preserve-unknown-fields"):
        props = schema.get("properties")
        if props is not None and "additionalProperties" not in schema:
            found += [f"{path}.{k}" for k in data if k not in props]
        for key, value in data.items():
            sub = (props or {}).get(key) or (schema.get("additionalProperties")
                                             if isinstance(schema.get("additionalProperties"), dict) else None)
            if sub:
                found += _pruned_fields(sub, value, f"{path}.{key}")
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(data):
            found += _pruned_fields(schema["items"], item, f"{path}[{i}]")
    return found


def _cel_value(schema: dict, data):
    """``data`` as CEL sees it: property names escaped, map keys as they are."""
    if isinstance(data, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return {(_cel_name(k) if k in props else k): _cel_value(props.get(k) or extra, v) for k, v in data.items()}
    if isinstance(data, list):
        return [_cel_value(schema.get("items") or {}, v) for v in data]
    return data


_CEL = celpy.Environment()


def _cel_failures(schema: dict, data, path: str = "") -> list[str]:
    """Every x-kubernetes-validations rule on a node present in ``data`` that does not evaluate to true."""
    failures = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = _CEL.program(_CEL.compile(rule["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(_cel_value(schema, data))})
        if result is not True and result != celpy.celtypes.BoolType(True):
            failures.append(f"{path or '.'}: {rule.get('message') or rule['rule']} (got {result!r})")
    if isinstance(data, dict):
        for key, value in data.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub:
                failures += _cel_failures(sub, value, f"{path}.{key}")
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(data):
            failures += _cel_failures(schema["items"], item, f"{path}[{i}]")
    return failures


def admission_problems(doc: dict) -> list[str]:
    """What the API server with the cited CRD installed would refuse (or silently drop) in ``doc``."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    schema = json.loads((SCHEMAS / CRD_FILES[key]).read_text())
    name = doc["metadata"]["name"]
    problems = []
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) or len(name) > 253:
        problems.append(f"metadata.name {name!r} is not a DNS subdomain name")
    defaulted = _with_defaults(schema, doc)
    problems += [f"unknown field (pruned by the API server): {p}" for p in _pruned_fields(schema, defaulted)]
    validator = jsonschema.Draft202012Validator(schema)
    problems += [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(defaulted)]
    problems += _cel_failures(schema, defaulted)
    return [f"{doc['kind']}/{name}: {p}" for p in problems]


def validate_all(kit, docs: list[dict]) -> None:
    """Fleet CRs against their CRDs here; everything else (core kinds, the chart's other CRDs) through the kit."""
    ours = [d for d in docs if (d.get("apiVersion"), d.get("kind")) in CRD_FILES]
    problems = [p for d in ours for p in admission_problems(d)]
    assert not problems, "\n".join(problems)
    kit.validate_docs([d for d in docs if d not in ours])


def test_admission_check_refuses_what_the_crds_refuse(chart):
    """The CRD check above can fail: each broken copy of a rendered resource is refused for the reason the CRD
    gives (schema, CEL rule, an unknown field)."""
    docs = chart.template(sets=FLEET + KEDA)
    pool, route, scaled = docs.one("InferencePool"), docs.one("HTTPRoute"), docs.one("ScaledObject")
    assert admission_problems(pool) == [] and admission_problems(route) == [] and admission_problems(scaled) == []

    def broken(doc, change):
        doc = copy.deepcopy(doc)
        change(doc["spec"])
        return " ".join(admission_problems(doc))

    assert "port is required" in broken(pool, lambda s: s["endpointPickerRef"].pop("port"))
    assert "must be unique" in broken(pool, lambda s: s["targetPorts"].append(dict(s["targetPorts"][0])))
    assert "appProtocol" in broken(pool, lambda s: s.update(appProtocol="grpc"))
    assert "pruned" in broken(pool, lambda s: s.update(modelServerType="triton-tensorrt-llm"))
    assert "must be an absolute path" in broken(route, lambda s: s["rules"][0]["matches"][0]["path"].update(value="v1"))
    assert "backendRequest timeout cannot be longer than request timeout" in broken(
        route, lambda s: s["rules"][0]["timeouts"].update(backendRequest="9999s"))
    assert "pruned" in broken(route, lambda s: s["rules"][0]["backendRefs"][0].update(portNumber=8080))
    assert "minReplicaCount" in broken(scaled, lambda s: s.update(minReplicaCount=9, maxReplicaCount=2))
    assert "pruned" in broken(scaled, lambda s: s["triggers"][0].update(metricsType="Value"))


# ---------------------------------------------------------------------------------------------- routing

def _pod_template(docs, name: str) -> dict:
    return docs.one("Deployment", name)["spec"]["template"]


def _first_admitted(peers: list[dict]) -> tuple[str, dict, dict]:
    """(namespace, pod labels, namespace labels) of a pod the first pod/namespace-selector peer admits."""
    for peer in peers:
        if "ipBlock" not in peer:
            ns = peer.get("namespaceSelector", {}).get("matchLabels", {})
            return "gateway-system", dict(peer.get("podSelector", {}).get("matchLabels", {})), dict(ns)
    return "gateway-system", {}, {}


def _selects(match_labels: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in match_labels.items())


@pytest.mark.parametrize("values_files, sets", [
    ((), FLEET + KEDA), (BOTH, FLEET + KEDA), ((), FLEET + KEDA + MULTI_NODE),
    ((), ("gateway.enabled=true", "gateway.mode=sidecar", KEY_SECRET)),
], ids=["one-model", "two-models", "multi-node", "sidecar-only"])
def test_helm_lint_strict_with_fleet_options(chart, kit, values_files, sets):
    args = [a for f in values_files for a in ("-f", str(kit.chart_dir / f))] + [a for x in sets for a in ("--set", x)]
    proc = chart.run("lint", "--strict", str(kit.chart_dir), *args)
    assert proc.returncode == 0 and "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, \
        proc.stdout + proc.stderr


@pytest.mark.parametrize("values_files", [(), BOTH], ids=["one-model", "two-models"])
def test_inference_pool_renders_valid_per_model(chart, kit, values_files):
    docs = chart.template(values_files, FLEET)
    validate_all(kit, docs.docs)
    models = sorted(d["metadata"]["labels"]["koserve.io/model"] for d in docs.of_kind("InferencePool"))
    enabled = sorted(n for n, m in kit.load_values(*values_files)["models"].items() if m["enabled"])
    assert models == enabled
    for kind in ("HTTPRoute",):
        assert len(docs.of_kind(kind)) == len(enabled)
    for name in enabled:
        epp = f"ks-koserve-{name}-epp"
        for kind in ("Deployment", "Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding"):
            docs.one(kind, epp)
    # no separate gateway Deployment in sidecar mode: the pool's endpoints are the Triton pods
    assert not [d for d in docs.of_kind("Deployment") if d["metadata"]["name"].endswith("-gateway")]


def test_pool_selects_the_triton_pods_and_targets_their_gateway_sidecar(chart, kit):
    docs = chart.template(sets=FLEET)
    pool = docs.one("InferencePool")
    name = pool["metadata"]["name"]
    pod = _pod_template(docs, name)
    assert _selects(pool["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    # nothing else in the release matches the selector (EPP pods, test pods)
    others = [d for d in docs.docs if d is not docs.one("Deployment", name)
              for role, spec in kit.pod_specs(d)
              if _selects(pool["spec"]["selector"]["matchLabels"],
                          (d["spec"]["template"]["metadata"] if "template" in d["spec"] else d["metadata"])
                          .get("labels", {}))]
    assert others == []
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert set(containers) == {"triton", "gateway"}
    gateway, triton = containers["gateway"], containers["triton"]
    [target] = pool["spec"]["targetPorts"]
    assert target["number"] in [p["containerPort"] for p in gateway["ports"]]
    assert pool["spec"]["appProtocol"] == "http"

    # the sidecar's command, parsed by koserve's real CLI parser, points at this pod's Triton on 127.0.0.1
    argv = gateway["command"][1:] + gateway["args"]
    args, error = kit.parse_koserve(argv)
    assert error is None, error
    from koserve.gateway.config import parse_model_spec

    [spec_text] = args.models
    spec = parse_model_spec(spec_text)
    grpc_port = {p["name"]: p["containerPort"] for p in triton["ports"]}["grpc"]
    assert spec.url == f"127.0.0.1:{grpc_port}" and spec.protocol == "grpc"
    assert args.port == target["number"] and args.host == "0.0.0.0"
    assert spec.tokenizer.startswith("/models/") and any(
        m["mountPath"] == "/models" for m in gateway["volumeMounts"])
    assert gateway["readinessProbe"]["httpGet"]["port"] == "openai"
    # the gateway's API keys come from the Secret
    assert {e["name"] for e in gateway["env"]} >= {"KOSERVE_API_KEYS"}


def test_endpoint_picker_reads_the_tensorrt_llm_backend_metrics(chart):
    """The picker's engine config names exactly the Triton TensorRT-LLM metrics of the extension's model-server
    protocol (v1.5.0), scrapes Triton's metrics port, and uses only flags and fields v1.5.0 has."""
    docs = chart.template(sets=FLEET)
    pool = docs.one("InferencePool")
    epp_name = pool["spec"]["endpointPickerRef"]["name"]
    config = yaml.safe_load(docs.one("ConfigMap", epp_name)["data"]["koserve-plugins.yaml"])
    assert config["apiVersion"] == "inference.networking.x-k8s.io/v1alpha1"
    assert config["kind"] == "EndpointPickerConfig"
    plugins = {p["type"]: p for p in config["plugins"]}
    assert set(plugins) == set(EPP_FACTS["plugin_types"]["types"])
    extractor = plugins["core-metrics-extractor"]["parameters"]
    assert set(extractor) <= set(EPP_FACTS["engine_config_fields"]["extractor_parameters"])
    facts = EPP_FACTS["triton_tensorrt_llm_metrics"]
    assert extractor["defaultEngine"] == facts["engine_name"]
    [engine] = extractor["engineConfigs"]
    assert set(engine) <= set(EPP_FACTS["engine_config_fields"]["engine_config"])
    for field in ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec", "cacheBlockSizeSpec",
                  "cacheNumBlocksSpec"):
        assert engine[field] == facts[field], field
    assert set(plugins["metrics-data-source"]["parameters"]) <= set(
        EPP_FACTS["metrics_data_source_parameters"]["fields"])
    [profile] = config["schedulingProfiles"]
    weights = {p["pluginRef"]: p["weight"] for p in profile["plugins"]}
    assert weights == EPP_FACTS["plugin_types"]["default_weights"]

    deployment = docs.one("Deployment", epp_name)
    pod = deployment["spec"]["template"]
    [epp] = pod["spec"]["containers"]
    assert epp["image"] == EPP_FACTS["image"]["value"]
    flags = [a[2:] for a in epp["args"] if a.startswith("--")]
    unknown = [f for f in flags if f.split("=", 1)[0] not in EPP_FACTS["epp_flags"]["names"]]
    assert unknown == []
    value = dict(zip(epp["args"], epp["args"][1:]))
    assert value["--pool-name"] == pool["metadata"]["name"]
    assert value["--pool-namespace"] == "serving"
    assert value["--pool-group"] == "inference.networking.k8s.io"
    triton = {c["name"]: c for c in _pod_template(docs, pool["metadata"]["name"])["spec"]["containers"]}["triton"]
    metrics_port = {p["name"]: p["containerPort"] for p in triton["ports"]}["metrics"]
    assert int(value["--model-server-metrics-port"]) == metrics_port
    assert value["--config-file"] == "/config/koserve-plugins.yaml"
    assert any(m["mountPath"] == "/config" for m in epp["volumeMounts"])
    assert epp["securityContext"]["readOnlyRootFilesystem"] and any(m["mountPath"] == "/tmp" for m in epp["volumeMounts"])
    # the pool's endpointPickerRef reaches the picker's ext-proc port through its Service
    service = docs.one("Service", epp_name)
    [ext_proc] = [p for p in service["spec"]["ports"] if p["port"] == pool["spec"]["endpointPickerRef"]["port"]["number"]]
    ports = {p["name"]: p["containerPort"] for p in epp["ports"]}
    assert ports[ext_proc["targetPort"]] == int(value["--grpc-port"])
    assert _selects(service["spec"]["selector"], pod["metadata"]["labels"])
    probes = EPP_FACTS["probes"]
    assert epp["readinessProbe"]["grpc"] == {"port": probes["grpc_health_port"],
                                             "service": probes["single_replica_service"]}
    # RBAC: what the extension's chart grants the picker, bound to its ServiceAccount
    role = docs.one("Role", epp_name)
    assert role["rules"] == EPP_FACTS["rbac"]["rules"]
    binding = docs.one("RoleBinding", epp_name)
    assert binding["subjects"][0]["name"] == pod["spec"]["serviceAccountName"] == epp_name
    assert "checksum/config" in pod["metadata"]["annotations"]


def test_endpoint_picker_high_availability(chart, kit):
    docs = chart.template(sets=FLEET + ("inferencePool.endpointPicker.replicas=2",))
    validate_all(kit, docs.docs)
    epp = docs.one("Deployment", "-epp")
    [container] = epp["spec"]["template"]["spec"]["containers"]
    assert "--ha-enable-leader-election" in container["args"]
    assert container["livenessProbe"]["grpc"]["service"] == EPP_FACTS["probes"]["ha_liveness_service"]
    assert container["readinessProbe"]["grpc"]["service"] == EPP_FACTS["probes"]["ha_readiness_service"]
    rules = docs.one("Role", "-epp")["rules"]
    assert all(r in rules for r in EPP_FACTS["rbac"]["leader_election_rules"])


def test_http_route_points_at_the_pool(chart, kit):
    docs = chart.template(sets=FLEET + ("inferencePool.gateway.namespace=gateways",))
    route, pool = docs.one("HTTPRoute"), docs.one("InferencePool")
    [parent] = route["spec"]["parentRefs"]
    assert (parent["kind"], parent["name"], parent["namespace"]) == ("Gateway", "inference-gateway", "gateways")
    [rule] = route["spec"]["rules"]
    [backend] = rule["backendRefs"]
    assert (backend["group"], backend["kind"], backend["name"]) == (
        "inference.networking.k8s.io", "InferencePool", pool["metadata"]["name"])
    [match] = rule["matches"]
    assert "headers" not in match  # one model: every request on the Gateway goes to it
    assert docs.of_kind("ConfigMap") and not [c for c in docs.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-bbr")]


def test_two_models_route_on_the_body_based_router_header(chart):
    docs = chart.template(BOTH, FLEET)
    bbr = EPP_FACTS["body_based_routing"]
    routes = {r["metadata"]["labels"]["koserve.io/model"]: r for r in docs.of_kind("HTTPRoute")}
    assert len(routes) == 2
    for model, route in routes.items():
        [header] = route["spec"]["rules"][0]["matches"][0]["headers"]
        assert header == {"type": "Exact", "name": bbr["header"], "value": model}
        cm = docs.one("ConfigMap", f"-{model}-bbr")
        assert cm["metadata"]["labels"][bbr["configmap_label"]] == "true"
        assert cm["data"] == {bbr["base_model_key"]: model}


def test_sidecar_gateway_service_selects_triton_pods(chart, kit):
    docs = chart.template(sets=("gateway.enabled=true", "gateway.mode=sidecar", KEY_SECRET))
    validate_all(kit, docs.docs)
    assert not docs.of_kind("InferencePool")
    service = docs.one("Service", "-gateway")
    pod = _pod_template(docs, service["metadata"]["name"].removesuffix("-gateway"))
    assert _selects(service["spec"]["selector"], pod["metadata"]["labels"])
    [port] = service["spec"]["ports"]
    gateway = {c["name"]: c for c in pod["spec"]["containers"]}["gateway"]
    assert port["targetPort"] in [p["name"] for p in gateway["ports"]]


def test_multi_node_pool_selects_the_leader(chart, kit):
    docs = chart.template(sets=FLEET + MULTI_NODE)
    validate_all(kit, docs.docs)
    pool = docs.one("InferencePool")
    lws = docs.one("LeaderWorkerSet")
    assert pool["spec"]["selector"]["matchLabels"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    lwt = lws["spec"]["leaderWorkerTemplate"]
    leader = [c["name"] for c in lwt["leaderTemplate"]["spec"]["containers"]]
    worker = [c["name"] for c in lwt["workerTemplate"]["spec"]["containers"]]
    assert "gateway" in leader and "gateway" not in worker


def test_network_policies_admit_the_picker_and_the_gateway_proxies(chart, kit):
    docs = chart.template(sets=FLEET)
    pool = docs.one("InferencePool")
    epp_pod = docs.one("Deployment", "-epp")["spec"]["template"]["metadata"]["labels"]
    triton_policies = [p for p in docs.of_kind("NetworkPolicy")
                       if _selects(p["spec"]["podSelector"]["matchLabels"],
                                   _pod_template(docs, pool["metadata"]["name"])["metadata"]["labels"])]
    values = kit.load_values()
    metrics, openai = values["triton"]["ports"]["metrics"], pool["spec"]["targetPorts"][0]["number"]
    picker = kit.Peer("serving", epp_pod)
    proxy = kit.Peer("gateway-system", {"app": "envoy"})
    stranger = kit.Peer("serving", {"app": "other"})
    assert any(kit.network_policy_admits(p, picker, metrics, "serving") for p in triton_policies)
    assert not any(kit.network_policy_admits(p, stranger, metrics, "serving") for p in triton_policies)
    # the OpenAI port admits exactly the gateway's peers (gateway.networkPolicy.from), as the gateway Deployment does
    gateway_from = values["gateway"].get("networkPolicy", {}).get("from", [])
    openai_policies = [p for p in triton_policies if any(
        port.get("port") == openai for rule in p["spec"].get("ingress", []) for port in rule.get("ports", []))]
    if gateway_from:
        [policy] = openai_policies
        assert policy["spec"]["ingress"] == [{"ports": [{"port": openai, "protocol": "TCP"}], "from": gateway_from}]
        assert kit.network_policy_admits(policy, kit.Peer(*_first_admitted(gateway_from)), openai, "serving")
    else:
        assert openai_policies == []
    epp_policy = docs.one("NetworkPolicy", "-epp")
    assert kit.network_policy_admits(epp_policy, proxy, 9002, "serving")
    narrowed = chart.template(sets=FLEET + (
        "inferencePool.endpointPicker.networkPolicy.from[0].namespaceSelector.matchLabels.gw=yes",))
    epp_policy = narrowed.one("NetworkPolicy", "-epp")
    assert not kit.network_policy_admits(epp_policy, proxy, 9002, "serving")
    assert kit.network_policy_admits(epp_policy, kit.Peer("gateway-system", {}, {"gw": "yes"}), 9002, "serving")


@pytest.mark.parametrize("sets, message", [
    (("inferencePool.enabled=true",), "gateway.mode=sidecar"),
    (("gateway.enabled=true", KEY_SECRET, "inferencePool.enabled=true"), "gateway.mode=sidecar"),
    (FLEET + ("inferencePool.gateway.name=",), "inferencePool.gateway.name"),
    (("gateway.enabled=true", "gateway.mode=sidecar"), "apiKeysSecret"),
    (("gateway.enabled=true", "gateway.mode=daemon", KEY_SECRET), "mode"),
    (KEDA + ("models.komt-13b.autoscaling.enabled=true",), "choose one autoscaler"),
    (("keda.enabled=true",), "monitoring.podMonitor"),
    (KEDA + ("keda.minReplicaCount=5", "keda.maxReplicaCount=2"), "minReplicaCount"),
    (KEDA + ("keda.waitingRequestsPerReplica=0", "keda.kvCacheUtilizationPerReplica=0"), "at least one trigger"),
    (KEDA + ("keda.minReplicaCount=0",), "minReplicaCount"),
    (("shutdown.streamTokens=null",), "streamTokens"),
    (("shutdown.streamTokens.komt-13b=null",), "shutdown.streamTokens has no entry for profile komt-13b"),
], ids=["pool-without-gateway", "pool-with-gateway-deployment", "no-gateway-name", "sidecar-without-keys",
        "unknown-mode", "keda-and-hpa", "keda-without-monitor", "keda-min-above-max", "keda-no-trigger",
        "keda-scale-to-zero", "no-stream-tokens", "profile-without-stream-tokens"])
def test_refused_at_template_time(chart, sets, message):
    assert message in chart.template_error(sets=sets)


# ---------------------------------------------------------------------------------------------- KEDA

@pytest.mark.parametrize("values_files", [(), BOTH], ids=["one-model", "two-models"])
def test_keda_scaled_object_per_model(chart, kit, values_files):
    docs = chart.template(values_files, KEDA)
    validate_all(kit, docs.docs)
    assert not docs.of_kind("HorizontalPodAutoscaler")
    values = kit.load_values(*values_files)
    for scaled in docs.of_kind("ScaledObject"):
        model = scaled["metadata"]["labels"]["koserve.io/model"]
        target = scaled["spec"]["scaleTargetRef"]
        workload = docs.one(target["kind"], target["name"])
        assert "replicas" not in workload["spec"], "KEDA owns the replicas; helm upgrade must not reset them"
        assert scaled["spec"]["minReplicaCount"] >= 1
        triggers = {t["name"]: t for t in scaled["spec"]["triggers"]}
        assert set(triggers) == {"waiting-requests", "kv-cache-utilization"}
        waiting, kv = triggers["waiting-requests"], triggers["kv-cache-utilization"]
        for trigger in triggers.values():
            assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
            assert trigger["metadata"]["serverAddress"] == values["keda"]["prometheus"]["serverAddress"]
            query = trigger["metadata"]["query"]
            # the series the chart's PodMonitor relabels (koserve_model) in this release's namespace
            assert f'koserve_model="{model}"' in query and 'namespace="serving"' in query
            assert query.startswith("sum(avg_over_time(")
        assert re.search(r'nv_trt_llm_request_metrics\{[^}]*request_type="waiting"', waiting["metadata"]["query"])
        assert re.search(r'nv_trt_llm_kv_cache_block_metrics\{[^}]*kv_cache_block_type="fraction"',
                         kv["metadata"]["query"])
        assert float(waiting["metadata"]["threshold"]) == values["keda"]["waitingRequestsPerReplica"]
        assert float(kv["metadata"]["threshold"]) == values["keda"]["kvCacheUtilizationPerReplica"]


def test_keda_metric_names_are_the_pickers(chart):
    """KEDA and the endpoint picker read the same gauges: the label each trigger selects is the one in the
    picker's spec for the same signal."""
    docs = chart.template(sets=FLEET + KEDA)
    queries = {t["name"]: t["metadata"]["query"] for t in docs.one("ScaledObject")["spec"]["triggers"]}
    facts = EPP_FACTS["triton_tensorrt_llm_metrics"]
    for trigger, spec in (("waiting-requests", facts["queuedRequestsSpec"]),
                          ("kv-cache-utilization", facts["kvUsageSpec"])):
        name, label, value = re.fullmatch(r"(\w+)\{(\w+)=(\w+)\}", spec).groups()
        assert re.search(rf'{name}\{{[^}}]*{label}="{value}"', queries[trigger]), (trigger, queries[trigger])


def test_keda_per_model_overrides_and_one_trigger(chart, kit):
    docs = chart.template(BOTH, KEDA + ("keda.models.akallama-70b.maxReplicaCount=2",
                                        "keda.kvCacheUtilizationPerReplica=0"))
    validate_all(kit, docs.docs)
    by_model = {s["metadata"]["labels"]["koserve.io/model"]: s for s in docs.of_kind("ScaledObject")}
    assert by_model["akallama-70b"]["spec"]["maxReplicaCount"] == 2
    assert by_model["komt-13b"]["spec"]["maxReplicaCount"] == kit.load_values()["keda"]["maxReplicaCount"]
    for scaled in by_model.values():
        assert [t["name"] for t in scaled["spec"]["triggers"]] == ["waiting-requests"]


def test_keda_scales_a_multi_node_group(chart, kit):
    docs = chart.template(sets=KEDA + MULTI_NODE)
    validate_all(kit, docs.docs)
    target = docs.one("ScaledObject")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
    assert "replicas" not in docs.one("LeaderWorkerSet")["spec"]


# ---------------------------------------------------------------------------------------------- drain

def _profiles():
    from koserve.profiles import loader

    return {name: loader.load_profile(name) for name in loader.builtin_profile_names()}


def test_stream_tokens_are_the_profiles_max_tokens(kit):
    """shutdown.streamTokens holds, per profile koserve ships, the profile's context: the gateway's default cap on
    max_tokens and every recipe's max_seq_len for that profile."""
    stream_tokens = kit.load_values()["shutdown"]["streamTokens"]
    profiles = _profiles()
    assert set(stream_tokens) == set(profiles)
    for name, profile in profiles.items():
        assert stream_tokens[name] == profile.architecture.max_position_embeddings, name
    recipes = sorted((kit.repo / "recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        data = yaml.safe_load(recipe.read_text())
        assert data["limits"]["max_seq_len"] == stream_tokens[data["profile"]], recipe.name


@pytest.mark.parametrize("values_files, sets", [
    ((), ()), (BOTH, ()), ((), FLEET), ((), ("gateway.enabled=true", KEY_SECRET)),
    ((), ("shutdown.worstInterTokenSeconds=1", "shutdown.firstTokenSeconds=20", "shutdown.exitTimeoutSeconds=60")),
], ids=["default", "two-models", "sidecar", "gateway-deployment", "slower-tokens"])
def test_drain_grace_is_derived_from_the_profile(chart, kit, values_files, sets):
    """koserve serve's --drain-grace is koserve's own drain_grace() of the profile's longest stream
    (streamTokens[profile] tokens at worstInterTokenSeconds, plus firstTokenSeconds), rounded up; the preStop, that
    grace, Triton's exit timeout and koserve serve's SIGKILL after it (its real default_stop_grace) fit inside the
    pod's terminationGracePeriodSeconds, on every pod that serves or routes a stream of that model."""
    from koserve.cli.serve import server_extra_args
    from koserve.server.drain import drain_grace
    from koserve.server.tritonserver import default_stop_grace

    docs = chart.template(values_files, sets)
    values = kit.load_values(*values_files)
    for key, value in (s.split("=", 1) for s in sets if s.startswith("shutdown.")):
        values["shutdown"][key.split(".", 1)[1]] = int(value)
    shutdown = values["shutdown"]
    drain, exit_timeout = shutdown["drainSeconds"], shutdown["exitTimeoutSeconds"]
    for model, m in values["models"].items():
        if not m["enabled"]:
            continue
        grace = math.ceil(round(drain_grace(shutdown["streamTokens"][m["profile"]], shutdown["worstInterTokenSeconds"],
                                            shutdown["firstTokenSeconds"]), 6))
        pod_grace = drain + grace + exit_timeout + 15
        spec = docs.one("Deployment", f"ks-koserve-{model}")["spec"]["template"]["spec"]
        triton = {c["name"]: c for c in spec["containers"]}["triton"]
        [serve_argv] = kit.koserve_invocations(triton["args"][0])
        args, error = kit.parse_koserve(serve_argv)
        assert error is None, error
        assert args.drain_grace == grace
        extra = server_extra_args(args)
        assert f"--exit-timeout-secs={exit_timeout}" in extra
        assert spec["terminationGracePeriodSeconds"] == pod_grace
        assert pod_grace >= drain + args.drain_grace + default_stop_grace(extra) + 5
        for container in spec["containers"]:
            assert container["lifecycle"]["preStop"]["exec"]["command"][-1] == f"sleep {drain}", container["name"]
        for route in docs.of_kind("HTTPRoute"):
            if route["metadata"]["labels"]["koserve.io/model"] == model:
                assert route["spec"]["rules"][0]["timeouts"]["request"] == f"{grace}s"
        for suffix in ("gateway", "epp"):
            for d in docs.of_kind("Deployment"):
                if d["metadata"]["name"] == f"ks-koserve-{model}-{suffix}":
                    assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == pod_grace
        # every koserve gateway serving this model (sidecar or Deployment) drains its streams for the same grace
        gateways = [c for d in docs.of_kind("Deployment") for c in d["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "gateway" and d["metadata"]["labels"].get("koserve.io/model") == model]
        assert len(gateways) == (1 if any("gateway.enabled=true" in s for s in sets) else 0)
        for gateway in gateways:
            gw_args, error = kit.parse_koserve(gateway["command"][1:] + gateway["args"])
            assert error is None, error
            assert gw_args.drain_grace == grace


def test_drain_grace_override_applies_to_every_model(chart, kit):
    docs = chart.template(BOTH, ("shutdown.streamGraceSeconds=120",))
    shutdown = kit.load_values()["shutdown"]
    for deployment in docs.of_kind("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] == shutdown["drainSeconds"] + 120 + shutdown[
            "exitTimeoutSeconds"] + 15
        triton = {c["name"]: c for c in spec["containers"]}.get("triton")
        if triton:
            assert "--drain-grace 120 " in triton["args"][0]


# ------------------------------------------------------------------- the same series on a real Triton (CPU)

def _matching(families: list, name: str, matchers: dict[str, str]) -> list:
    return [s for f in families for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in matchers.items())]


@pytest.mark.server
def test_picker_and_keda_find_their_series_on_a_real_triton(chart, kit, triton_servers):
    """Every metric spec the rendered endpoint picker reads, and every KEDA query's selector, matches exactly one
    series on a real Triton's metrics port: the CPU stand-in exports TensorRT-LLM's families as NVIDIA's backend does
    (tests/fleet/test_engine_metrics.py checks them against the backend's source). The labels KEDA adds
    (namespace, koserve_model) come from Prometheus: the chart's PodMonitor relabels koserve_model from the pod's
    koserve.io/model label."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    docs = chart.template(sets=FLEET + KEDA)
    server = triton_servers("komt-13b", "replay")
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        families = list(text_string_to_metric_families(resp.read().decode()))

    config = yaml.safe_load(docs.one("ConfigMap", "-epp")["data"]["koserve-plugins.yaml"])
    [extractor] = [p for p in config["plugins"] if p["type"] == "core-metrics-extractor"]
    [engine] = extractor["parameters"]["engineConfigs"]
    specs = {k: v for k, v in engine.items() if k.endswith("Spec") and v}
    assert len(specs) == 5
    found = {}
    for field, spec in specs.items():
        name, label, value = re.fullmatch(r"(\w+)\{(\w+)=(\w+)\}", spec).groups()
        samples = _matching(families, name, {label: value})
        assert len(samples) == 1, (field, spec, samples)
        found[field] = samples[0].value
    assert 0 <= found["kvUsageSpec"] <= 1 and found["cacheBlockSizeSpec"] > 0 and found["cacheNumBlocksSpec"] > 0

    relabel = docs.one("PodMonitor")["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_koserve_io_model"], "targetLabel": "koserve_model"} in relabel
    pod_labels = docs.one("Deployment", "ks-koserve-komt-13b")["spec"]["template"]["metadata"]["labels"]
    for trigger in docs.one("ScaledObject")["spec"]["triggers"]:
        name, selector = re.search(r"(nv_trt_llm_\w+)\{([^}]*)\}", trigger["metadata"]["query"]).groups()
        matchers = dict(re.findall(r'(\w+)="([^"]*)"', selector))
        assert matchers.pop("koserve_model") == pod_labels["koserve.io/model"]
        assert matchers.pop("namespace") == "serving"
        assert len(_matching(families, name, matchers)) == 1, (trigger["name"], matchers)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.server
def test_sidecar_gateway_argv_serves_and_drains_on_a_real_triton(chart, kit, triton_servers, tmp_path):
    """The gateway sidecar's rendered argv, run for real against a CPU Triton on 127.0.0.1 (as it reaches Triton in
    the pod; only the tokenizer folder and the listen address are this machine's): it answers an OpenAI chat, and on
    SIGTERM a stream in flight finishes whole while a new request gets 503 with Retry-After, then it exits."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    import httpx

    from koserve.errors import ConfigError
    from koserve.fixtures import tokenizer_dir

    try:
        tokenizer = tokenizer_dir("llama2")
    except ConfigError as e:
        pytest.skip(f"tokenizer fixtures missing ({e}); run `koserve setup fixtures`")
    server = triton_servers("komt-13b", "replay", replay_delay_ms=20)
    grpc_port, port = int(server.grpc_url.rsplit(":", 1)[1]), _free_port()
    docs = chart.template(sets=FLEET + (f"triton.ports.grpc={grpc_port}", f"gateway.port={port}",
                                        "shutdown.streamGraceSeconds=60"))
    pod = docs.one("Deployment", "ks-koserve-komt-13b")["spec"]["template"]["spec"]
    gateway = {c["name"]: c for c in pod["containers"]}["gateway"]
    argv = gateway["command"] + gateway["args"]
    pod_tokenizer = "/models/" + kit.load_values()["models"]["komt-13b"]["engine"]["tokenizerDir"]
    [spec_index] = [i for i, a in enumerate(argv) if a.startswith("komt-13b=127.0.0.1:")]
    assert f"127.0.0.1:{grpc_port}," in argv[spec_index] and f"tokenizer={pod_tokenizer}" in argv[spec_index]
    argv[spec_index] = argv[spec_index].replace(f"tokenizer={pod_tokenizer}", f"tokenizer={tokenizer}")
    argv[argv.index("0.0.0.0")] = "127.0.0.1"
    argv[0] = str(Path(sys.executable).parent / "koserve")
    env = {**os.environ, "KOSERVE_API_KEYS": "sk-sidecar", "HOME": str(tmp_path)}
    headers = {"Authorization": "Bearer sk-sidecar"}
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the sidecar never got ready:\n" + log.read_text()
            try:
                if httpx.get(url + gateway["readinessProbe"]["httpGet"]["path"], timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        body = {"model": "komt-13b", "messages": [{"role": "user", "content": "안녕하세요"}], "max_tokens": 200,
                "stream": True}
        chunks, first = [], threading.Event()

        def read_stream() -> None:
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        chunks.append(line[6:])
                        first.set()

        reader = threading.Thread(target=read_stream)
        reader.start()
        assert first.wait(30), "no first chunk:\n" + log.read_text()
        os.kill(proc.pid, signal.SIGTERM)
        refused = None
        for _ in range(50):  # bounded: until the drain answers (the stream is still running: 200 tokens × 20 ms)
            r = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False}, headers=headers, timeout=10)
            if r.status_code == 503:
                refused = r
                break
            time.sleep(0.02)
        reader.join(60)
        assert not reader.is_alive()
        assert refused is not None and refused.headers.get("retry-after"), "a new request was not refused"
        assert "draining" in refused.json()["error"]["message"]
        assert chunks[-1] == "[DONE]", chunks[-3:]
        finish = [json.loads(c)["choices"][0].get("finish_reason") for c in chunks[:-1] if c.startswith("{")]
        assert finish[-1] in ("length", "stop"), finish[-3:]
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
