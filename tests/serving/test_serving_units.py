"""Serving logic outside Triton: request validation, preprocessing, per-request detokenization, repo rendering,
the tritonserver launcher (real server: readiness timeout, kill, shm cleanup) and the GPU mpirun command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from koserve.errors import ConfigError, InvalidRequestError
from koserve.fixtures import tiny_model_dir, tokenizer_dir
from koserve.triton_models.params import ServingLimits, parse_generation_request
from koserve.triton_models.postprocess import StreamRegistry, TextStream
from koserve.triton_models.preprocess import Preprocessor
from koserve.repo.render import RenderOptions, read_repo_info, render_repository
from koserve.triton_models.settings import ModelSettings
from koserve.server.tritonserver import TritonStartError, gpu_command, leaked_shm_regions
from koserve.cpu_engine.pytriton_server import ServerOptions, cpu_triton_server

KOREAN = "안녕하세요, 반갑습니다! 뷁똠햏 🤗\n다음 줄."


def settings(profile: str, family: str) -> ModelSettings:
    return ModelSettings(profile=profile, tokenizer_dir=tokenizer_dir(family),
                         limits=ServingLimits(max_batch_size=8, max_input_len=64, max_seq_len=128))


@pytest.fixture(scope="module", params=[("akallama-70b", "llama3"), ("komt-13b", "llama2")], ids=["llama3", "llama2"])
def pre(request):
    return Preprocessor(settings(*request.param))


def test_preprocessing_adds_bos_once(pre):
    bos = pre.tokenizer.bos_token
    once = pre.engine_inputs("안녕", 8).input_ids.tolist()
    given = pre.engine_inputs(bos + "안녕", 8).input_ids.tolist()
    assert once[0] == pre.tokenizer.bos_id and once.count(pre.tokenizer.bos_id) == 1
    assert given.count(pre.tokenizer.bos_id) == 1


def test_preprocessing_end_ids_and_stop_words_from_profile(pre):
    prepared = pre.engine_inputs("안녕", 8)
    gen = pre.profile.generation
    assert prepared.end_id == gen.end_ids[0]
    flat = prepared.stop_words_list[0].tolist()
    for extra in gen.end_ids[1:]:
        assert extra in flat  # AkaLlama: <|end_of_text|> as a one-token stop word
    if gen.stop_words:
        assert prepared.stop_words_list[1, 0] > 0


def test_preprocessing_limits_are_named(pre):
    with pytest.raises(InvalidRequestError, match="max input length is 64"):
        pre.engine_inputs("가나다 " * 100, 8)
    with pytest.raises(InvalidRequestError, match="max sequence length 128"):
        pre.engine_inputs("안녕", 200)


def test_preprocessing_model_outputs_have_batch_dim(pre):
    out = pre.preprocessing_outputs({
        "QUERY": np.array([["안녕".encode()]], dtype=object),
        "REQUEST_OUTPUT_LEN": np.array([[4]], dtype=np.int32),
        "TEMPERATURE": np.array([[0.5]], dtype=np.float32),
    })
    assert out["INPUT_ID"].shape[0] == 1 and out["STOP_WORDS_IDS"].shape[:2] == (1, 2)
    with pytest.raises(InvalidRequestError, match="temperature"):
        pre.preprocessing_outputs({
            "QUERY": np.array([["안녕".encode()]], dtype=object),
            "REQUEST_OUTPUT_LEN": np.array([[4]], dtype=np.int32),
            "TEMPERATURE": np.array([[-1.0]], dtype=np.float32),
        })


def test_parse_generation_request_defaults():
    req = parse_generation_request({"text_input": np.array([["안녕".encode()]], dtype=object),
                                    "max_tokens": np.array([[5]], dtype=np.int32)})
    assert req.text == "안녕" and req.max_tokens == 5 and not req.stream and req.exclude_input_in_output


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_registry_streams_exactly_per_request_id(pre, chunk):
    ids = pre.tokenizer.encode(KOREAN, add_special_tokens=False)
    expected = pre.tokenizer.decode(ids)
    reg = StreamRegistry(pre.tokenizer, ())
    a = [reg.decode("a", ids[i:i + chunk]) for i in range(0, len(ids), chunk)]
    # an interleaved second stream does not disturb the first
    b = [reg.decode("b", ids[i:i + 1]) for i in range(len(ids))]
    assert "".join(a) == expected and "".join(b) == expected
    assert all("\ufffd" not in p for p in a)


def test_registry_removes_profile_stop_words():
    tok = Preprocessor(settings("komt-13b", "llama2")).tokenizer
    ids = tok.encode("답입니다.\n### instruction: 다음", add_special_tokens=False)
    reg = StreamRegistry(tok, ("<|end|>", "<s>", "###"))
    text = "".join(reg.decode("x", [i]) for i in ids)
    assert text == "답입니다.\n"


def test_registry_evicts_idle_streams(pre):
    reg = StreamRegistry(pre.tokenizer, (), idle_timeout_s=0.0, max_streams=3)
    for k in range(10):
        reg.decode(f"id{k}", [100])
    assert len(reg) <= 3


def test_decode_without_id_emits_whole_characters(pre):
    ids = pre.tokenizer.encode(KOREAN, add_special_tokens=False)
    reg = StreamRegistry(pre.tokenizer, ())
    pieces = [reg.decode("", [i]) for i in ids]
    for p in pieces:
        assert "\ufffd" not in p
        p.encode("utf-8")


def test_text_stream_drops_an_unfinished_character(pre):
    ids = pre.tokenizer.encode("뷁", add_special_tokens=False)
    stream = TextStream(pre.tokenizer)
    text = stream.add(ids[:-1]) + stream.finish() if len(ids) > 1 else ""
    assert "\ufffd" not in text


# --- render ---------------------------------------------------------------------------------------------------
def test_render_cpu_repository(tmp_path):
    r = render_repository(RenderOptions(profile="komt-13b", tokenizer_dir=tokenizer_dir("llama2"), out=tmp_path / "r",
                                        cpu_model_dir=tiny_model_dir("llama2"), max_seq_len=256))
    assert r.models == ["ensemble", "postprocessing", "preprocessing", "tensorrt_llm", "tensorrt_llm_bls"]
    cfg = (r.path / "tensorrt_llm" / "config.pbtxt").read_text()
    assert 'name: "tensorrt_llm"' in cfg and 'backend: "python"' in cfg and "{{" not in cfg
    assert 'string_value: "255"' in (r.path / "preprocessing" / "config.pbtxt").read_text()  # max_input_len
    assert read_repo_info(r.path)["kind"] == "cpu"
    bls = (r.path / "tensorrt_llm_bls" / "config.pbtxt").read_text()
    assert 'name: "num_output_tokens"' in bls
    assert 'key: "stream_send_share"\n  value: { string_value: "0.25" }' in bls
    assert 'key: "stream_max_interval_us"\n  value: { string_value: "100000" }' in bls
    assert 'key: "stream_max_wait_gaps"\n  value: { string_value: "1.5" }' in bls
    with pytest.raises(ConfigError, match="already exists"):
        render_repository(RenderOptions(profile="komt-13b", tokenizer_dir=tokenizer_dir("llama2"),
                                        out=tmp_path / "r", replay=True))


def _fake_engine(path: Path, tp=2, pp=1, ranks=None):
    path.mkdir()
    cfg = {"version": "1.2.1", "pretrained_config": {"mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp}},
           "build_config": {"max_batch_size": 32, "max_input_len": 3072, "max_seq_len": 4096}}
    (path / "config.json").write_text(json.dumps(cfg))
    for r in range(tp * pp if ranks is None else ranks):
        (path / f"rank{r}.engine").write_bytes(b"")
    return path


def test_render_gpu_repository_reads_engine_limits(tmp_path):
    engine = _fake_engine(tmp_path / "engine")
    r = render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"),
                                        out=tmp_path / "r", engine_dir=engine))
    cfg = (r.path / "tensorrt_llm" / "config.pbtxt").read_text()
    assert 'backend: "tensorrtllm"' in cfg and "max_batch_size: 32" in cfg
    assert f'string_value: "{engine}"' in cfg and "enable_kv_cache_reuse" in cfg
    assert 'string_value: "3072"' in (r.path / "tensorrt_llm_bls" / "config.pbtxt").read_text()
    assert r.world_size == 2 and r.kind == "gpu"


def test_render_errors_are_clear(tmp_path):
    engine = _fake_engine(tmp_path / "engine")
    tok = tokenizer_dir("llama3")
    with pytest.raises(ConfigError, match="disagrees with the engine's max_seq_len 4096"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tok, out=tmp_path / "a",
                                        engine_dir=engine, max_seq_len=8192))
    with pytest.raises(ConfigError, match="exactly one of"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tok, out=tmp_path / "b",
                                        engine_dir=engine, replay=True))
    with pytest.raises(ConfigError, match="rank1.engine"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tok, out=tmp_path / "c",
                                        engine_dir=_fake_engine(tmp_path / "e2", ranks=1)))
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tmp_path, out=tmp_path / "d",
                                        replay=True))
    with pytest.raises(ConfigError, match=r"bls_stream_send_share must be in \[0, 1\], got 1.5"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tok, out=tmp_path / "f", replay=True,
                                        bls_stream_send_share=1.5))
    with pytest.raises(ConfigError, match=r"bls_stream_max_wait_gaps must be in \[0, 1000\], got -1"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tok, out=tmp_path / "g", replay=True,
                                        bls_stream_max_wait_gaps=-1))
    with pytest.raises(ConfigError, match="wrong tokenizer"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama2"),
                                        out=tmp_path / "e", replay=True))


# --- launcher ---------------------------------------------------------------------------------------------------
def test_gpu_command_follows_trtllm_launch_pattern(tmp_path):
    cmd = gpu_command(tmp_path, 4, shm_prefix="p", extra_args=("--log-verbose=1",))
    parts = " ".join(cmd).split(" : ")
    assert cmd[0] == "mpirun" and len(parts) == 4
    assert "--http-port=8000" in parts[0] and "--log-verbose=1" in parts[0]
    for rank, part in enumerate(parts[1:], start=1):
        assert "--model-control-mode=explicit" in part and "--load-model=tensorrt_llm" in part
        assert "--allow-http=false" in part and "--allow-grpc=false" in part and "--allow-metrics=false" in part
        assert f"shm-region-prefix-name=p{rank}_" in part and "--http-port" not in part


def test_render_cli_sets_the_bls_stream_options(tmp_path, capsys):
    from koserve.cli import main

    out = tmp_path / "r"
    assert main(["repo", "render", "--profile", "komt-13b", "--tokenizer", str(tokenizer_dir("llama2")), "--replay",
                 "--out", str(out), "--bls-stream-send-share", "0.5", "--bls-stream-max-interval-us", "20000",
                 "--bls-stream-max-wait-gaps", "0"]) == 0
    assert "rendered CPU repository" in capsys.readouterr().out
    bls = (out / "tensorrt_llm_bls" / "config.pbtxt").read_text()
    assert 'key: "stream_send_share"\n  value: { string_value: "0.5" }' in bls
    assert 'key: "stream_max_interval_us"\n  value: { string_value: "20000" }' in bls
    assert 'key: "stream_max_wait_gaps"\n  value: { string_value: "0.0" }' in bls
    # an option left out keeps the render default
    assert "max_queue_delay_microseconds: 1000" in (out / "postprocessing" / "config.pbtxt").read_text()


def test_serve_cli_prints_gpu_command(tmp_path, capsys):
    from koserve.cli import main

    engine = _fake_engine(tmp_path / "engine")
    render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"),
                                    out=tmp_path / "r", engine_dir=engine))
    assert main(["serve", "--repo", str(tmp_path / "r"), "--print-command", "--", "--log-info=false"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mpirun --allow-run-as-root ") and " -x PATH " in out  # -x: ranks on other nodes
    assert "-n 1 /opt/tritonserver/bin/tritonserver" in out
    assert out.count("-n 1") == 2 and "--log-info=false" in out


def test_server_that_never_gets_ready_is_killed_and_cleaned(tmp_path):
    model = tmp_path / "repo" / "hang"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 0\n'
        'input [{name: "x" data_type: TYPE_INT32 dims: [1]}]\noutput [{name: "y" data_type: TYPE_INT32 dims: [1]}]\n')
    (model / "1" / "model.py").write_text(
        "import time\nclass TritonPythonModel:\n    def initialize(self, args):\n        time.sleep(3600)\n")
    opts = ServerOptions(tmp_path / "repo")
    server = cpu_triton_server(opts)
    with pytest.raises(TritonStartError, match="not ready after 8 s"):
        server.start(timeout=8)
    assert not server.is_alive()
    assert leaked_shm_regions(opts.shm_prefix) == []
    deadline = time.monotonic() + 5  # its python stubs are gone too (a killed stub can take a moment to exit)
    while _live_processes_with(opts.shm_prefix) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_processes_with(opts.shm_prefix) == []


def _live_processes_with(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids
