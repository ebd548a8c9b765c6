"""The engine end to end on a tiny checkpoint: correctness, invariance, seeds, lifecycle."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

import numpy as np
import pytest

from gemma_server.config import EngineConfig
from gemma_server.datatypes import (
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from gemma_server.engine.engine import Engine
from gemma_server.errors import ContextTooLong, InvalidRequest, Overloaded
from tests.conftest import backend_compilations, golden

NAME = "tiny-gemma2"
CONFIG = EngineConfig(max_batch_size=8, max_total_tokens=256, max_input_length=200,
                      max_batch_prefill_tokens=64, prefill_buckets=(16, 64),
                      prefill_batch_sizes=(1, 4), max_waiting=4)
_ids = itertools.count()


@pytest.fixture(scope="module")
def engine(tiny_model):
    model = tiny_model(NAME)
    eng = Engine(model.params, model.config, CONFIG)
    eng.start()
    yield eng
    eng.stop()


def request(prompt, max_new=10, n=1, logprobs=None, stop=(), **sampling) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(f"r{next(_ids)}", tuple(int(t) for t in prompt), max_new,
                             frozenset(stop), SamplingParams(**sampling), n=n,
                             logprobs=logprobs)


async def collect(engine, req, delay_first=0.0):
    """(tokens per choice, logprobs per choice, finish events)."""
    await asyncio.sleep(delay_first)
    tokens: dict[int, list[int]] = {}
    logprobs: dict[int, list[float]] = {}
    finishes: list[FinishEvent] = []
    async for event in engine.submit(req):
        if isinstance(event, TokenEvent):
            tokens.setdefault(event.choice, []).append(event.token_id)
            if event.logprob is not None:
                logprobs.setdefault(event.choice, []).append(event.logprob)
        else:
            finishes.append(event)
    return tokens, logprobs, finishes


def run(coro):
    return asyncio.run(coro)


def prompts() -> list[list[int]]:
    gold = golden(NAME)
    return [gold[f"ids_{i}"].tolist() for i in range(3)]


def test_greedy_equals_transformers_through_chunked_prefill(engine):
    gold = golden(NAME)
    for i, prompt in enumerate(prompts()):  # prompt 0 (102 tokens) takes two chunks
        tokens, logprobs, finishes = run(collect(engine, request(prompt, logprobs=0)))
        assert tokens[0] == gold[f"greedy_{i}"].tolist()
        assert finishes == [FinishEvent(0, "length", len(prompt), 10)]
        # The first token's log-probability is transformers' last-position one.
        expected = gold[f"logprobs_{i}"][-1][tokens[0][0]]
        assert abs(logprobs[0][0] - expected) < 1e-4


def _busy_workload(target: GenerationRequest):
    long_prompt, chat, short = prompts()
    others = [
        (request(chat, max_new=4, temperature=0.7, seed=1), 0.0),
        (request(short, max_new=30, temperature=1.2, top_k=5, seed=2), 0.0),
        (request(long_prompt[:40], max_new=3, top_p=0.5, temperature=1.0), 0.0),
        (request(chat[:7], max_new=20, n=2, temperature=0.9), 0.01),
        (request(long_prompt[10:80], max_new=6, repetition_penalty=1.3), 0.02),
        (request(short, max_new=25, frequency_penalty=0.5, presence_penalty=0.5), 0.05),
        (request(chat[3:], max_new=12, temperature=1.0, top_k=40, top_p=0.9), 0.08),
    ]
    return others, target


def test_batch_invariance_of_greedy_tokens_and_logprobs(engine):
    prompt = prompts()[1]
    alone, alone_lp, _ = run(collect(engine, request(prompt, max_new=20, logprobs=5)))

    async def busy():
        others, target = _busy_workload(request(prompt, max_new=20, logprobs=5))
        tasks = [collect(engine, r, delay) for r, delay in others]
        results = await asyncio.gather(collect(engine, target, 0.03), *tasks)
        return results[0]

    tokens, lps, finishes = run(busy())
    assert tokens[0] == alone[0]
    np.testing.assert_allclose(lps[0], alone_lp[0], atol=1e-4, rtol=0)
    assert finishes[0].reason == "length"


def test_seeded_sampling_is_reproducible_in_any_batch(engine):
    prompt = prompts()[2]
    seeded = request(prompt, max_new=16, temperature=1.0, top_p=0.95, seed=9_999_999_999)
    alone, _, _ = run(collect(engine, seeded))

    async def busy():
        others, target = _busy_workload(
            request(prompt, max_new=16, temperature=1.0, top_p=0.95, seed=9_999_999_999))
        results = await asyncio.gather(collect(engine, target, 0.02),
                                       *[collect(engine, r, d) for r, d in others])
        return results[0]

    assert run(busy())[0][0] == alone[0]
    other_seed, _, _ = run(collect(engine, request(prompt, max_new=16, temperature=1.0,
                                                   top_p=0.95, seed=12345)))
    assert other_seed[0] != alone[0]


def test_n_choices_share_a_prefill_and_sample_independently(engine):
    prompt = prompts()[2]
    before = engine.steps["prefill"]
    tokens, _, finishes = run(collect(engine, request(prompt, max_new=8, n=3,
                                                      temperature=1.0, seed=7)))
    assert engine.steps["prefill"] == before + 1
    assert sorted(f.choice for f in finishes) == [0, 1, 2]
    assert len({tuple(t) for t in tokens.values()}) == 3
    single, _, _ = run(collect(engine, request(prompt, max_new=8, temperature=1.0, seed=7)))
    assert single[0] == tokens[0]


def test_stop_ids_end_a_choice_without_emitting_the_stop_token(engine):
    gold = golden(NAME)
    greedy = gold["greedy_1"].tolist()
    stop = greedy[3]
    tokens, _, finishes = run(collect(engine, request(prompts()[1], stop=(stop,))))
    assert tokens[0] == greedy[:greedy.index(stop)]
    assert finishes[0].reason == "stop" and finishes[0].completion_tokens == len(tokens[0]) + 1
    ignored, _, finishes = run(collect(engine, request(prompts()[1], stop=(stop,),
                                                       ignore_eos=True)))
    assert ignored[0] == greedy and finishes[0].reason == "length"


def test_no_compilation_after_warm_up(engine):
    with backend_compilations() as compiles:
        async def mixed():
            long_prompt, chat, short = prompts()
            work = [
                request(long_prompt, max_new=5, temperature=0.3, seed=5, logprobs=3),
                request(chat[:9], max_new=7, n=2, temperature=1.7, top_k=3),
                request(short, max_new=4, top_p=0.2, temperature=1.0, seed=77),
                request(chat, max_new=6, repetition_penalty=0.0, logit_bias=((5, 3.0),)),
                request(long_prompt[:17], max_new=3, frequency_penalty=-1.0),
            ]
            await asyncio.gather(*[collect(engine, r, 0.01 * i) for i, r in enumerate(work)])

        run(mixed())
    assert compiles == []


def test_cancel_frees_the_slot_and_a_cancelled_queued_request_never_starts(engine):
    async def scenario():
        prompt = prompts()[2]
        hogs = [request(prompt, max_new=200, temperature=1.0) for _ in range(8)]
        streams = [engine.submit(r) for r in hogs]
        queued = engine.submit(request(prompt, max_new=5))
        first = await streams[0].__aiter__().__anext__()
        assert isinstance(first, TokenEvent)
        queued.cancel()
        events = [e async for e in queued]
        assert events == [FinishEvent(0, "cancelled", len(prompt), 0)]
        for stream in streams:
            stream.cancel()
        for _ in range(1000):  # a loaded machine may still be prefilling some of them
            if engine.stats()["free_slots"] == 8:
                break
            await asyncio.sleep(0.01)
        return engine.stats()

    stats = run(scenario())
    assert stats | {"compilations_after_warm_up": 0} == {
        "waiting": 0, "prefilling": 0, "decoding": 0, "free_slots": 8, "slots": 8,
        "requests": 0, "compilations_after_warm_up": 0}


def test_overload_and_limits_fail_at_once(engine):
    async def scenario():
        prompt = prompts()[2]
        streams = [engine.submit(request(prompt, max_new=200, temperature=1.0))
                   for _ in range(8 + CONFIG.max_waiting)]
        with pytest.raises(Overloaded):
            engine.submit(request(prompt))
        for stream in streams:
            stream.cancel()
        with pytest.raises(ContextTooLong):
            engine.submit(request(prompt, max_new=256))
        with pytest.raises(InvalidRequest, match="vocabulary"):
            engine.submit(request([2, 10_000]))
        await asyncio.sleep(0.05)

    run(scenario())


def test_a_failing_request_fails_alone(engine, monkeypatch):
    """A host-side failure in one request's processing fails that request; others finish."""
    import gemma_server.engine.events as events_module

    real = events_module.token_event

    def flaky(request, *args):
        if request.request_id.endswith("-bad"):
            raise RuntimeError("boom")
        return real(request, *args)

    monkeypatch.setattr(events_module, "token_event", flaky)

    async def scenario():
        prompt = prompts()[2]
        bad = GenerationRequest("x-bad", tuple(prompt), 10)
        good = request(prompt, max_new=10)
        return await asyncio.gather(collect(engine, bad), collect(engine, good))

    (bad_tokens, _, bad_finish), (good_tokens, _, good_finish) = run(scenario())
    assert bad_tokens == {} and bad_finish[0].reason == "error" and "boom" in bad_finish[0].error
    assert good_finish[0].reason == "length" and len(good_tokens[0]) == 10
    assert engine.alive


def test_a_failing_device_step_fails_its_requests_and_the_engine_goes_on(engine, monkeypatch):
    calls = {"n": 0}
    real = engine.executor.prefill

    def failing_once(*args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device says no")
        return real(*args)

    monkeypatch.setattr(engine.executor, "prefill", failing_once)
    _, _, finishes = run(collect(engine, request(prompts()[2])))
    assert finishes[0].reason == "error" and "device says no" in finishes[0].error
    tokens, _, finishes = run(collect(engine, request(prompts()[2])))
    assert finishes[0].reason == "length" and tokens[0] == golden(NAME)["greedy_2"].tolist()


def test_decode_runs_ahead_on_the_tokens_still_on_the_device(engine, monkeypatch):
    """While nothing but decoding goes on, call N+1 is launched on call N's last tokens before
    the host reads them; each call runs up to `decode_steps` steps, and a request that ends by
    length costs no step past its last token."""
    launches: list[tuple[bool, int]] = []
    real = engine.executor.launch_decode

    def watched(tokens, positions, budgets=None):
        launches.append((tokens is None, int(budgets.max())))
        return real(tokens, positions, budgets)

    monkeypatch.setattr(engine.executor, "launch_decode", watched)
    gold = golden(NAME)
    tokens, _, finishes = run(collect(engine, request(prompts()[1], max_new=10)))
    assert tokens[0] == gold["greedy_1"].tolist()
    assert finishes == [FinishEvent(0, "length", len(prompts()[1]), 10)]
    # The first token comes from the prefill, nine from decode steps: 4 in a call launched on
    # the host's tokens, then 4 and 1 in calls launched on the device's.
    assert CONFIG.decode_steps == 4
    assert launches == [(False, 4), (True, 4), (True, 1)]


def test_a_step_run_ahead_past_a_stop_is_dropped_and_the_slot_reused(engine):
    gold = golden(NAME)
    greedy = gold["greedy_1"].tolist()
    stop = greedy[5]

    async def back_to_back():
        first = await collect(engine, request(prompts()[1], stop=(stop,)))
        second = await collect(engine, request(prompts()[1]))
        return first, second

    (stopped, _, finishes), (again, _, _) = run(back_to_back())
    assert stopped[0] == greedy[:greedy.index(stop)] and finishes[0].reason == "stop"
    assert again[0] == greedy


def test_a_step_failing_on_the_device_fails_its_requests_and_the_engine_recovers(
        engine, monkeypatch):
    """A step that fails while it runs (seen when its tokens are read) has spent the donated
    cache, and the step launched on its tokens is void: everyone in it fails with the
    error, the state is rebuilt, and the next request decodes correctly."""
    import gemma_server.engine.device_results as results_module

    real, calls = results_module.to_host, {"n": 0}

    def failing(drawn):  # the prefill's read, then each decode step's
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("device fault")
        return real(drawn)

    monkeypatch.setattr(results_module, "to_host", failing)
    resets, reset = [], engine.executor.reset
    monkeypatch.setattr(engine.executor, "reset", lambda: (resets.append(1), reset()))
    tokens, _, finishes = run(collect(engine, request(prompts()[2], max_new=20)))
    assert finishes[0].reason == "error" and "device fault" in finishes[0].error
    # the prefill's token and two calls of 4 steps before the fault
    assert len(tokens[0]) == 1 + 2 * CONFIG.decode_steps
    assert resets == [1]
    tokens, _, finishes = run(collect(engine, request(prompts()[2])))
    assert finishes[0].reason == "length" and tokens[0] == golden(NAME)["greedy_2"].tolist()
    assert not engine.executor.state_lost()


def test_tokens_do_not_depend_on_the_steps_a_decode_call_runs(tiny_model, engine):
    """One step per call or four: the same greedy tokens (transformers' goldens), the same
    seeded samples with penalties, and a stop token inside a call ends the choice there."""
    model = tiny_model(NAME)
    single = Engine(model.params, model.config,
                    dataclasses.replace(CONFIG, decode_steps=1, max_batch_size=4))
    single.start()
    try:
        gold = golden(NAME)
        greedy = gold["greedy_2"].tolist()
        at = next(i for i, t in enumerate(greedy) if i >= 5 and greedy.index(t) == i)
        for eng in (engine, single):
            for i, prompt in enumerate(prompts()):
                tokens, _, _ = run(collect(eng, request(prompt)))
                assert tokens[0] == gold[f"greedy_{i}"].tolist()
            tokens, _, finishes = run(collect(eng, request(prompts()[2],
                                                           stop=(greedy[at],))))
            assert tokens[0] == greedy[:at]
            assert finishes[0].reason == "stop" and finishes[0].completion_tokens == at + 1

        def sampled(eng):
            req = request(prompts()[1], max_new=23, n=2, temperature=0.9, top_p=0.95,
                          seed=7, frequency_penalty=0.5)
            return run(collect(eng, req))[0]

        assert sampled(engine) == sampled(single)
    finally:
        single.stop()


def test_penalties_count_every_generated_token_from_the_first(engine):
    """Each drawn token is counted when the next step is fed it (before that step draws),
    the prefill's first token included: a huge presence penalty forbids any repeat."""
    plain, _, _ = run(collect(engine, request(prompts()[1], max_new=40)))
    assert len(set(plain[0])) < 40  # without it, greedy repeats itself here
    tokens, _, _ = run(collect(engine, request(prompts()[1], max_new=40,
                                               presence_penalty=1e4)))
    assert len(tokens[0]) == 40 and len(set(tokens[0])) == 40
    assert tokens[0][0] == plain[0][0]


def test_decode_compiles_one_attention_length_where_the_kernel_reads_only_visible_entries(
        tiny_model):
    """The CPU attention kernel skips entries no query sees, so a longer attended prefix costs
    nothing there and one compiled length serves every step; XLA's attention reads all it is
    given, so it keeps a step per prefix length (256, x4 ..., the maximum)."""
    from gemma_server.engine.executor import Executor
    from gemma_server.kernels import library

    model = tiny_model("tiny-gemma", "float32")
    config = EngineConfig(max_batch_size=4, max_total_tokens=2048, max_input_length=200,
                          max_waiting=4)
    with library.kernels_off():
        xla = Executor(model.params, model.config, config)
    assert xla.attention_buckets == (256, 1024, 2048)
    assert len(xla.decode_shapes()) == 3 * len(config.slot_buckets())
    kernel = Executor(model.params, model.config, config)
    expected = (2048,) if library.available() else (256, 1024, 2048)
    assert kernel.attention_buckets == expected
