"""Text in, engine inputs out: what the ``preprocessing`` model and the BLS do before calling the engine.

Profile-aware: the primary end id and the extra end ids (AkaLlama ends a turn with ``<|eot_id|>`` but a document with
``<|end_of_text|>``: the second becomes a one-token stop word), the profile's stop words always apply (on top of the
request's), and BOS is added once (never twice when the prompt text already starts with it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from koserve.errors import InvalidRequestError
from koserve.serving.params import (
    GenerationRequest,
    SamplingParams,
    ServingLimits,
    check_batch_one,
    sampling_from,
    scalar,
    text_value,
    validate_lengths,
    validate_token_id,
    word_values,
)
from koserve.serving.settings import ModelSettings
from koserve.text import bad_words_list, stop_words_list


def _nonempty(word_list: np.ndarray) -> np.ndarray:
    """TensorRT-LLM word lists are never zero-width on the wire: "no words" is ``[[0], [-1]]``."""
    if word_list.shape[1] == 0:
        return np.array([[0], [-1]], dtype=np.int32)
    return word_list.astype(np.int32, copy=False)


@dataclass(frozen=True)
class EngineInputs:
    """Token-level inputs for ``tensorrt_llm`` (batch 1; arrays without the batch dimension)."""

    input_ids: np.ndarray  # int32 [L]
    max_tokens: int
    end_id: int
    pad_id: int
    stop_words_list: np.ndarray  # int32 [2, N]
    bad_words_list: np.ndarray  # int32 [2, N]

    @property
    def input_len(self) -> int:
        return int(self.input_ids.shape[0])


class Preprocessor:
    """Tokenizes prompts and builds stop/bad word lists for one profile + tokenizer + engine limits."""

    # preprocessing-model tensor names for the sampling options it validates (mapped from the ensemble inputs)
    SAMPLING_TENSORS = {
        "temperature": "TEMPERATURE",
        "top_k": "RUNTIME_TOP_K",
        "top_p": "RUNTIME_TOP_P",
        "length_penalty": "LEN_PENALTY",
        "repetition_penalty": "REPETITION_PENALTY",
        "presence_penalty": "PRESENCE_PENALTY",
        "frequency_penalty": "FREQUENCY_PENALTY",
        "min_length": "MIN_LENGTH",
        "beam_width": "BEAM_WIDTH",
        "random_seed": "RANDOM_SEED",
    }

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.profile = settings.model_profile
        self.tokenizer = settings.tokenizer
        self.limits: ServingLimits = settings.limits
        gen = self.profile.generation
        self.default_stop_words: tuple[str, ...] = tuple(gen.stop_words)
        vocab = self.tokenizer.vocab_size
        for token_id in [*gen.end_ids, gen.pad_id]:
            if token_id >= vocab:
                raise InvalidRequestError(
                    f"profile {self.profile.name}: token id {token_id} is outside the tokenizer's vocabulary "
                    f"[0, {vocab}) — wrong tokenizer for this profile?"
                )
        self._default_lists: dict[tuple, np.ndarray] = {}

    # -- pieces ------------------------------------------------------------------------------------------
    def encode_prompt(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True)

    def stop_words(self, request_words: tuple[str, ...]) -> tuple[str, ...]:
        """The profile's stop words followed by the request's (deduplicated)."""
        return tuple(dict.fromkeys([*self.default_stop_words, *request_words]))

    def _stop_list(self, words: tuple[str, ...], extra_end_ids: tuple[int, ...]) -> np.ndarray:
        key = (words, extra_end_ids)
        cached = self._default_lists.get(key)
        if cached is None:
            cached = _nonempty(stop_words_list(self.tokenizer, list(words), end_ids=extra_end_ids))
            if len(self._default_lists) < 256:
                self._default_lists[key] = cached
        return cached

    def engine_inputs(
        self,
        text: str,
        max_tokens: int,
        *,
        stop_words: tuple[str, ...] = (),
        bad_words: tuple[str, ...] = (),
        end_id: int | None = None,
        pad_id: int | None = None,
    ) -> EngineInputs:
        """Validate and tokenize one prompt; errors name the limit."""
        if not text.strip():
            raise InvalidRequestError("text_input is empty: send a non-empty prompt")
        if max_tokens <= 0:
            raise InvalidRequestError(f"max_tokens must be >= 1, got {max_tokens}")
        vocab = self.tokenizer.vocab_size
        validate_token_id(end_id, "end_id", vocab)
        validate_token_id(pad_id, "pad_id", vocab)
        gen = self.profile.generation
        if end_id is None:
            end_id = gen.end_ids[0]
            extra_end_ids = tuple(gen.end_ids[1:])
        else:
            extra_end_ids = ()
        ids = self.encode_prompt(text)
        validate_lengths(len(ids), max_tokens, self.limits)
        return EngineInputs(
            input_ids=np.asarray(ids, dtype=np.int32),
            max_tokens=max_tokens,
            end_id=int(end_id),
            pad_id=int(gen.pad_id if pad_id is None else pad_id),
            stop_words_list=self._stop_list(self.stop_words(stop_words), extra_end_ids),
            bad_words_list=_nonempty(bad_words_list(self.tokenizer, list(bad_words))) if bad_words else _nonempty(
                np.zeros((2, 0), dtype=np.int32)
            ),
        )

    def for_request(self, request: GenerationRequest) -> EngineInputs:
        return self.engine_inputs(
            request.text,
            request.max_tokens,
            stop_words=request.stop_words,
            bad_words=request.bad_words,
            end_id=request.end_id,
            pad_id=request.pad_id,
        )

    # -- the preprocessing model ---------------------------------------------------------------------------
    def preprocessing_outputs(
        self, inputs: dict[str, np.ndarray | None], request_id: str = ""
    ) -> dict[str, np.ndarray]:
        """NVIDIA-compatible ``preprocessing``: QUERY, REQUEST_OUTPUT_LEN, STOP_WORDS_DICT, BAD_WORDS_DICT, END_ID,
        PAD_ID (+ sampling inputs, validated only) → INPUT_ID, REQUEST_INPUT_LEN, STOP_WORDS_IDS, BAD_WORDS_IDS,
        OUT_END_ID, OUT_PAD_ID, each with a batch dimension of 1.

        Plus ``STREAM`` → ``OUT_STREAMING`` (the engine's ``streaming``): true only when the client asked to stream
        **and** set a request id. ``postprocessing`` can follow a stream only by its request id; without one the
        engine answers in one response, which is decoded exactly (rather than streaming pieces from which a
        character split across two responses would be lost)."""
        check_batch_one({k: v for k, v in inputs.items() if v is not None})
        text = text_value(inputs.get("QUERY"), "text_input")
        max_tokens = scalar(inputs.get("REQUEST_OUTPUT_LEN"), "max_tokens", "int")
        if max_tokens is None:
            raise InvalidRequestError("input 'max_tokens' is required")
        sampling: SamplingParams = sampling_from(inputs, self.SAMPLING_TENSORS)
        del sampling  # validated; the ensemble passes the values to the engine itself
        prepared = self.engine_inputs(
            text,
            max_tokens,
            stop_words=word_values(inputs.get("STOP_WORDS_DICT"), "stop_words"),
            bad_words=word_values(inputs.get("BAD_WORDS_DICT"), "bad_words"),
            end_id=scalar(inputs.get("END_ID"), "end_id", "int"),
            pad_id=scalar(inputs.get("PAD_ID"), "pad_id", "int"),
        )
        stream = scalar(inputs.get("STREAM"), "stream", "bool")
        return {
            "OUT_STREAMING": np.array([[bool(stream) and bool(request_id)]], dtype=np.bool_),
            "INPUT_ID": prepared.input_ids[None, :],
            "REQUEST_INPUT_LEN": np.array([[prepared.input_len]], dtype=np.int32),
            "STOP_WORDS_IDS": prepared.stop_words_list[None, :, :],
            "BAD_WORDS_IDS": prepared.bad_words_list[None, :, :],
            "OUT_END_ID": np.array([[prepared.end_id]], dtype=np.int32),
            "OUT_PAD_ID": np.array([[prepared.pad_id]], dtype=np.int32),
        }
