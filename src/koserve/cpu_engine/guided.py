"""Guided decoding in the CPU stand-in: xgrammar grammars compiled once per guide, token masks applied each step.

What TensorRT-LLM 1.2.1's C++ runtime does with ``GuidedDecodingConfig`` (``batch_manager/guidedDecoder.cpp``): a
``GrammarCompiler`` built from the tokenizer-info file, ``CompileJSONSchema(guide, any_whitespace=false)`` /
``CompileBuiltinJSONGrammar`` / regex / EBNF per request, one ``GrammarMatcher`` per sequence, and the next-token
bitmask applied to the logits before sampling. Compilation runs in a worker thread and is bounded in time: a guide
that takes longer is refused (and remembered, so sending it again fails at once); compiled grammars are cached.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

from koserve.errors import ConfigError, InvalidRequestError
from koserve.guided.spec import GuidedDecoding

DEFAULT_COMPILE_TIMEOUT_S = 10.0
DEFAULT_CACHE_SIZE = 256


def load_tokenizer_info(path: str | os.PathLike, vocab_size: int):
    """xgrammar's ``TokenizerInfo`` from NVIDIA's tokenizer-info file, padded to the model's ``vocab_size``."""
    import xgrammar as xgr  # noqa: PLC0415

    path = Path(path)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        encoded_vocab, tokenizer_str, stops = info["encoded_vocab"], info["tokenizer_str"], info["stop_token_ids"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"xgrammar tokenizer info {path} is unreadable: {type(exc).__name__}: {exc}") from None
    meta = xgr.TokenizerInfo._detect_metadata_from_hf(tokenizer_str)  # what the C++ backend's xgrammar detects
    return xgr.TokenizerInfo(
        encoded_vocab, vocab_type=meta["vocab_type"], vocab_size=max(vocab_size, len(encoded_vocab)),
        stop_token_ids=stops, add_prefix_space=meta["add_prefix_space"],
    )


class GrammarCache:
    """Compiles guides with xgrammar's ``GrammarCompiler``, bounded in time, cached per guide (LRU)."""

    def __init__(self, tokenizer_info, *, timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
                 max_entries: int = DEFAULT_CACHE_SIZE):
        import xgrammar as xgr  # noqa: PLC0415

        self._xgr = xgr
        self.tokenizer_info = tokenizer_info
        self.vocab_size = tokenizer_info.vocab_size
        self.timeout_s = timeout_s
        self.max_entries = max_entries
        self._compiler = xgr.GrammarCompiler(tokenizer_info, max_threads=1, cache_enabled=False)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="koserve-xgrammar")
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], concurrent.futures.Future] = OrderedDict()
        self.compiles = 0  # cold compilations started (tests, benchmarks)

    def _compile(self, guide: GuidedDecoding):
        c = self._compiler
        if guide.guide_type == "json":
            return c.compile_builtin_json_grammar()
        if guide.guide_type == "json_schema":
            return c.compile_json_schema(guide.guide, any_whitespace=False)
        if guide.guide_type == "regex":
            return c.compile_regex(guide.guide)
        return c.compile_grammar(guide.guide)

    def get(self, guide: GuidedDecoding):
        """The compiled grammar; raises InvalidRequestError naming the problem (bad guide, or over the time bound)."""
        key = guide.cache_key
        with self._lock:
            future = self._entries.get(key)
            if future is None:
                self.compiles += 1
                future = self._pool.submit(self._compile, guide)
                self._entries[key] = future
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            raise InvalidRequestError(
                f"guided_decoding_guide ({guide.guide_type}) did not compile within the limit of {self.timeout_s:g} s"
            ) from None
        except Exception as exc:  # noqa: BLE001 - xgrammar reports a bad guide as RuntimeError
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise InvalidRequestError(
                f"guided_decoding_guide ({guide.guide_type}) cannot be compiled: {detail}"
            ) from None

    def matcher(self, guide: GuidedDecoding) -> "TokenMasker":
        return TokenMasker(self._xgr, self.get(guide), self.vocab_size)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class TokenMasker:
    """One sequence's grammar state: masks logits to the tokens the grammar allows next, follows chosen tokens."""

    def __init__(self, xgr, compiled, vocab_size: int):
        self._xgr = xgr
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits):
        """``logits`` (1-D float tensor) with every token the grammar forbids set to -inf (in place)."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        width = logits.shape[-1]
        self._xgr.apply_token_bitmask_inplace(logits, self._bitmask, vocab_size=width)
        return logits

    def accept(self, token: int) -> None:
        if not self._matcher.accept_token(token):
            raise RuntimeError(f"token {token} was chosen but the grammar does not allow it")

    @property
    def terminated(self) -> bool:
        """The grammar is complete and its stop token was accepted."""
        return self._matcher.is_terminated()
