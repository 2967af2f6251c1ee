#!/usr/bin/env python3
"""The CPU cost of guided decoding in the stand-in (real xgrammar 0.1.32 masks), in one run.

Printed:
- compile time per schema: cold (a fresh ``GrammarCompiler`` per schema) and cached (the same guide again);
- the masks' CPU cost, µs per token: ``fill_next_token_bitmask`` + ``apply_token_bitmask_inplace`` over the
  model's 128,256 logits + ``accept_token``, measured inside the hf engine's decoding of real requests;
- tokens/s of the hf engine (tiny random-weight Llama-3, AkaLlama's tokenizer) at ``--streams`` concurrent requests,
  with a JSON schema and without one, same run, alternating ``--repeat`` times.

The engine runs in this process (no Triton): the figures are the engine's own, not the serving stack's. The model is
tiny, so the mask (whose cost scales with the vocabulary, not the model) is a large share here; on a GPU the C++
runtime builds the same masks on the CPU while the GPU runs the model.

Usage: python scripts/bench_guided.py [--streams 16] [--tokens 48] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from koserve.cpu_engine import guided as guided_mod  # noqa: E402
from koserve.cpu_engine.guided import GrammarCache, load_tokenizer_info  # noqa: E402
from koserve.cpu_engine.hf import HFEngine  # noqa: E402
from koserve.cpu_engine.types import EngineRequest  # noqa: E402
from koserve.errors import InvalidRequestError  # noqa: E402
from koserve.fixtures import tiny_model_dir, tokenizer_dir  # noqa: E402
from koserve.guided import GuidedDecoding  # noqa: E402
from koserve.guided.tokenizer_info import write_tokenizer_info  # noqa: E402

END_IDS = (128009, 128001)
SCHEMAS = {
    "enum": {"enum": ["예", "아니요", "모르겠어요"]},
    "person": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                                "age": {"type": "integer", "minimum": 0, "maximum": 120}},
               "required": ["name", "age"], "additionalProperties": False},
    "order": {"type": "object", "properties": {
        "order_id": {"type": "integer", "minimum": 1, "maximum": 99999},
        "items": {"type": "array", "maxItems": 3, "items": {
            "type": "object", "properties": {"sku": {"type": "string", "maxLength": 4},
                                             "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
            "required": ["sku", "qty"], "additionalProperties": False}}},
        "required": ["order_id", "items"], "additionalProperties": False},
    "8-bounded-strings": {"type": "object", "properties": {f"f{i}": {"type": "string", "maxLength": 8}
                                                          for i in range(8)}},
    "40-long-bounded-strings": {"type": "object", "properties": {f"f{i}": {"type": "string", "maxLength": 64}
                                                           for i in range(40)}},  # over the 10 s bound even on an idle machine: refused
}


class TimedMasker(guided_mod.TokenMasker):
    """TokenMasker that adds up its own time (mask + accept)."""

    seconds = 0.0
    tokens = 0

    def mask(self, logits):
        t = time.perf_counter()
        try:
            return super().mask(logits)
        finally:
            TimedMasker.seconds += time.perf_counter() - t

    def accept(self, token):
        t = time.perf_counter()
        try:
            super().accept(token)
        finally:
            TimedMasker.seconds += time.perf_counter() - t
            TimedMasker.tokens += 1


def run_batch(engine, prompt, streams, tokens, guide):
    reqs = [EngineRequest(input_ids=prompt, max_new_tokens=tokens, end_ids=(END_IDS[0],), stop_words=((END_IDS[1],),),
                          seed=i, temperature=1.0, guided=guide, min_tokens=0 if guide else tokens)
            for i in range(streams)]
    start = time.perf_counter()
    handles = [engine.submit(r) for r in reqs]
    made = sum(len(h.result(timeout=600).token_ids) for h in handles)
    return made, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        info_path = write_tokenizer_info(tokenizer_dir("llama3"), END_IDS, Path(tmp) / "info.json")
        info = load_tokenizer_info(info_path, 128256)
        print("compile time per schema (xgrammar 0.1.32, any_whitespace=False, 1 thread):")
        for name, schema in SCHEMAS.items():
            cache = GrammarCache(info, info_path=info_path).start()
            guide = GuidedDecoding("json_schema", json.dumps(schema, ensure_ascii=False))
            t = time.perf_counter()
            try:
                cache.get(guide)
            except InvalidRequestError as exc:
                print(f"  {name:18s} refused after {time.perf_counter() - t:.1f} s: {exc}")
                cache.shutdown()
                continue
            cold = time.perf_counter() - t
            t = time.perf_counter()
            cache.get(GuidedDecoding("json_schema", guide.guide))
            warm = time.perf_counter() - t
            cache.shutdown()
            print(f"  {name:18s} cold {cold * 1000:8.1f} ms   cached {warm * 1e6:7.1f} us")

        guided_mod.TokenMasker = TimedMasker  # GrammarCache.matcher builds these (engine code unchanged otherwise)
        GrammarCache.matcher = lambda self, g: TimedMasker(self._xgr, self.get(g), self.vocab_size)
        engine = HFEngine(tiny_model_dir("llama3"), max_batch_size=args.streams, max_queue_size=args.streams * 2,
                          num_threads=1, guided_decoding=(str(info_path), 10.0))
        try:
            prompt = tuple(range(1000, 1024))
            guide = GuidedDecoding("json_schema", json.dumps(SCHEMAS["order"]))
            run_batch(engine, prompt, 2, 4, guide)  # warm up (compile, torch)
            plain, guided = [], []
            TimedMasker.seconds, TimedMasker.tokens = 0.0, 0
            for _ in range(args.repeat):
                made, secs = run_batch(engine, prompt, args.streams, args.tokens, None)
                plain.append(made / secs)
                made, secs = run_batch(engine, prompt, args.streams, args.tokens, guide)
                guided.append(made / secs)
        finally:
            engine.shutdown()
    per_token = TimedMasker.seconds / max(1, TimedMasker.tokens) * 1e6
    print(f"mask CPU cost: {per_token:.0f} us per token (fill bitmask + apply to 128,256 logits + accept; "
          f"{TimedMasker.tokens} tokens)")
    p, g = statistics.median(plain), statistics.median(guided)
    print(f"hf engine, {args.streams} streams, up to {args.tokens} tokens each (median of {args.repeat}):")
    print(f"  without a schema {p:7.1f} tokens/s")
    print(f"  with the 'order' schema {g:7.1f} tokens/s  ({g / p:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
