"""``hf`` mode: a Hugging Face Llama-architecture checkpoint run with transformers + torch on CPU.

Each active request keeps its own KV cache and is advanced one token per scheduler round (interleaved decoding,
batch 1 per forward pass). That keeps every request's logits independent of what else runs, so a seeded request
gives the same tokens alone or among others.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from koserve.errors import ConfigError, InvalidRequestError
from koserve.cpu_engine.sampling import choose_token, request_generator
from koserve.cpu_engine.scheduler import Engine, Sequence
from koserve.cpu_engine.types import EngineRequest, FinishReason


GUIDED_DECODING_OFF = (
    "guided decoding is off in this tensorrt_llm (parameter guided_decoding_backend is empty): render the model "
    "repository with --guided-decoding"
)


class _HFState:
    __slots__ = ("cache", "counts", "generator", "masker", "next_input", "sequence")

    def __init__(self, req: EngineRequest, masker=None):
        self.cache = None
        self.masker = masker  # koserve.cpu_engine.guided.TokenMasker when the request has a guide
        self.sequence = list(req.input_ids)
        self.counts = Counter(self.sequence)
        self.generator = request_generator(req.seed)
        self.next_input: list[int] = list(req.input_ids)  # the prompt first (prefill), then one token at a time


class HFEngine(Engine):
    """Runs ``AutoModelForCausalLM`` from a local checkpoint folder (never downloads)."""

    name = "hf"

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        dtype: str = "float32",
        num_threads: int | None = None,
        guided_decoding: tuple[str, float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        import torch  # noqa: PLC0415 - heavy imports only where the hf engine is used
        from transformers import AutoModelForCausalLM  # noqa: PLC0415
        from transformers.utils import logging as hf_logging  # noqa: PLC0415

        hf_logging.disable_progress_bar()  # no "Loading weights" bars in Triton's log

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise ConfigError(f"hf engine: {path} is not a Hugging Face checkpoint folder (no config.json)")
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ConfigError(f"hf engine: unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
        if num_threads:
            torch.set_num_threads(num_threads)
        self._torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
        self.model.eval()
        self.vocab_size = int(self.model.config.vocab_size)
        self.max_position_embeddings = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        self.model_dir = path
        self.grammars = None  # koserve.cpu_engine.guided.GrammarCache when guided decoding is on
        if guided_decoding is not None:
            from koserve.cpu_engine.guided import GrammarCache, load_tokenizer_info  # noqa: PLC0415

            info_path, timeout_s = guided_decoding
            self.grammars = GrammarCache(load_tokenizer_info(info_path, self.vocab_size), info_path=info_path,
                                         timeout_s=timeout_s).start()

    def validate(self, request: EngineRequest) -> None:
        if request.guided is not None:
            if self.grammars is None:
                raise InvalidRequestError(GUIDED_DECODING_OFF)
            self.grammars.get(request.guided)  # compiled (bounded in time) and cached before the request queues
        bad = [t for t in request.input_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"input_ids hold {len(bad)} token id(s) outside the vocabulary [0, {self.vocab_size}), e.g. {bad[0]}"
            )
        total = len(request.input_ids) + request.max_new_tokens
        if self.max_position_embeddings and total > self.max_position_embeddings:
            raise InvalidRequestError(
                f"input length {len(request.input_ids)} + request_output_len {request.max_new_tokens} = {total} "
                f"exceeds the model's max_position_embeddings {self.max_position_embeddings}"
            )

    def _step(self, seq: Sequence) -> bool:
        torch = self._torch
        st = seq.state
        if st is None:
            guided = seq.request.guided
            st = seq.state = _HFState(seq.request, self.grammars.matcher(guided) if guided is not None else None)
        with torch.inference_mode():
            ids = torch.tensor([st.next_input], dtype=torch.long)
            out = self.model(input_ids=ids, past_key_values=st.cache, use_cache=True)
            st.cache = out.past_key_values
            logits = out.logits[0, -1]
        if st.masker is not None:
            logits = st.masker.mask(logits.float().clone())
        token, log_prob = choose_token(
            logits,
            seq.request,
            sequence=st.sequence,
            counts=st.counts,
            num_generated=len(seq.generated),
            generator=st.generator,
        )
        st.sequence.append(token)
        st.counts[token] += 1
        st.next_input = [token]
        if st.masker is not None:
            st.masker.accept(token)
        seq.accept(token, log_prob)
        if st.masker is not None and st.masker.terminated:
            # the grammar is complete: its stop token ended it (emitted if it is a stop word, as any other)
            seq.finish(FinishReason.END_ID)
        return True

    def shutdown(self, timeout: float = 10.0) -> None:
        super().shutdown(timeout)
        if self.grammars is not None:
            self.grammars.shutdown()
