"""Which optional outputs the ensemble declares (issue 19: each mapped output costs CPU on every streamed response).

Default: ``text_output``, the log probs, ``batch_index`` (NVIDIA's ``end_to_end_grpc_client.py --batch-inputs`` asks
for it) and ``num_input_tokens`` / ``num_output_tokens``; ``koserve repo render --ensemble-all-outputs``: every output
of NVIDIA's ensemble (v0.19.0 and 1.x, ``tests/serving/data/nvidia-ensemble-outputs.json``, read from NVIDIA's files).
Rendered with the real CLI, parsed with Triton's protobuf, and served by the real tritonserver.
"""

from __future__ import annotations

import json
import queue
import uuid
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from koserve.cli import main as koserve
from koserve.fixtures import tokenizer_dir

NVIDIA = json.loads((Path(__file__).parent / "data" / "nvidia-ensemble-outputs.json").read_text(encoding="utf-8"))
NVIDIA_OUTPUTS = {name: (dtype, dims) for name, dtype, dims in NVIDIA["outputs"]["v0.19"] + NVIDIA["outputs"]["1.x_adds"]}
# outputs NVIDIA's client asks for only with an option koserve refuses (logits, perf metrics, several sequences)
FOR_REFUSED_FEATURES = {name for option in NVIDIA["refused_by_koserve"] for name in NVIDIA["client_requests"][option]}


def nvidia_dtype(dtype: str) -> str:
    return "TYPE_FP32" if dtype == "${logits_datatype}" else dtype


def render(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "repo"
    rc = koserve(["repo", "render", "--profile", "akallama-70b", "--tokenizer", str(tokenizer_dir("llama3")),
                  "--replay", "--out", str(out), *extra])
    assert rc == 0
    return out


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def declared(cfg) -> dict:
    return {o.name: (model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output}


def test_default_ensemble_declares_what_koserve_sends_and_nvidia_clients_ask_for_in_accepted_requests(tmp_path):
    repo = render(tmp_path)
    ensemble = parse(repo / "ensemble" / "config.pbtxt")
    outs = declared(ensemble)
    # NVIDIA's outputs, less those only features koserve refuses produce; each as NVIDIA declares it
    assert set(outs) == set(NVIDIA_OUTPUTS) - FOR_REFUSED_FEATURES
    for name, (dtype, dims) in outs.items():
        assert (dtype, dims) == (nvidia_dtype(NVIDIA_OUTPUTS[name][0]), NVIDIA_OUTPUTS[name][1]), name
    # every output the client asks for in a request koserve accepts is there
    accepted = {k: v for k, v in NVIDIA["client_requests"].items() if k not in NVIDIA["refused_by_koserve"]}
    assert {name for names in accepted.values() for name in names} <= set(outs)
    # and every declared output is produced by a step (none mapped that is not declared)
    produced = {v for step in ensemble.ensemble_scheduling.step for v in step.output_map.values()}
    assert set(outs) <= produced
    info = json.loads((repo / "koserve_repo.json").read_text(encoding="utf-8"))
    assert info["options"]["ensemble_all_outputs"] is False


def test_all_outputs_option_declares_every_output_of_nvidias_ensemble(tmp_path):
    outs = declared(parse(render(tmp_path, "--ensemble-all-outputs") / "ensemble" / "config.pbtxt"))
    assert set(NVIDIA_OUTPUTS) <= set(outs)
    for name, (dtype, dims) in NVIDIA_OUTPUTS.items():
        assert outs[name] == (nvidia_dtype(dtype), dims), name


def stream(url: str, outputs: list[str]) -> list:
    client = grpcclient.InferenceServerClient(url)
    done: queue.Queue = queue.Queue()
    inputs = []
    for name, value in {"text_input": np.array([["안녕?"]], dtype=object),
                        "max_tokens": np.array([[8]], dtype=np.int32),
                        "stream": np.array([[True]], dtype=bool)}.items():
        tensor = grpcclient.InferInput(name, value.shape, "BYTES" if value.dtype == object else
                                       {np.int32: "INT32", np.bool_: "BOOL"}[value.dtype.type])
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    try:
        client.start_stream(callback=partial(lambda q, result, error: q.put(error or result), done),
                            stream_timeout=60)
        client.async_stream_infer("ensemble", inputs, request_id=f"outputs-{uuid.uuid4().hex[:8]}",
                                  outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
        client.stop_stream()
    finally:
        client.close()
    return [done.get() for _ in range(done.qsize())]


def text_of(results) -> str:
    assert results and not any(isinstance(r, Exception) for r in results), results
    return "".join(r.as_numpy("text_output")[0].decode() for r in results if r.as_numpy("text_output") is not None)


@pytest.mark.server
def test_an_undeclared_output_is_refused_by_name_and_the_option_serves_it(triton_servers, replay_text_file):
    lean = triton_servers("akallama-70b", "replay", replay_text_file=replay_text_file)
    refused = stream(lean.grpc_url, ["text_output", "context_logits"])
    assert len(refused) == 1 and isinstance(refused[0], Exception)
    assert "context_logits" in str(refused[0]) and "ensemble" in str(refused[0])
    expected = text_of(stream(lean.grpc_url, ["text_output", "batch_index"]))  # still serving
    assert expected
    full = triton_servers("akallama-70b", "replay", replay_text_file=replay_text_file, ensemble_all_outputs=True)
    results = stream(full.grpc_url, ["text_output", "context_logits", "kv_cache_reused_blocks"])
    assert text_of(results) == expected
    assert all(r.as_numpy("context_logits") is None for r in results)  # declared, never sent (as documented)
