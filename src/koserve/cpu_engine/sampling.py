"""Next-token choice for one sequence: penalties, bad words, min length, temperature / top-k / top-p.

Order (as in TensorRT-LLM's sampling layers): penalties → bad words and min-length bans → greedy argmax, or
temperature → top-k → top-p → draw from the request's own seeded generator.
"""

from __future__ import annotations

from collections import Counter

import torch

from koserve.cpu_engine.types import EngineRequest


def request_generator(seed: int) -> torch.Generator:
    """A CPU generator for one request (torch seeds must fit in a signed 64-bit int)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
    return gen


def banned_bad_word_tokens(bad_words, sequence: list[int]) -> set[int]:
    """Tokens that would complete a bad word given the sequence so far (single-token words are always banned)."""
    banned: set[int] = set()
    for word in bad_words:
        prefix = word[:-1]
        if not prefix or (len(sequence) >= len(prefix) and tuple(sequence[-len(prefix):]) == tuple(prefix)):
            banned.add(word[-1])
    return banned


def apply_penalties(logits: torch.Tensor, req: EngineRequest, counts: Counter) -> torch.Tensor:
    """Repetition (multiplicative), presence and frequency (additive) penalties over ``counts`` (prompt + output)."""
    if not counts or (
        req.repetition_penalty == 1.0 and req.presence_penalty == 0.0 and req.frequency_penalty == 0.0
    ):
        return logits
    ids = torch.tensor(list(counts.keys()), dtype=torch.long)
    picked = logits[ids]
    if req.repetition_penalty != 1.0:
        p = req.repetition_penalty
        picked = torch.where(picked > 0, picked / p, picked * p)
    if req.presence_penalty != 0.0:
        picked = picked - req.presence_penalty
    if req.frequency_penalty != 0.0:
        freq = torch.tensor(list(counts.values()), dtype=logits.dtype)
        picked = picked - req.frequency_penalty * freq
    logits = logits.clone()
    logits[ids] = picked
    return logits


def choose_token(
    logits: torch.Tensor,
    req: EngineRequest,
    *,
    sequence: list[int],
    counts: Counter,
    num_generated: int,
    generator: torch.Generator,
) -> tuple[int, float]:
    """Pick the next token from 1-D ``logits``; returns ``(token, log_prob)``.

    The log prob is of the chosen token under the distribution after penalties, bans and temperature (before the
    top-k / top-p cut), like TensorRT-LLM's ``output_log_probs``.
    """
    logits = logits.float()
    vocab = logits.shape[-1]
    logits = apply_penalties(logits, req, counts)
    banned = banned_bad_word_tokens(req.bad_words, sequence) if req.bad_words else set()
    if num_generated < req.min_tokens:
        banned.update(req.end_ids)
    banned = {t for t in banned if 0 <= t < vocab}
    if banned:
        logits = logits.clone()
        logits[list(banned)] = float("-inf")

    if req.greedy:
        token = int(torch.argmax(logits))
        return token, float(torch.log_softmax(logits, dim=-1)[token])

    scaled = logits / req.temperature
    log_probs = torch.log_softmax(scaled, dim=-1)
    cut = scaled
    if req.top_k > 0 and req.top_k < vocab:
        kth = torch.topk(cut, req.top_k).values[-1]
        cut = torch.where(cut < kth, torch.full_like(cut, float("-inf")), cut)
    if 0.0 < req.top_p < 1.0:
        sorted_logits, order = torch.sort(cut, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the first token)
        drop = (torch.cumsum(probs, dim=-1) - probs) >= req.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        cut = torch.full_like(cut, float("-inf")).scatter(0, order, sorted_logits)
    probs = torch.softmax(cut, dim=-1)
    token = int(torch.multinomial(probs, 1, generator=generator))
    return token, float(log_probs[token])
