"""Micro-benchmark: IncrementalDetokenizer and StopStringMatcher cost per token on Korean output.

Run with ``python scripts/bench_text.py`` or ``koserve bench text``. Ids are fed one at a time, as a streaming engine
produces them; the figure must not grow with the output length.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from dataclasses import dataclass

from koserve.text.detokenizer import IncrementalDetokenizer
from koserve.text.stop_strings import StopStringMatcher
from koserve.text.tokenizer import TextTokenizer

DEFAULT_LENGTHS = (128, 1024, 8192)
STOP_STRINGS = ("###", "<|end|>", "사용자:")

# Our own sample sentences: everyday Korean, numbers, punctuation, a little English and emoji, line breaks.
_SENTENCES = (
    "안녕하세요! 오늘은 서울의 날씨가 맑고 기온은 영상 12도 정도로 예상됩니다.",
    "한국어 문장을 토큰 단위로 나누면 한 글자가 여러 개의 토큰으로 쪼개지기도 합니다.",
    "김치찌개를 끓일 때는 잘 익은 김치와 돼지고기를 먼저 볶아 주면 국물이 훨씬 깊어집니다.",
    "회의는 다음 주 화요일 오후 3시에 3층 대회의실에서 진행될 예정입니다.",
    "이 모델은 사용자의 질문에 친절하고 정확하게 답변하도록 학습되었습니다.",
    "지하철 2호선은 출근 시간에 매우 붐비므로 조금 일찍 출발하는 것이 좋습니다.",
    "프로그래밍 언어로는 Python과 Rust를 주로 사용하며, 성능이 중요한 부분은 Rust로 작성합니다.",
    "제주도 여행을 계획하고 있다면 봄철 유채꽃이 피는 시기를 추천합니다 🌼",
    "첫째, 문제를 정확히 이해합니다. 둘째, 가능한 해결책을 나열합니다. 셋째, 가장 좋은 방법을 고릅니다.",
    "똠얌꿍이나 뷁, 얗 같은 드문 글자는 바이트 단위 토큰으로 표현될 가능성이 높습니다.",
    "요약하자면, 스트리밍 출력에서는 글자가 깨지지 않도록 불완전한 바이트를 잠시 보류해야 합니다.",
    "감사합니다. 더 궁금한 점이 있으면 언제든지 물어보세요 😊",
)


def korean_ids(tokenizer: TextTokenizer, length: int, seed: int = 0) -> list[int]:
    """``length`` ids of Korean prose (sentences drawn with a fixed seed), without special tokens."""
    rng = random.Random(seed)
    ids: list[int] = []
    while len(ids) < length:
        paragraph = " ".join(rng.choice(_SENTENCES) for _ in range(rng.randint(2, 5)))
        ids.extend(tokenizer.encode(paragraph + "\n\n", add_special_tokens=False))
    return ids[:length]


@dataclass(frozen=True)
class BenchRow:
    family: str
    tokens: int
    chars: int
    detokenizer_us: float  # median over timed blocks
    stop_matcher_us: float
    detokenizer_best_us: float  # fastest block: least disturbed by other work on a shared machine
    stop_matcher_best_us: float


BLOCK = 128  # tokens per timed block


def _time_detokenizer(tokenizer: TextTokenizer, ids: list[int]) -> tuple[list[float], list[str]]:
    """µs per token of each block of :data:`BLOCK` consecutive ids (one stream throughout), and the deltas."""
    detok = IncrementalDetokenizer(tokenizer)
    add = detok.add
    clock = time.perf_counter_ns
    deltas: list[str] = []
    per_token: list[float] = []
    for start in range(0, len(ids), BLOCK):
        block = ids[start : start + BLOCK]
        t0 = clock()
        for i in block:
            deltas.append(add(i))
        if start + BLOCK >= len(ids):
            deltas.append(detok.finish())
        per_token.append((clock() - t0) / 1000 / len(block))
    return per_token, deltas


def _time_matcher(deltas: list[str]) -> list[float]:
    """µs per token of feeding the per-token deltas to a StopStringMatcher, by block of :data:`BLOCK` tokens."""
    matcher = StopStringMatcher(STOP_STRINGS)
    feed = matcher.feed
    clock = time.perf_counter_ns
    per_token: list[float] = []
    n_tokens = len(deltas) - 1  # the last delta is finish()'s
    for start in range(0, n_tokens, BLOCK):
        block = deltas[start : start + BLOCK] if start + BLOCK < n_tokens else deltas[start:]
        t0 = clock()
        for d in block:
            feed(d)
        if start + BLOCK >= n_tokens:
            matcher.finish()
        per_token.append((clock() - t0) / 1000 / min(BLOCK, n_tokens - start))
    return per_token


def run_bench(tokenizers: dict[str, TextTokenizer], lengths=DEFAULT_LENGTHS, repeats: int = 7) -> list[BenchRow]:
    """µs per token for each tokenizer and output length: median (and minimum) over all blocks of :data:`BLOCK`
    tokens of all ``repeats`` runs. Per-block timing keeps a time slice lost to another process on a shared
    machine from skewing a whole run; a cost that grew with the output would show in the later blocks.
    """
    rows = []
    for family, tokenizer in tokenizers.items():
        cases = {length: korean_ids(tokenizer, length) for length in lengths}
        expected = {length: tokenizer.decode(ids) for length, ids in cases.items()}
        detok_us: dict[int, list[float]] = {length: [] for length in lengths}
        matcher_us: dict[int, list[float]] = {length: [] for length in lengths}
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(repeats):
                for length, ids in cases.items():
                    us, deltas = _time_detokenizer(tokenizer, ids)
                    if "".join(deltas) != expected[length]:
                        raise AssertionError(f"{family}: streamed text differs from decode(ids)")
                    detok_us[length].extend(us)
                    matcher_us[length].extend(_time_matcher(deltas))
        finally:
            if gc_was_enabled:
                gc.enable()
        for length in lengths:
            rows.append(BenchRow(
                family, length, len(expected[length]),
                statistics.median(detok_us[length]), statistics.median(matcher_us[length]),
                min(detok_us[length]), min(matcher_us[length]),
            ))
    return rows


def format_table(rows: list[BenchRow]) -> str:
    lines = [
        "| tokenizer | output tokens | characters | detokenizer µs/token, median (best) "
        "| stop matcher µs/token, median (best) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.family} | {r.tokens} | {r.chars} | {r.detokenizer_us:.2f} ({r.detokenizer_best_us:.2f}) "
            f"| {r.stop_matcher_us:.2f} ({r.stop_matcher_best_us:.2f}) |"
        )
    return "\n".join(lines)


def main(families=("llama3", "llama2"), lengths=DEFAULT_LENGTHS, repeats: int = 7) -> str:
    """Load the fixture tokenizers, run the benchmark and return the Markdown table."""
    from koserve.fixtures import tokenizer_dir
    from koserve.text.tokenizer import load_tokenizer

    tokenizers = {family: load_tokenizer(tokenizer_dir(family)) for family in families}
    return format_table(run_bench(tokenizers, lengths, repeats))
