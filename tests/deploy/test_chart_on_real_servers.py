"""The chart's own commands, run for real: the Triton container's script (`koserve serve` + the chart's tritonserver
flags) on a CPU replay repository, and the gateway container's argv in front of it. Every probe of both containers
is asked over HTTP, and Triton's restricted APIs (logging, statistics and model configuration included) refuse
anonymous callers while the gateway and the probes keep working.

Where this machine allows it (root: `unshare -m`), each container runs in a mount namespace of its own in which every
file system is read-only except what the chart mounts writable for it (its emptyDirs: /tmp, $HOME, /dev/shm), as
readOnlyRootFilesystem makes it in a pod; the rendered model repository is read-only to Triton, as the chart mounts
it, and writable only to the `koserve repo render` step that fills it.

Only what a pod needs is changed: the repository path (the init container's output), `--host 0.0.0.0` → 127.0.0.1,
the Service name → 127.0.0.1, and the pod's $HOME (/home/koserve) → a folder here; ports are free ports chosen now
and rendered through the chart's values."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.server

ADMIN_KEY = "chart-test-admin-key"
API_KEY = "sk-chart-test"
START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 30


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> httpx.Response:
    """GET url until it answers 200 (bounded); fail early with the log when the process exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before {url} answered 200:\n{log.read_text()[-4000:]}")
        try:
            r = httpx.get(url, timeout=3)
            if r.status_code == 200:
                return r
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer 200 within {timeout}s (last: {last}):\n{log.read_text()[-4000:]}")


@contextmanager
def _running(argv: list[str], env: dict, log: Path):
    """A process in its own session, stopped with SIGTERM (then SIGKILL of its group) when the block ends."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        try:  # anything the process group left behind (a tritonserver whose launcher died)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _probe_url(rc, probe: str) -> str:
    get = rc.container[probe]["httpGet"]
    return f"http://127.0.0.1:{rc.port(get['port'])}{get['path']}"


POD_HOME = "/home/koserve"


def _pod_env(container: dict, home: Path) -> dict[str, str]:
    """The container's literal env values, with the pod's $HOME mapped to ``home``."""
    return {e["name"]: e["value"].replace(POD_HOME, str(home)) for e in container.get("env", []) if "value" in e}


def _writable_mounts(container: dict) -> set[str]:
    return {m["mountPath"] for m in container.get("volumeMounts", []) if not m.get("readOnly")}


@pytest.fixture(scope="module")
def chart_stack(chart, kit, replay_text_file):
    from koserve.errors import ConfigError
    from koserve.fixtures import tokenizer_dir
    from koserve.server.tritonserver import free_ports

    try:
        tokenizer = tokenizer_dir("llama2")
    except ConfigError as e:
        pytest.skip(f"tokenizer fixtures missing ({e}); run `koserve setup fixtures`")
    no_read_only = kit.read_only_root_unavailable()
    # Outside /tmp: each container gets a fresh /tmp of its own, which would hide this folder.
    work = Path(tempfile.mkdtemp(prefix="koserve-chart-stack-", dir="/var/tmp" if Path("/var/tmp").is_dir() else None))
    try:
        yield from _chart_stack(chart, kit, work, tokenizer, replay_text_file, no_read_only, free_ports(5))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _in_pod(kit, argv: list[str], env: dict, *, writable: list[str], keep: list[str] = (), read_only: bool):
    """argv (and env) as it runs in its container: with only the container's writable mounts writable."""
    if not read_only:
        return argv, env
    wrapped, extra = kit.read_only_root_argv(argv, writable, list(keep))
    return wrapped, {**env, **extra}


def _chart_stack(chart, kit, work: Path, tokenizer: Path, replay_text_file: Path, no_read_only, ports):
    http, grpc, metrics, health, gateway_port = ports
    read_only = no_read_only is None
    rendered = chart.template(("values-komt-13b-fp8-tp1.yaml",), (
        f"triton.ports.http={http}", f"triton.ports.grpc={grpc}", f"triton.ports.metrics={metrics}",
        f"triton.ports.health={health}", f"gateway.port={gateway_port}", "shutdown.exitTimeoutSeconds=5",
        "gateway.enabled=true", "gateway.apiKeysSecret.name=koserve-api-keys",
        "triton.restrictedApi.secret.name=triton-admin"))
    containers = {rc.container["name"]: rc for rc in kit.all_containers(rendered.docs)
                  if rc.where.startswith("Deployment/")}
    init, triton, gateway = containers["render-repository"], containers["triton"], containers["gateway"]
    # What the chart mounts writable for each container (the namespaces below make exactly these writable).
    assert _writable_mounts(init.container) == {"/repo", "/tmp", POD_HOME}, init.container["volumeMounts"]
    assert _writable_mounts(triton.container) == {"/dev/shm", "/tmp", POD_HOME}, triton.container["volumeMounts"]
    assert _writable_mounts(gateway.container) == {"/tmp", POD_HOME}, gateway.container["volumeMounts"]
    for rc in (init, triton, gateway):
        assert rc.container["securityContext"]["readOnlyRootFilesystem"] is True, rc.where
    bindir = str(Path(sys.executable).parent)
    base_env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
    homes = {name: work / f"home-{name}" for name in ("init", "triton", "gateway")}
    for home in homes.values():
        home.mkdir()
    replay = work / "replay.txt"
    shutil.copyfile(replay_text_file, replay)

    # What the init container leaves in /repo/model_repository, for the CPU stand-in (replay) instead of an engine:
    # `koserve repo render` with the init container's env, writing only /repo, /tmp and $HOME.
    repo_volume = work / "repo"
    repo_volume.mkdir()
    repo = repo_volume / "model_repository"
    argv, env = _in_pod(kit, [f"{bindir}/koserve", "repo", "render", "--profile", "komt-13b",
                              "--tokenizer", str(tokenizer), "--replay", "--replay-text", str(replay),
                              "--max-seq-len", "512", "--max-input-len", "384", "--out", str(repo)],
                        {**base_env, **_pod_env(init.container, homes["init"])},
                        writable=["/tmp", str(homes["init"])], keep=[str(repo_volume)], read_only=read_only)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    script = triton.container["args"][0]
    assert triton.container["command"] == ["/bin/bash", "-ec"]
    assert script.count("/repo/model_repository") == 1 and script.count("--host 0.0.0.0 ") == 1, script
    script = script.replace("/repo/model_repository", str(repo)).replace("--host 0.0.0.0 ", "--host 127.0.0.1 ")
    server_env = {**base_env, **_pod_env(triton.container, homes["triton"]), "TRITON_ADMIN_KEY": ADMIN_KEY}
    argv, server_env = _in_pod(kit, ["bash", "-ec", script], server_env,
                               writable=["/tmp", "/dev/shm", str(homes["triton"])], read_only=read_only)
    with _running(argv, server_env, work / "triton.log") as server:
        _wait_http(_probe_url(triton, "startupProbe"), server, work / "triton.log", START_TIMEOUT_S)

        svc = rendered.one("Service", "-komt-13b")["metadata"]["name"]
        # The Service name → loopback; the tokenizer folder on the models volume → the same tokenizer here.
        komt = kit.load_values("values-komt-13b-fp8-tp1.yaml")["models"]["komt-13b"]
        pod_tokenizer = "/models/" + komt["engine"]["tokenizerDir"]
        argv = [a.replace(f"{svc}:", "127.0.0.1:").replace(f"tokenizer={pod_tokenizer}", f"tokenizer={tokenizer}")
                for a in gateway.argv]
        assert any(f"tokenizer={tokenizer}" in a for a in argv), argv
        assert argv[0] == "koserve" and argv.count("0.0.0.0") == 1, argv
        argv[argv.index("0.0.0.0")] = "127.0.0.1"
        argv[0] = f"{bindir}/koserve"
        gateway_env = {**base_env, **_pod_env(gateway.container, homes["gateway"]), "KOSERVE_API_KEYS": API_KEY}
        argv, gateway_env = _in_pod(kit, argv, gateway_env, writable=["/tmp", str(homes["gateway"])],
                                    read_only=read_only)
        with _running(argv, gateway_env, work / "gateway.log") as gw:
            _wait_http(_probe_url(gateway, "readinessProbe"), gw, work / "gateway.log", 60)
            yield {"triton": triton, "gateway": gateway, "server": server, "gateway_proc": gw,
                   "http": f"http://127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}",
                   "metrics": f"http://127.0.0.1:{metrics}/metrics", "gateway_url": f"http://127.0.0.1:{gateway_port}",
                   "header": kit.load_values()["triton"]["restrictedApi"]["header"], "work": work,
                   "read_only": read_only, "no_read_only": no_read_only, "homes": homes, "repo": repo}


def _mounts(pid: int) -> dict[str, tuple[str, set[str]]]:
    """mount point → (file system type, mount options) as process ``pid`` sees them (its mount namespace)."""
    out = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        out[fields[4]] = (fields[sep + 1], set(fields[5].split(",")))
    return out


def test_containers_ran_with_a_read_only_root(chart_stack):
    """The Triton and gateway processes (and Triton's python stubs) see every file system read-only but the
    container's emptyDirs, and they serve (the other tests of this module ran against them)."""
    if not chart_stack["read_only"]:
        pytest.skip(f"cannot make a read-only mount namespace here: {chart_stack['no_read_only']}")
    from koserve.server.health import stub_processes

    server, gw = chart_stack["server"], chart_stack["gateway_proc"]
    homes = chart_stack["homes"]
    expected = {server.pid: {"/tmp", "/dev/shm", str(homes["triton"])}, gw.pid: {"/tmp", str(homes["gateway"])}}
    for stub in stub_processes(server.pid):
        expected[stub.pid] = expected[server.pid]
    assert len(expected) > 2, "no python stub found"
    for pid, writable in expected.items():
        mounts = _mounts(pid)
        rw = {mp for mp, (_, opts) in mounts.items() if "rw" in opts
              and not mp.startswith(("/proc", "/sys", "/dev/pts", "/dev/mqueue")) and mp != "/dev"}
        assert rw == writable, f"pid {pid}: writable mounts {sorted(rw)}, expected {sorted(writable)}"
        assert "ro" in mounts["/"][1], mounts["/"]
        for path in writable:
            assert mounts[path][0] == "tmpfs", (path, mounts[path])
    # The model repository is read-only to Triton, as the chart mounts it.
    repo_mount = max((mp for mp in _mounts(server.pid) if str(chart_stack["repo"]).startswith(mp)), key=len)
    assert "ro" in _mounts(server.pid)[repo_mount][1]
    # What they wrote where (seen through /proc/<pid>/root, inside their namespaces): printed for the docs.
    for name, pid, paths in (("triton", server.pid, ("/tmp", "/dev/shm", str(homes["triton"]))),
                             ("gateway", gw.pid, ("/tmp", str(homes["gateway"])))):
        for path in paths:
            root = Path(f"/proc/{pid}/root{path}")
            names = sorted(str(p.relative_to(root)) for p in root.glob("*/*/*") if p.is_dir() or p.is_file())
            names = names or sorted(p.name for p in root.iterdir())
            print(f"{name} wrote in {path}: {names[:8]}{' …' if len(names) > 8 else ''}")
    assert any(Path(f"/proc/{server.pid}/root/tmp").glob("koserve-triton-*.log")), "Triton's log is kept in /tmp"


def test_triton_container_probes_answer_on_the_real_server(chart_stack):
    triton = chart_stack["triton"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        r = httpx.get(_probe_url(triton, probe), timeout=5)
        assert r.status_code == 200, f"{probe}: {r.status_code} {r.text}"
    assert chart_stack["server"].poll() is None
    # The chart's ports are the ones serving: Triton's metrics on the metrics port.
    assert "nv_inference_request_success" in httpx.get(chart_stack["metrics"], timeout=5).text


def test_gateway_container_serves_chat_through_the_chart_triton(chart_stack, replay_text_file):
    gateway = chart_stack["gateway"]
    for probe in ("readinessProbe", "livenessProbe"):
        r = httpx.get(_probe_url(gateway, probe), timeout=5)
        assert r.status_code == 200, f"{probe}: {r.status_code} {r.text}"
    assert httpx.get(_probe_url(gateway, "readinessProbe"), timeout=5).json()["models"] == {"komt-13b": "ready"}
    url = chart_stack["gateway_url"] + "/v1/chat/completions"
    body = {"model": "komt-13b", "messages": [{"role": "user", "content": "안녕하세요"}], "max_tokens": 40}
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["message"]["content"]
    assert text and replay_text_file.read_text(encoding="utf-8").startswith(text[:10]), text
    # The tokenizer the chart hands the gateway is in use: prompt tokens are counted.
    assert r.json()["usage"]["prompt_tokens"] > 0, r.json()["usage"]


RESTRICTED_HTTP = [
    ("POST", "/v2/logging", {"log_verbose_level": 1}),
    ("GET", "/v2/logging", None),
    ("POST", "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]}),
    ("POST", "/v2/repository/index", {}),
    ("POST", "/v2/repository/models/ensemble/unload", {}),
    ("GET", "/v2/models/stats", None),
    ("GET", "/v2/models/ensemble/stats", None),
    ("GET", "/v2/models/ensemble/config", None),
    ("GET", "/v2/models/tensorrt_llm/config", None),
]


@pytest.mark.parametrize("method,path,body", RESTRICTED_HTTP, ids=[f"{m} {p}" for m, p, _ in RESTRICTED_HTTP])
def test_restricted_http_apis_refuse_anonymous_callers(chart_stack, method, path, body):
    header = chart_stack["header"]
    for headers in ({}, {header: "wrong-key"}):
        r = httpx.request(method, chart_stack["http"] + path, json=body, headers=headers, timeout=10)
        assert r.status_code == 403, f"{method} {path} with {headers}: {r.status_code} {r.text}"
        assert f"expecting header '{header}'" in r.text
    assert chart_stack["server"].poll() is None


def test_statistics_and_model_config_answer_only_with_the_key(chart_stack):
    """Anonymous statistics / model-config calls get 403 (test above); with the key they answer, and meanwhile the
    gateway serves and both containers' probes stay 200 (they need neither API)."""
    http, header = chart_stack["http"], chart_stack["header"]
    r = httpx.get(http + "/v2/models/ensemble/config", headers={header: ADMIN_KEY}, timeout=10)
    assert r.status_code == 200 and r.json()["name"] == "ensemble", r.text
    r = httpx.get(http + "/v2/models/stats", headers={header: ADMIN_KEY}, timeout=10)
    assert r.status_code == 200 and r.json()["model_stats"], r.text
    for name in ("triton", "gateway"):
        for probe in ("readinessProbe", "livenessProbe"):
            r = httpx.get(_probe_url(chart_stack[name], probe), timeout=5)
            assert r.status_code == 200, f"{name} {probe}: {r.status_code} {r.text}"
    r = httpx.post(chart_stack["gateway_url"] + "/v1/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": "komt-13b", "messages": [{"role": "user", "content": "통계"}], "max_tokens": 8})
    assert r.status_code == 200, r.text
    # The metrics port (Prometheus, HPA and KEDA read it) is not behind the key.
    assert "nv_inference_request_success" in httpx.get(chart_stack["metrics"], timeout=5).text


def test_koserve_clients_need_no_model_config(chart_stack, chart, kit, replay_text_file):
    """With model-config restricted, koserve's clients learn a model's inputs from its metadata: the helm test pod's
    `koserve chat` (gRPC) as rendered, and the HTTP and async clients, chat through ensemble and tensorrt_llm_bls;
    what the metadata says equals what the (keyed) config says for every text model, engine included."""
    import asyncio

    import tritonclient.grpc as grpcclient

    from koserve.client import AsyncChatClient, ChatClient
    from koserve.client._grpc import _declared_from_metadata, _declared_inputs

    expected = replay_text_file.read_text(encoding="utf-8")
    rendered = chart.template(("values-komt-13b-fp8-tp1.yaml",), (
        f"triton.ports.grpc={chart_stack['grpc'].rsplit(':', 1)[1]}",))
    pod = rendered.one("Pod", "-komt-13b-test-chat")
    c = pod["spec"]["containers"][0]
    svc = rendered.one("Service", "-komt-13b")["metadata"]["name"]
    argv = [a.replace(f"{svc}:", "127.0.0.1:") for a in c["command"] + c["args"]]
    argv[0] = str(Path(sys.executable).parent / "koserve")
    home = chart_stack["work"] / "home-test-pod"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], **_pod_env(c, home)}
    proc = subprocess.run(argv + ["--max-tokens", "12"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() and expected.startswith(proc.stdout.strip()[:8]), proc.stdout

    messages = [{"role": "user", "content": "안녕하세요"}]
    for model in ("ensemble", "tensorrt_llm_bls"):
        text = ChatClient(chart_stack["http"], "komt-13b", model=model).chat(messages, max_tokens=12).text
        assert text and expected.startswith(text[:8]), (model, text)

    async def async_chats():
        out = []
        for url in (chart_stack["grpc"], chart_stack["http"]):
            client = AsyncChatClient(url, "komt-13b")
            try:
                out.append((await client.chat(messages, max_tokens=12)).text)
            finally:
                await client.close()
        return out

    for text in asyncio.run(async_chats()):
        assert text and expected.startswith(text[:8]), text

    granted = {f"triton-grpc-protocol-{chart_stack['header']}": ADMIN_KEY}
    with grpcclient.InferenceServerClient(chart_stack["grpc"]) as client:
        for model in ("ensemble", "tensorrt_llm_bls", "tensorrt_llm"):
            from_metadata = _declared_from_metadata(client.get_model_metadata(model, as_json=True))
            from_config = _declared_inputs(client.get_model_config(model, headers=granted, as_json=True))
            assert from_metadata == from_config, model


def test_logging_settings_change_only_with_the_key(chart_stack):
    http, header = chart_stack["http"], chart_stack["header"]
    r = httpx.post(http + "/v2/logging", json={"log_verbose_level": 1}, headers={header: ADMIN_KEY}, timeout=10)
    assert r.status_code == 200 and r.json()["log_verbose_level"] == 1, r.text
    r = httpx.post(http + "/v2/logging", json={"log_verbose_level": 0}, headers={header: ADMIN_KEY}, timeout=10)
    assert r.status_code == 200 and r.json()["log_verbose_level"] == 0, r.text
    # Inference, health and metadata stay open (the gateway and tensorrt_llm_bls send no key).
    assert httpx.get(http + "/v2/health/ready", timeout=5).status_code == 200
    assert httpx.get(http + "/v2/models/ensemble", timeout=5).status_code == 200


def test_restricted_grpc_protocols_refuse_anonymous_callers(chart_stack):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    header = chart_stack["header"]
    client = grpcclient.InferenceServerClient(chart_stack["grpc"])
    try:
        for headers in (None, {header: ADMIN_KEY}, {f"triton-grpc-protocol-{header}": "wrong-key"}):
            with pytest.raises(InferenceServerException, match="This protocol is restricted"):
                client.update_log_settings({"log_verbose_level": 1}, headers=headers)
            with pytest.raises(InferenceServerException, match="This protocol is restricted"):
                client.get_model_repository_index(headers=headers)
            with pytest.raises(InferenceServerException, match="This protocol is restricted"):
                client.get_inference_statistics("ensemble", headers=headers)
            with pytest.raises(InferenceServerException, match="This protocol is restricted"):
                client.get_model_config("ensemble", headers=headers)
        # gRPC carries the key as metadata `triton-grpc-protocol-<header>` (Triton's prefix).
        granted = {f"triton-grpc-protocol-{header}": ADMIN_KEY}
        settings = client.update_log_settings({"log_verbose_level": 0}, headers=granted, as_json=True)
        assert "log_verbose_level" in str(settings)
        assert client.get_model_config("ensemble", headers=granted, as_json=True)["config"]["name"] == "ensemble"
        assert client.get_inference_statistics("ensemble", headers=granted, as_json=True)["model_stats"]
        # Metadata stays open: koserve clients read a model's inputs from it.
        assert client.get_model_metadata("ensemble", as_json=True)["inputs"]
        assert client.is_server_ready()
    finally:
        client.close()


def test_a_dead_stub_fails_the_chart_readiness_probe_and_the_pod_recovers(chart_stack):
    """kill -9 of the postprocessing stub: the Triton container's readinessProbe answers non-200 within seconds
    (Triton's own /v2/health/ready would stay 200), its livenessProbe stays 200 while koserve serve restarts
    tritonserver, then readiness returns and the gateway serves again. (Runs last: it restarts the module's server.)"""
    from koserve.server.health import stub_processes

    triton, server = chart_stack["triton"], chart_stack["server"]
    ready, live = _probe_url(triton, "readinessProbe"), _probe_url(triton, "livenessProbe")
    stubs = {s.instance: s.pid for s in stub_processes(server.pid)}
    assert "postprocessing_0_0" in stubs, stubs
    os.kill(stubs["postprocessing_0_0"], signal.SIGKILL)
    killed = time.monotonic()
    while httpx.get(ready, timeout=5).status_code == 200:
        assert time.monotonic() - killed < 15, "readiness still 200 15 s after a python stub died"
        time.sleep(0.2)
    unready_after = time.monotonic() - killed
    # Recovery: liveness never fails while koserve serve restarts tritonserver (a restart is not a reason to kill
    # the pod), and readiness comes back.
    while True:
        assert httpx.get(live, timeout=5).status_code == 200, "liveness failed during a recoverable restart"
        if httpx.get(ready, timeout=5).status_code == 200:
            break
        assert time.monotonic() - killed < 150, "readiness did not come back within 150 s"
        assert server.poll() is None, (chart_stack["work"] / "triton.log").read_text()[-3000:]
        time.sleep(0.5)
    print(f"chart readiness probe: not ready {unready_after:.1f} s after kill -9 of postprocessing, "
          f"ready again after {time.monotonic() - killed:.1f} s")
    assert "postprocessing_0_0" in {s.instance for s in stub_processes(server.pid)}
    gateway = chart_stack["gateway"]
    _wait_http(_probe_url(gateway, "readinessProbe"), chart_stack["gateway_proc"],
               chart_stack["work"] / "gateway.log", 30)
    r = httpx.post(chart_stack["gateway_url"] + "/v1/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": "komt-13b", "messages": [{"role": "user", "content": "다시 안녕"}], "max_tokens": 8})
    assert r.status_code == 200, r.text
