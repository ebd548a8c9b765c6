"""The host-side scheduler alone: admission, limits, prefill planning, release."""

from __future__ import annotations

import pytest

from gemma_server.config import EngineConfig
from gemma_server.datatypes import GenerationRequest
from gemma_server.engine.scheduler import Scheduler
from gemma_server.errors import ContextTooLong, InvalidRequest, Overloaded

CONFIG = EngineConfig(max_batch_size=4, max_total_tokens=256, max_input_length=200,
                      max_batch_prefill_tokens=64, prefill_buckets=(16, 64),
                      prefill_batch_sizes=(1, 4), max_waiting=3)


def req(rid: str, prompt: int = 10, max_new: int = 5, n: int = 1) -> GenerationRequest:
    return GenerationRequest(rid, tuple(range(5, 5 + prompt)), max_new, n=n)


def test_compiled_shapes_respect_the_budget():
    assert CONFIG.prefill_shapes() == [(1, 16), (1, 64), (4, 16)]


def test_limits_are_checked_before_queuing():
    s = Scheduler(CONFIG)
    with pytest.raises(ContextTooLong, match="limit is 200"):
        s.enqueue(req("a", prompt=201), None, 0)
    with pytest.raises(ContextTooLong, match="256-token limit"):
        s.enqueue(req("a", prompt=200, max_new=57), None, 0)
    with pytest.raises(InvalidRequest, match="n must be at most 4"):
        s.enqueue(req("a", n=5), None, 0)
    for i in range(4 + 3):  # 4 will get the free slots, 3 wait
        s.enqueue(req(f"q{i}"), None, 0)
    with pytest.raises(Overloaded):
        s.enqueue(req("late"), None, 0)


def test_admission_is_in_order_and_waits_for_enough_slots():
    s = Scheduler(CONFIG)
    s.enqueue(req("a", n=3), None, 0)
    s.enqueue(req("b", n=2), None, 0)
    s.enqueue(req("c"), None, 0)
    assert [a.request.request_id for a in s.admit()] == ["a"]  # b needs 2, 1 is free
    assert len(s.free_slots) == 1 and len(s.waiting) == 2


def test_short_prompts_share_a_prefill_and_long_ones_are_chunked():
    s = Scheduler(CONFIG)
    for rid, length in [("a", 10), ("b", 12), ("c", 150)]:
        s.enqueue(req(rid, prompt=length), None, 0)
    list(s.admit())
    plan = s.plan_prefill()
    assert plan is not None and (plan.rows, plan.bucket) == (4, 16)
    assert [c.admitted.request.request_id for c in plan.chunks] == ["a", "b"]
    for chunk in plan.chunks:
        s.prefilled(chunk)
    lengths = []
    while (plan := s.plan_prefill()) is not None:
        assert (plan.rows, plan.bucket) == (1, 64) and len(plan.chunks) == 1
        lengths.append(plan.chunks[0].length)
        s.prefilled(plan.chunks[0])
    assert lengths == [64, 64, 22]


def test_removing_a_request_frees_only_its_own_slots():
    s = Scheduler(CONFIG)
    s.enqueue(req("a", n=2), None, 0)
    s.enqueue(req("b"), None, 0)
    admitted = list(s.admit())
    for a in admitted:
        s.start_decoding(a)
    first = admitted[0]
    assert s.finish_choice(first, first.choices[0]) is False
    s.enqueue(req("c"), None, 0)
    (c,) = list(s.admit())  # takes the slot choice 0 of "a" released
    s.start_decoding(c)
    s.remove("a", lambda r, sink: None)
    assert c.slots[0] in s.decoding and sorted(s.free_slots) == sorted(
        set(range(4)) - {c.slots[0], admitted[1].slots[0]})
