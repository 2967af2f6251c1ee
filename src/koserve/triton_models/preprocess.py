"""Text in, engine inputs out: what the ``preprocessing`` model and the BLS do before calling the engine.

Profile-aware: the primary end id and the extra end ids (AkaLlama ends a turn with ``<|eot_id|>`` but a document with
``<|end_of_text|>``: the second becomes a one-token stop word), the profile's stop words always apply (on top of the
request's), and BOS is added once (never twice when the prompt text already starts with it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from koserve.errors import InvalidRequestError
from koserve.triton_models.params import (
    PREPROCESSING_TENSORS,
    SEED_LIMIT,
    GenerationRequest,
    ServingLimits,
    parse_generation_request,
    validate_lengths,
    validate_token_id,
)
from koserve.triton_models.settings import ModelSettings
from koserve.triton_models.startsignal import StreamStart
from koserve.text import bad_words_list, stop_words_list
from koserve.text.stop_words import parse_word_list

_seeds = random.SystemRandom()


def draw_seed(given: int | None) -> int:
    """The sampling seed for a request: the client's, or a fresh random one. TensorRT-LLM's default seed is fixed
    (0), so without this every unseeded request at temperature > 0 would sample the same text."""
    return given if given is not None else _seeds.randrange(SEED_LIMIT)


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

    # the preprocessing model's inputs: each request field under its preprocessing name, and NVIDIA's IMAGES
    INPUT_TENSORS = (*dict.fromkeys(PREPROCESSING_TENSORS.values()), "IMAGES")

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
    def prepare(self, inputs: dict[str, np.ndarray | None], request_id: str = "") -> tuple[dict, StreamStart]:
        """NVIDIA-compatible ``preprocessing`` (v0.19 and the 1.2.1 triton_backend template): QUERY,
        REQUEST_OUTPUT_LEN, STOP_WORDS_DICT, BAD_WORDS_DICT, END_ID, PAD_ID → INPUT_ID, REQUEST_INPUT_LEN,
        DECODER_INPUT_ID (``[[pad_id]]``), REQUEST_DECODER_INPUT_LEN (``[[1]]``), STOP_WORDS_IDS, BAD_WORDS_IDS,
        EMBEDDING_BIAS (``[1, 0]``), REQUEST_OUTPUT_LEN, OUT_END_ID, OUT_PAD_ID, OUT_PROMPT_TABLE_EXTRA_IDS (zeros),
        each with a batch dimension of 1, as NVIDIA's text path emits them (its multimodal outputs only come with
        images, which koserve refuses).

        koserve additions: the sampling inputs (validated before the engine; ``min_length``/``min_tokens`` and
        ``random_seed``/``seed`` are the same option) → OUT_MIN_TOKENS and OUT_SEED (the client's seed, else a fresh
        random one: :func:`draw_seed`), OUT_EXCLUDE_INPUT_IN_OUTPUT (the client's, default true; true whenever it asked
to stream); ``STREAM`` → ``OUT_STREAMING`` (the engine's ``streaming``): true only when
        the client asked to stream **and** set a request id (``postprocessing`` follows a stream by its id; without
        one the engine answers in one response, decoded exactly). Also returns the :class:`StreamStart` that
        ``postprocessing`` needs to see the request's end."""
        images = inputs.get("IMAGES")
        if images is not None and np.asarray(images).size:
            raise InvalidRequestError("input 'IMAGES' is not supported by koserve (text models only): leave it out")
        req = parse_generation_request(inputs, PREPROCESSING_TENSORS)
        prepared = self.for_request(req)
        streaming = req.stream and bool(request_id)
        # a streamed answer never starts with the prompt (TensorRT-LLM streams new tokens only), also when it comes
        # in one response for want of a request id
        exclude = req.exclude_input_in_output or req.stream
        sampling = req.sampling
        n = prepared.input_len
        outputs = {
            "INPUT_ID": prepared.input_ids[None, :],
            "REQUEST_INPUT_LEN": np.array([[n]], dtype=np.int32),
            "DECODER_INPUT_ID": np.array([[prepared.pad_id]], dtype=np.int32),
            "REQUEST_DECODER_INPUT_LEN": np.array([[1]], dtype=np.int32),
            "BAD_WORDS_IDS": prepared.bad_words_list[None, :, :],
            "STOP_WORDS_IDS": prepared.stop_words_list[None, :, :],
            "EMBEDDING_BIAS": np.zeros((1, 0), dtype=np.float32),
            "REQUEST_OUTPUT_LEN": np.array([[prepared.max_tokens]], dtype=np.int32),
            "OUT_END_ID": np.array([[prepared.end_id]], dtype=np.int32),
            "OUT_PAD_ID": np.array([[prepared.pad_id]], dtype=np.int32),
            "OUT_PROMPT_TABLE_EXTRA_IDS": np.zeros((1, n), dtype=np.uint64),
            "OUT_STREAMING": np.array([[streaming]], dtype=np.bool_),
            "OUT_EXCLUDE_INPUT_IN_OUTPUT": np.array([[exclude]], dtype=np.bool_),
            "OUT_SEED": np.array([[draw_seed(sampling.random_seed)]], dtype=np.uint64),
        }
        if sampling.min_length is not None:  # absent: the engine's default
            outputs["OUT_MIN_TOKENS"] = np.array([[sampling.min_length]], dtype=np.int32)
        start = StreamStart(
            request_id=request_id,
            streaming=streaming,
            max_tokens=prepared.max_tokens,
            input_len=n,
            exclude_input_in_output=exclude,
            end_ids=(prepared.end_id,),
            stop_ids=tuple(tuple(w) for w in parse_word_list(prepared.stop_words_list, "stop_words_list")),
            stop_words=req.stop_words,
            return_num_input_tokens=req.return_num_input_tokens,
            return_num_output_tokens=req.return_num_output_tokens,
        )
        return outputs, start

    def preprocessing_outputs(self, inputs: dict[str, np.ndarray | None], request_id: str = "") -> dict:
        """The output tensors of :meth:`prepare`."""
        return self.prepare(inputs, request_id)[0]
