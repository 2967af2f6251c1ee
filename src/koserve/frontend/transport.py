"""The client transport of the direct engine path: one gRPC ``stream_infer`` per request to ``tensorrt_llm``.

It implements :class:`~koserve.client.transport.AsyncTransport`, so :class:`~koserve.client.AsyncChatClient`, its
stream state (stop strings, token counts and times, finish reasons) and the gateway run over it unchanged: the
request is tokenized here (:class:`~koserve.frontend.EngineFrontend`), each engine response's ``output_ids`` become
exact text here, and the pieces it yields carry their token counts. A stop string that matches ends the call early,
which stops the engine (TensorRT-LLM ``stop`` for the request id, then read to the final response: what
:class:`~koserve.client._grpc.AsyncGrpcTransport` does for every early end, client cancellations included).
"""

from __future__ import annotations

import asyncio
from typing import AsyncGenerator

import numpy as np

from koserve.client._grpc import AsyncGrpcTransport, _is_final, map_grpc_error
from koserve.client.errors import ServerError
from koserve.client.result import Piece
from koserve.client.wire import WireRequest
from koserve.errors import ConfigError, InvalidRequestError
from koserve.frontend.engine_request import EngineFrontend, limits_from_model_config
from koserve.profiles import ModelProfile
from koserve.text.tokenizer import TextTokenizer
from koserve.triton_models.params import ServingLimits
from koserve.triton_models.postprocess import tokens_of

LIMITS_MODELS = ("preprocessing", "tensorrt_llm_bls")  # koserve-rendered configs that carry the engine's limits


class AsyncEngineTransport:
    """Requests straight to the engine model ``engine`` of the Triton at ``grpc.url``.

    ``limits``: the engine's max input / sequence lengths; None: read once from the server's rendered
    ``preprocessing`` (or ``tensorrt_llm_bls``) model config."""

    protocol = "grpc"
    stops_on_close = True

    def __init__(self, grpc: AsyncGrpcTransport, profile: ModelProfile, tokenizer: TextTokenizer | None,
                 *, engine: str = "tensorrt_llm", limits: ServingLimits | None = None):
        if tokenizer is None:
            raise ConfigError("the direct engine path (target engine) tokenizes in the caller: give the model's "
                              "tokenizer folder (tokenizer=DIR)")
        self.grpc = grpc
        self.url = grpc.url
        self.profile, self.tokenizer, self.engine = profile, tokenizer, engine
        self._frontend = EngineFrontend(profile, tokenizer, limits) if limits else None
        self._lock = asyncio.Lock()

    async def frontend(self, deadline: float | None) -> EngineFrontend:
        if self._frontend is not None:
            return self._frontend
        async with self._lock:
            if self._frontend is None:
                self._frontend = EngineFrontend(self.profile, self.tokenizer, await self._server_limits())
        return self._frontend

    async def _server_limits(self) -> ServingLimits:
        from tritonclient.utils import InferenceServerException  # noqa: PLC0415

        client = self.grpc._get_client()
        failures = []
        for model in LIMITS_MODELS:
            try:
                config = await client.get_model_config(model, as_json=True, headers=self.grpc.headers or None,
                                                       client_timeout=self.grpc.connect_timeout)
            except InferenceServerException as exc:
                error = map_grpc_error(exc, self.url, model)
                if "UNAVAILABLE" in str(exc.status()):
                    raise error from None
                failures.append(f"{model}: {exc.message()}")
                continue
            return limits_from_model_config(config.get("config", config), f"model {model!r} at {self.url}")
        raise ConfigError(f"cannot read the engine's limits from Triton at {self.url} ({'; '.join(failures)}): give "
                          "them as max_input_len= and max_seq_len=")

    async def responses(self, model: str, request: WireRequest, deadline: float | None
                        ) -> AsyncGenerator[Piece, None]:
        """``model`` is ignored: every request goes to the engine."""
        frontend = await self.frontend(deadline)
        try:
            direct = frontend.prepare(request)
        except InvalidRequestError as exc:  # the serving side's words, as the ensemble and the BLS send them
            raise ServerError(str(exc), status="INVALID_ARGUMENT", server_message=str(exc)) from None
        _, batch = await self.grpc._model_info(self.engine, deadline)
        inputs = _infer_inputs(direct.tensors, batch)
        text = frontend.text_stream(direct)
        results = self.grpc.results(self.engine, inputs, request.request_id, deadline)
        try:
            async for result in results:
                out = result.as_numpy("output_ids")
                ids = np.zeros((0,), np.int32) if out is None else tokens_of(out, result.as_numpy("sequence_length"))
                delta = text.add(ids) if ids.size else ""
                final = _is_final(result)
                if final or text.stopped:  # the end, or a stop string matched: the engine is stopped on close
                    yield Piece(delta + text.finish(), int(ids.size))
                    return
                if ids.size:
                    yield Piece(delta, int(ids.size))
        finally:
            await results.aclose()

    async def stop_engine(self, engine: str, request_id: str, timeout: float = 2.0) -> bool:
        return await self.grpc.stop_engine(engine, request_id, timeout)

    async def ready(self, model: str, timeout: float = 2.0) -> bool:
        return await self.grpc.ready(self.engine, timeout)

    async def close(self) -> None:
        await self.grpc.close()


def _infer_inputs(tensors: dict[str, np.ndarray], batch: bool) -> list:
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    out = []
    for name, arr in tensors.items():
        arr = arr if batch else arr[0]
        inp = grpcclient.InferInput(name, list(arr.shape), _DATATYPES[arr.dtype.type])
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


_DATATYPES = {np.int32: "INT32", np.float32: "FP32", np.uint64: "UINT64", np.bool_: "BOOL", np.int64: "INT64",
              np.object_: "BYTES"}
