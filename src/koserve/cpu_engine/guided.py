"""Guided decoding in the CPU stand-in: xgrammar grammars compiled once per guide, token masks applied each step.

What TensorRT-LLM 1.2.1's C++ runtime does with ``GuidedDecodingConfig`` (``batch_manager/guidedDecoder.cpp``): a
``GrammarCompiler`` built from the tokenizer-info file, ``CompileJSONSchema(guide, any_whitespace=false)`` /
``CompileBuiltinJSONGrammar`` / regex / EBNF per request, one ``GrammarMatcher`` per sequence, and the next-token
bitmask applied to the logits before sampling. Compilation runs in a worker process and is bounded in time: a guide
that takes longer is refused and its worker killed (and the refusal remembered, so sending it again fails at once);
compiled grammars are cached. (Measured: a schema of 16 optional strings with ``maxLength`` takes about 9 s to
compile on this machine's cores; xgrammar expands each bounded string into a large automaton.)
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


def _python_executable() -> str:
    """A Python for the compile worker: inside Triton's stub ``sys.executable`` is the stub binary, not Python."""
    import shutil  # noqa: PLC0415
    import sys  # noqa: PLC0415

    name = Path(sys.executable).name
    if name.startswith("python"):
        return sys.executable
    found = shutil.which("python3") or shutil.which("python")
    if not found:
        raise ConfigError("guided decoding: no python3 on PATH for the grammar compile worker")
    return found


_WORKER_COMPILER = None


def _worker_init(info_path: str, vocab_size: int) -> None:
    import xgrammar as xgr  # noqa: PLC0415

    global _WORKER_COMPILER
    _WORKER_COMPILER = xgr.GrammarCompiler(load_tokenizer_info(info_path, vocab_size), max_threads=1,
                                           cache_enabled=False)


def _worker_compile(guide_type: str, guide: str) -> str:
    c = _WORKER_COMPILER
    if guide_type == "json":
        compiled = c.compile_builtin_json_grammar()
    elif guide_type == "json_schema":
        compiled = c.compile_json_schema(guide, any_whitespace=False)
    elif guide_type == "regex":
        compiled = c.compile_regex(guide)
    else:
        compiled = c.compile_grammar(guide)
    return compiled.serialize_json()


class GrammarCache:
    """Compiles guides with xgrammar's ``GrammarCompiler`` in a worker process, bounded in time, cached per guide.

    A guide that does not compile within ``timeout_s`` is refused and its worker killed (a thread could not be
    stopped, and would hold a core); the refusal is cached too, so sending the guide again fails at once. Compiled
    grammars come back serialized (``CompiledGrammar.serialize_json``) and are kept in an LRU of ``max_entries``.
    """

    def __init__(self, tokenizer_info, *, info_path: str | os.PathLike, timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
                 max_entries: int = DEFAULT_CACHE_SIZE, workers: int = 1):
        import xgrammar as xgr  # noqa: PLC0415

        self._xgr = xgr
        self.tokenizer_info = tokenizer_info
        self.vocab_size = tokenizer_info.vocab_size
        self.info_path = str(info_path)
        self.timeout_s = timeout_s
        self.max_entries = max_entries
        self.workers = workers
        self._pool = None
        self._warm = None  # the new worker's first (trivial) compile: its start-up is not a guide's compile time
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], object] = OrderedDict()  # compiled grammar or the error text
        self.compiles = 0  # cold compilations started (tests, benchmarks)

    def _executor(self):
        if self._pool is None:
            import multiprocessing  # noqa: PLC0415

            ctx = multiprocessing.get_context("spawn")
            ctx.set_executable(_python_executable())
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=ctx, initializer=_worker_init, initargs=(self.info_path, self.vocab_size))
            self._warm = self._pool.submit(_worker_compile, "regex", "a")
        return self._pool

    def start(self, timeout_s: float = 300.0) -> "GrammarCache":
        """Start the worker and wait until it is ready (model load time, not a request's)."""
        with self._lock:
            self._executor()
            warm = self._warm
        warm.result(timeout=timeout_s)
        return self

    def _kill_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def _remember(self, key, value) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, guide: GuidedDecoding):
        """The compiled grammar; raises InvalidRequestError naming the problem (bad guide, or over the time bound)."""
        key = guide.cache_key
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
        if found is None:
            with self._lock:
                self.compiles += 1
                pool = self._executor()
                warm = self._warm
                future = pool.submit(_worker_compile, guide.guide_type, guide.guide)
            try:
                if warm is not None and not warm.done():  # a replaced worker still starting: not this guide's time
                    warm.result(timeout=300)
                found = self._xgr.CompiledGrammar.deserialize_json(future.result(timeout=self.timeout_s),
                                                                   self.tokenizer_info)
            except concurrent.futures.TimeoutError:
                with self._lock:
                    self._kill_pool()
                found = (f"guided_decoding_guide ({guide.guide_type}) did not compile within the limit of "
                         f"{self.timeout_s:g} s")
            except concurrent.futures.process.BrokenProcessPool:
                with self._lock:
                    self._kill_pool()
                raise InvalidRequestError(
                    f"guided_decoding_guide ({guide.guide_type}): the grammar compile worker died; retry") from None
            except Exception as exc:  # noqa: BLE001 - xgrammar reports a bad guide as RuntimeError
                detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                found = f"guided_decoding_guide ({guide.guide_type}) cannot be compiled: {detail}"
            self._remember(key, found)
        if isinstance(found, str):
            raise InvalidRequestError(found)
        return found

    def matcher(self, guide: GuidedDecoding) -> "TokenMasker":
        return TokenMasker(self._xgr, self.get(guide), self.vocab_size)

    def shutdown(self) -> None:
        with self._lock:
            self._kill_pool()


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
