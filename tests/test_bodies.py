"""Request bodies built as bytes (client/bodies.py, the prompt encoders in client/prompts.py) say exactly
what ``Endpoint.body`` says: same JSON value, same key order, for every endpoint and option."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentperf_kit.agents import RequestPlan
from agentperf_kit.client.bodies import body_bytes, target_prompt_tokens
from agentperf_kit.client.http import Endpoint, encode_body
from agentperf_kit.client.prompts import (
    MARKER_TOKENS,
    chat_filler_json,
    chat_messages,
    completion_prompt,
    completion_prompt_json,
)
from agentperf_kit.trajectories.model import Turn

MARKER = "98765432109876543210987654321012"


def _plan(n_in: int, n_out: int = 7, *, marker: str = MARKER, messages=None, tools=None) -> RequestPlan:
    turn = Turn(0, 0, n_in, n_out, messages=messages, tools=tools)
    return RequestPlan(0, 0, "t", 0, turn, 0, marker, True, 0.0)


def _same(ep: Endpoint, plan: RequestPlan) -> None:
    raw = body_bytes(ep, plan)
    want = ep.body(plan)
    got = json.loads(raw)
    assert got == want
    assert list(got) == list(want)  # key order too
    if plan.turn.messages is None:
        assert target_prompt_tokens(ep, plan) == plan.turn.input_tokens + MARKER_TOKENS


@pytest.mark.parametrize("api", ["chat", "completions"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"continuous_usage": True},
        {"force_output_fields": False},
        {"extra_body": {"top_k": 1, "temperature": 0.5}},
        {"extra_body": {"ignore_eos": False, "min_tokens": 3}},  # replaces tail keys: same as dict update
        {"extra_body": {"max_tokens": 5}},  # replaces a head key: the plain path
        {"force_output_fields": False, "extra_body": {}},
        {"tokens_per_word": 1.3, "overhead_tokens": 21.5},
        {"model": 'mödel "quoted"'},
    ],
)
def test_body_bytes_equal_the_dict_body(api, options):
    ep = Endpoint("http://127.0.0.1:1/v1", options.pop("model", "m"), api=api, **options)
    for n_in in (0, 1, 15, 16, 17, 1000, 26000):
        _same(ep, _plan(n_in))


def test_recorded_messages_and_tools_go_through_unchanged():
    msgs = [{"role": "user", "content": 'say "hi"\n\u00e9'}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    for api in ("chat", "completions"):
        ep = Endpoint("http://127.0.0.1:1/v1", "m", api=api)
        _same(ep, _plan(50, messages=msgs, tools=tools))
        _same(ep, _plan(50, tools=tools))
    ep = Endpoint("http://127.0.0.1:1/v1", "m")
    assert body_bytes(ep, _plan(50, messages=msgs)) == encode_body(ep.body(_plan(50, messages=msgs)))
    assert target_prompt_tokens(ep, _plan(50, messages=msgs)) is None


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 3000),
    marker=st.text("0123456789", min_size=32, max_size=32),
    lo=st.integers(0, 500),
    span=st.integers(1, 200_000),
    tpw=st.floats(0.5, 2.0),
    overhead=st.one_of(st.none(), st.floats(0, 60)),
)
def test_prompt_encoders_match_the_lists(n, marker, lo, span, tpw, overhead):
    plan = _plan(n, marker=marker)
    rng = (lo, lo + span)
    assert json.loads(completion_prompt_json(plan, token_id_range=rng)) == completion_prompt(
        plan, token_id_range=rng
    )
    got = json.loads(chat_filler_json(plan, tokens_per_word=tpw, overhead_tokens=overhead))
    assert got == chat_messages(plan, tokens_per_word=tpw, overhead_tokens=overhead)


def test_a_later_turn_of_a_phase_starts_with_the_previous_prompt():
    first, later = _plan(500), _plan(900)
    a, b = json.loads(completion_prompt_json(first)), json.loads(completion_prompt_json(later))
    assert b[: len(a)] == a and len(b) == 900 + MARKER_TOKENS
    ca = json.loads(chat_filler_json(first))[0]["content"]
    cb = json.loads(chat_filler_json(later))[0]["content"]
    assert cb.startswith(ca)


def test_prompts_wrap_around_the_shared_stream():
    import itertools

    from agentperf_kit.client import prompts

    near_end = next(
        f"{x:032d}" for x in itertools.count(10**31) if prompts._offset(f"{x:032d}") > prompts.STREAM_LEN - 40
    )
    for n in (100, prompts.STREAM_LEN + 100, 2 * prompts.STREAM_LEN + 7):
        plan = _plan(n, marker=near_end)
        ids = completion_prompt(plan)
        assert len(ids) == n + MARKER_TOKENS
        assert json.loads(completion_prompt_json(plan)) == ids
        msgs = chat_messages(plan)
        assert json.loads(chat_filler_json(plan)) == msgs
        assert len(msgs[0]["content"].split("\n", 1)[1].split(" ")) == n
    shorter = completion_prompt(_plan(50, marker=near_end))
    assert completion_prompt(_plan(5000, marker=near_end))[:66] == shorter  # prefix across the wrap
