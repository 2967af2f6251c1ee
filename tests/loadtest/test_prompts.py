"""Prompt sets: the Korean sets, chat rendering with the profile's template, synthetic lengths."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from koserve.errors import ConfigError
from koserve.loadtest.prompts import (
    LENGTHS,
    TASKS,
    ChatPromptSource,
    LengthSampler,
    SyntheticPromptSource,
    corpus_text,
    load_prompt_set,
)


def test_prompt_sets_cover_every_task_at_every_length():
    for length in LENGTHS:
        prompts = load_prompt_set(length)
        assert {p.task for p in prompts} == set(TASKS), length
        assert len({p.id for p in prompts}) == len(prompts)
        for p in prompts:
            text = p.messages[-1]["content"]
            assert sum("가" <= ch <= "힣" for ch in text) >= 8, p.id  # Korean prompts
    assert len(load_prompt_set("all")) == sum(len(load_prompt_set(n)) for n in LENGTHS)


def test_prompt_lengths_grow_from_short_to_long(token_counter):
    count = token_counter("akallama-70b")
    means = [statistics.mean(count(p.messages[-1]["content"]) for p in load_prompt_set(n)) for n in LENGTHS]
    assert means[0] < 40 < means[1] < 150 < means[2]


def test_unknown_prompt_set_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="short, all"):
        load_prompt_set("nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    with pytest.raises(ConfigError, match="role 'user'"):
        load_prompt_set(str(bad))


def test_chat_source_renders_with_the_profile_template_and_is_seeded():
    from koserve.chat import render_prompt
    from koserve.profiles import load_profile

    profile = load_profile("komt-13b")
    prompts = load_prompt_set("short")

    def source(seed):
        return ChatPromptSource(prompts, render=lambda m: render_prompt(profile, m), seed=seed,
                                osl=LengthSampler(32, rng=random.Random(seed)))

    def order(seed):
        src = source(seed)
        return [src.next().prompt_id for _ in range(len(prompts))]

    assert sorted(order(1)) == sorted(p.id for p in prompts)  # one pass visits every prompt once
    assert order(1) == order(1) and order(1) != order(2)
    first = source(1).next()
    assert first.text.startswith("### instruction: ") and first.text.endswith("### Response:")
    assert first.max_tokens == 32


def test_synthetic_prompts_have_the_target_input_length(token_counter):
    counter = token_counter("akallama-70b")
    corpus = corpus_text(load_prompt_set("all"))

    def source(seed, stddev=0.0):
        rng = random.Random(seed)
        return SyntheticPromptSource(corpus, isl=LengthSampler(200, stddev, rng=rng),
                                     osl=LengthSampler(64, 16, rng=rng), seed=seed, counter=counter)

    fixed = source(3)
    reqs = [fixed.next() for _ in range(20)]
    # decoding a window of 200 ids and encoding it again gives 200 ids (±2 where a cut splits a character)
    assert all(abs(r.input_tokens - 200) <= 2 for r in reqs), [r.input_tokens for r in reqs]
    assert statistics.mean(r.input_tokens for r in reqs) == pytest.approx(200, abs=1)
    assert len({r.text for r in reqs}) == 20
    osl = [r.max_tokens for r in reqs]
    assert 40 < statistics.mean(osl) < 90 and statistics.pstdev(osl) > 5
    assert source(3).next().text == reqs[0].text  # seeded: the same text again
    normal = source(5, stddev=50)
    lengths = [normal.next().input_tokens for _ in range(60)]
    assert 150 < statistics.mean(lengths) < 250 and statistics.pstdev(lengths) > 20


def test_length_sampler_is_clipped_and_validated():
    rng = random.Random(0)
    sampler = LengthSampler(10, 100, cap=50, rng=rng)
    values = [sampler.sample() for _ in range(500)]
    assert min(values) >= 1 and max(values) <= 50
    with pytest.raises(ConfigError, match=">= 1"):
        LengthSampler(0, rng=rng)
