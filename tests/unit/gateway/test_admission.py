"""ModelGate: the no-wait fast path, priority order, shedding, cancellation and timeouts."""

from __future__ import annotations

import asyncio
import random

import pytest

from computenet.gateway.admission import (
    PRIORITY_HEADER,
    UNLIMITED,
    Gates,
    ModelGate,
    Shed,
    parse_priority,
)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class Crowd:
    """Tasks that enter a gate and note when they got in; they leave only when the test says so."""

    def __init__(self, gate: ModelGate) -> None:
        self.gate = gate
        self.admitted: list[str] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def arrive(self, name: str, priority: int = 0) -> asyncio.Task[None]:
        async def enter() -> None:
            await self.gate.enter(priority)
            self.admitted.append(name)

        task = self.tasks[name] = asyncio.create_task(enter(), name=name)
        await settle()
        return task

    async def serve_all(self) -> None:
        """Let the admitted leave one by one until nobody waits."""
        while self.gate.queued or self.gate.in_flight:
            self.gate.leave()
            await settle()


def test_fast_path_takes_a_slot_without_suspending() -> None:
    gate = ModelGate(capacity=2)
    for expected in (1, 2):
        coro = gate.enter()
        with pytest.raises(StopIteration):  # finished on its first step: nothing was awaited
            coro.send(None)
        assert gate.in_flight == expected
    gate.leave()
    gate.leave()
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_waiters_of_one_priority_are_served_in_arrival_order() -> None:
    gate = ModelGate(capacity=1)
    await gate.enter()
    crowd = Crowd(gate)
    for name in "abcd":
        await crowd.arrive(name)
    assert (gate.in_flight, gate.queued) == (1, 4)
    await crowd.serve_all()
    assert crowd.admitted == list("abcd")


async def test_higher_priority_is_served_first() -> None:
    gate = ModelGate(capacity=1)
    await gate.enter()
    crowd = Crowd(gate)
    await crowd.arrive("low", -5)
    await crowd.arrive("normal", 0)
    await crowd.arrive("high1", 5)
    await crowd.arrive("normal2", 0)
    await crowd.arrive("high2", 5)
    await crowd.serve_all()
    assert crowd.admitted == ["high1", "high2", "normal", "normal2", "low"]


async def test_a_newcomer_cannot_overtake_the_queue_when_a_slot_frees() -> None:
    gate = ModelGate(capacity=1)
    await gate.enter()
    crowd = Crowd(gate)
    await crowd.arrive("waiter")
    gate.leave()  # the slot goes to the waiter before it even runs
    newcomer = asyncio.create_task(gate.enter())
    await settle()
    assert crowd.admitted == ["waiter"]
    assert not newcomer.done() and gate.queued == 1
    gate.leave()
    await newcomer
    gate.leave()
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_a_full_queue_sheds_the_lowest_priority_first() -> None:
    gate = ModelGate(capacity=1, max_queue=2)
    await gate.enter()
    crowd = Crowd(gate)
    low = await crowd.arrive("low", -5)
    await crowd.arrive("normal", 0)
    await crowd.arrive("high", 5)  # evicts "low"
    with pytest.raises(Shed) as shed:
        await low
    assert shed.value.status == 429 and shed.value.retry_after_s > 0
    assert gate.queued == 2

    with pytest.raises(Shed) as refused:  # not above the lowest queued (0): refused at once
        await gate.enter(0)
    assert refused.value.status == 429 and "full" in refused.value.reason
    await crowd.serve_all()
    assert crowd.admitted == ["high", "normal"]


async def test_no_queue_at_all_sheds_when_saturated() -> None:
    gate = ModelGate(capacity=1, max_queue=0)
    await gate.enter()
    with pytest.raises(Shed) as shed:
        await gate.enter(10)
    assert shed.value.status == 429
    gate.leave()


async def test_cancelled_waiters_leave_the_queue_and_leak_no_slot() -> None:
    gate = ModelGate(capacity=2)
    await gate.enter()
    await gate.enter()
    crowd = Crowd(gate)
    for i in range(200):
        await crowd.arrive(f"w{i}", i % 3)
    assert gate.queued == 200
    for i, task in enumerate(crowd.tasks.values()):
        if i % 2:
            task.cancel()
    await settle()
    assert gate.queued == 100
    await crowd.serve_all()
    assert len(crowd.admitted) == 100
    assert (gate.in_flight, gate.queued) == (0, 0)
    await gate.enter()  # capacity is still exactly 2
    await gate.enter()
    assert gate.in_flight == 2
    third = asyncio.create_task(gate.enter())
    await settle()
    assert not third.done()
    third.cancel()
    await settle()
    gate.leave()
    gate.leave()
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_a_waiter_cancelled_just_after_it_was_admitted_passes_its_slot_on() -> None:
    gate = ModelGate(capacity=1)
    await gate.enter()
    crowd = Crowd(gate)
    first = await crowd.arrive("first")
    await crowd.arrive("second")
    gate.leave()  # hands the slot to "first" ...
    first.cancel()  # ... which is cancelled before it resumes
    await settle()
    assert first.cancelled()
    assert crowd.admitted == ["second"] and gate.in_flight == 1
    gate.leave()
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_waiting_past_max_wait_s_is_a_503() -> None:
    gate = ModelGate(capacity=0, max_wait_s=0.02)
    with pytest.raises(Shed) as shed:
        await gate.enter()
    assert shed.value.status == 503
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_raising_capacity_admits_waiters_at_once_and_lowering_it_admits_none() -> None:
    gate = ModelGate(capacity=0)
    crowd = Crowd(gate)
    for name in "abc":
        await crowd.arrive(name)
    gate.capacity = 2
    await settle()
    assert crowd.admitted == ["a", "b"] and gate.queued == 1
    gate.capacity = 1
    gate.leave()  # in flight 2 -> 1: still not below the new capacity
    await settle()
    assert crowd.admitted == ["a", "b"] and gate.queued == 1
    await crowd.serve_all()
    assert crowd.admitted == ["a", "b", "c"]


def test_leave_without_enter_is_a_bug_that_is_reported() -> None:
    with pytest.raises(RuntimeError, match="without a matching enter"):
        ModelGate(capacity=1).leave()


async def test_random_enter_leave_and_cancel_keep_the_books_exact() -> None:
    rng = random.Random(7)
    gate = ModelGate(capacity=5, max_queue=20, max_wait_s=0.5)
    over_capacity: list[int] = []
    outcomes = {"served": 0, "shed": 0, "cancelled": 0}

    async def request() -> None:
        try:
            await gate.enter(rng.randint(-10, 10))
        except Shed:
            outcomes["shed"] += 1
            return
        try:
            if gate.in_flight > gate.capacity:
                over_capacity.append(gate.in_flight)
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)
        finally:
            gate.leave()
        outcomes["served"] += 1

    tasks: list[asyncio.Task[None]] = []
    for _ in range(3000):
        tasks.append(asyncio.create_task(request()))
        if rng.random() < 0.2:
            rng.choice(tasks).cancel()
        if rng.random() < 0.5:
            await asyncio.sleep(0)
        assert gate.in_flight <= gate.capacity and gate.queued <= 20
    results = await asyncio.gather(*tasks, return_exceptions=True)
    outcomes["cancelled"] = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert not over_capacity
    assert (gate.in_flight, gate.queued) == (0, 0)
    assert outcomes["served"] > 1000 and outcomes["shed"] > 0 and outcomes["cancelled"] > 0


def test_gates_make_one_gate_per_model_lazily() -> None:
    gates = Gates(max_queue=3, max_wait_s=1.0)
    gate = gates.gate("m")
    assert gates.gate("m") is gate and gates.gate("other") is not gate
    assert gate.capacity == UNLIMITED  # no limit until the gateway knows the endpoints
    gates.set_capacity("m", 4)
    gates.set_capacity("new", 2)
    assert (gate.capacity, gates.gate("new").capacity) == (4, 2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(None, 0), ("", 0), ("  ", 0), ("0", 0), ("7", 7), ("-10", -10), ("+10", 10), (" 3 ", 3)],
        *[("low", -5), ("Normal", 0), ("HIGH", 5)],
    ],
)
def test_parse_priority_accepts_integers_and_names(value: str | None, expected: int) -> None:
    assert parse_priority(value) == expected


@pytest.mark.parametrize("value", ["11", "-11", "1.5", "urgent", "1_0", "0x5", "99999999999"])
def test_parse_priority_names_the_header_and_the_allowed_values(value: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_priority(value)
    message = str(err.value)
    assert PRIORITY_HEADER in message and "-10 to 10" in message and "low, normal, high" in message
    assert repr(value) in message
