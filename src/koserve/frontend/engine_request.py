"""A client request as ``tensorrt_llm`` inputs, and the text state of its answer: pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from koserve.client.wire import WireRequest
from koserve.errors import ConfigError
from koserve.profiles import ModelProfile
from koserve.text.tokenizer import TextTokenizer
from koserve.triton_models.bls import engine_tensors
from koserve.triton_models.params import GenerationRequest, ServingLimits, parse_generation_request
from koserve.triton_models.postprocess import TextStream
from koserve.triton_models.preprocess import Preprocessor
from koserve.triton_models.settings import ModelSettings, model_parameters


def limits_from_model_config(model_config: Mapping[str, Any] | str, where: str) -> ServingLimits:
    """The engine limits a koserve-rendered ``preprocessing`` (or ``tensorrt_llm_bls``) config carries."""
    params = model_parameters(model_config)
    try:
        return ServingLimits(max_batch_size=int(params.get("max_batch_size") or 0),
                             max_input_len=int(params["max_input_len"]), max_seq_len=int(params["max_seq_len"]))
    except (KeyError, ValueError):
        raise ConfigError(f"{where} has no max_input_len / max_seq_len parameters (not rendered by koserve?): give "
                          "the engine's limits as max_input_len= and max_seq_len=") from None


@dataclass(frozen=True)
class DirectRequest:
    """One request ready for the engine: its tensors (with the batch dimension), the outputs to ask for, the
    parsed request and the stop strings its text is cut at (the profile's, then the request's)."""

    request: GenerationRequest
    tensors: dict[str, np.ndarray]
    outputs: list[str]
    stop_strings: tuple[str, ...]
    prompt_tokens: int


class EngineFrontend:
    """Builds engine requests for one profile + tokenizer + engine limits, as the ``tensorrt_llm_bls`` model does."""

    def __init__(self, profile: ModelProfile, tokenizer: TextTokenizer, limits: ServingLimits):
        settings = ModelSettings(profile=profile.name, tokenizer_dir=Path("."), limits=limits)
        # the objects we already hold, in place of the settings' lazy loads by name and folder
        settings.__dict__["model_profile"] = profile
        settings.__dict__["tokenizer"] = tokenizer
        self.preprocessor = Preprocessor(settings)
        self.tokenizer = tokenizer
        self.limits = limits

    def prepare(self, wire: WireRequest) -> DirectRequest:
        """Validate, tokenize and build the engine tensors; errors are
        :class:`~koserve.errors.InvalidRequestError` worded as the serving side words them."""
        inputs = {t.name: t.as_numpy(True) for t in wire.tensors.values()}
        req = parse_generation_request(inputs)
        prepared = self.preprocessor.for_request(req)
        tensors, outputs = engine_tensors(req, prepared, engine_streams=True)
        return DirectRequest(req, tensors, outputs, self.preprocessor.stop_words(req.stop_words), prepared.input_len)

    def text_stream(self, direct: DirectRequest) -> TextStream:
        """The request's exact text state: token ids in, whole characters out, stop strings cut across deltas."""
        return TextStream(self.tokenizer, direct.stop_strings)
