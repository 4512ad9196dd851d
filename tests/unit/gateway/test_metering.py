"""UsageMeter: batching by size and time, retry without loss, spill and replay, bounded memory."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from computenet.api.usage import UsageRecord
from computenet.gateway.metering import UsageMeter

from ..records import usage_record


def rec(i: int) -> UsageRecord:
    return usage_record(
        f"r{i}",
        started_at=1_700_000_000.0 + i,
        tenant="t",
        model="m",
        backend="deployment/d",
        endpoint="e",
        completion_tokens=i,
        cost_usd=0.001,
        ttft_s=None if i % 2 else 0.05,
        latency_s=0.2,
    )


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[UsageRecord]] = []
        self.failing = False
        self.calls = 0

    async def write_usage(self, records: Sequence[UsageRecord]) -> None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.failing:
            raise ConnectionError("store is down")
        self.batches.append(list(records))

    @property
    def ids(self) -> list[str]:
        return [r.request_id for batch in self.batches for r in batch]


async def until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.002)


def ids(n: int, start: int = 0) -> list[str]:
    return [f"r{i}" for i in range(start, start + n)]


def meter(sink: Sink, **kwargs: Any) -> UsageMeter:
    """Quick retries, so that tests of a failing sink run in milliseconds."""
    options: dict[str, Any] = {"retry_initial_s": 0.005, "retry_max_s": 0.02, "close_timeout_s": 2.0}
    return UsageMeter(sink, **(options | kwargs))


async def test_writes_a_batch_once_batch_size_records_are_pending() -> None:
    sink = Sink()
    m = meter(sink, batch_size=10, flush_interval_s=60)
    await m.start()
    try:
        for i in range(25):
            m.record(rec(i))
        await until(lambda: len(sink.ids) == 20)
        await asyncio.sleep(0.02)
        assert [len(b) for b in sink.batches] == [10, 10]
        assert m.pending == 5
    finally:
        await m.close()
    assert sink.ids == ids(25)
    assert (m.written_total, m.pending) == (25, 0)


async def test_writes_a_partial_batch_after_the_flush_interval() -> None:
    sink = Sink()
    m = meter(sink, batch_size=100, flush_interval_s=0.2)
    await m.start()
    try:
        for i in range(3):
            m.record(rec(i))
        for _ in range(5):
            await asyncio.sleep(0)
        assert sink.ids == []  # not written at once: it waits for a batch or the interval
        await until(lambda: len(sink.ids) == 3)
        assert [len(b) for b in sink.batches] == [3]
    finally:
        await m.close()


async def test_a_failing_sink_loses_nothing_and_keeps_the_order() -> None:
    sink = Sink()
    sink.failing = True
    m = meter(sink, batch_size=10, flush_interval_s=0.01)
    await m.start()
    try:
        for i in range(30):
            m.record(rec(i))
        await until(lambda: m.failed_batches_total >= 3)
        for i in range(30, 50):  # records keep queuing while the sink is down
            m.record(rec(i))
        assert m.pending == 50
        sink.failing = False
        await until(lambda: len(sink.ids) == 50)
    finally:
        await m.close()
    assert sink.ids == ids(50)
    assert all(len(b) <= 10 for b in sink.batches)
    assert (m.written_total, m.dropped_total, m.spilled_total) == (50, 0, 0)


async def test_close_flushes_everything_pending() -> None:
    sink = Sink()
    m = meter(sink, batch_size=4, flush_interval_s=60)
    await m.start()
    for i in range(11):
        m.record(rec(i))
    await m.close()
    assert sink.ids == ids(11)
    assert m.pending == 0


async def test_close_without_start_still_writes() -> None:
    sink = Sink()
    m = meter(sink, batch_size=4)
    for i in range(6):
        m.record(rec(i))
    await m.close()
    assert sink.ids == ids(6)


async def test_close_with_a_dead_sink_spills_and_the_next_start_writes_them_once(tmp_path: Path) -> None:
    spill = tmp_path / "usage" / "spill.jsonl"
    dead = Sink()
    dead.failing = True
    first = meter(dead, batch_size=5, flush_interval_s=60, spill_path=spill)
    await first.start()
    for i in range(12):
        first.record(rec(i))
    await first.close()
    assert (first.spilled_total, first.pending, first.dropped_total) == (12, 0, 0)
    assert len(spill.read_text().splitlines()) == 12

    sink = Sink()
    second = meter(sink, batch_size=5, flush_interval_s=60, spill_path=spill)
    await second.start()
    try:
        await until(lambda: len(sink.ids) == 12)
        await asyncio.sleep(0.02)
    finally:
        await second.close()
    assert sink.ids == ids(12)
    assert [r for batch in sink.batches for r in batch] == [rec(i) for i in range(12)]  # every field survives
    assert second.replayed_total == 12
    assert not spill.exists() or spill.stat().st_size == 0

    third_sink = Sink()
    third = meter(third_sink, spill_path=spill)
    await third.start()
    await asyncio.sleep(0.02)
    await third.close()
    assert third_sink.ids == []  # nothing is written twice


async def test_memory_stays_bounded_under_a_dead_sink_and_drops_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink()
    sink.failing = True
    m = meter(sink, batch_size=10, flush_interval_s=0.01, max_pending=100)
    await m.start()
    try:
        with caplog.at_level(logging.ERROR, logger="computenet.gateway.metering"):
            for i in range(1000):
                m.record(rec(i))
                assert m.pending <= 100
                if i % 50 == 0:
                    await asyncio.sleep(0)
        assert m.dropped_total + m.pending == 1000
        assert any("dropped" in r.getMessage() and "spill_path" in r.getMessage() for r in caplog.records)
        sink.failing = False
        await until(lambda: m.pending == 0)
    finally:
        await m.close()
    written = [int(i[1:]) for i in sink.ids]
    assert written == sorted(written) and len(written) + m.dropped_total == 1000
    assert written[-1] == 999  # the newest survive: the oldest go first


async def test_memory_stays_bounded_with_a_spill_file_and_nothing_is_lost(tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    sink = Sink()
    sink.failing = True
    m = meter(sink, batch_size=10, flush_interval_s=0.01, max_pending=100, spill_path=spill)
    await m.start()
    try:
        for i in range(1000):
            m.record(rec(i))
            assert m.pending <= 100
        assert m.spilled_total + m.pending == 1000
        assert m.dropped_total == 0
        sink.failing = False  # the spill file is replayed while running, not only at the next start
        await until(lambda: len(sink.ids) == 1000)
    finally:
        await m.close()
    assert sorted(sink.ids) == sorted(ids(1000))  # all of them, each once
    assert m.replayed_total == m.spilled_total
    assert not spill.exists() or spill.stat().st_size == 0
    assert not spill.with_name("spill.jsonl.replaying").exists()


async def test_record_never_raises_when_the_spill_file_cannot_be_written(tmp_path: Path) -> None:
    spill = tmp_path / "a-directory"
    spill.mkdir()
    sink = Sink()
    m = meter(sink, batch_size=2, max_pending=4, spill_path=spill)  # not started: nothing drains
    for i in range(10):
        m.record(rec(i))
    assert m.pending <= 4
    assert m.dropped_total + m.pending == 10
    await m.close()


async def test_records_after_close_are_counted_as_dropped() -> None:
    m = meter(Sink())
    await m.start()
    await m.close()
    m.record(rec(0))
    assert (m.dropped_total, m.pending) == (1, 0)


async def test_unreadable_spill_lines_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spill = tmp_path / "spill.jsonl"
    spill.write_text('{"request_id": "x"}\nnot json\n')
    sink = Sink()
    m = meter(sink, spill_path=spill)
    m.record(rec(1))
    with caplog.at_level(logging.WARNING, logger="computenet.gateway.metering"):
        await m.start()
        await until(lambda: len(sink.ids) == 1)
        await asyncio.sleep(0.02)
        await m.close()
    assert sink.ids == ["r1"]
    assert sum("unreadable line" in r.getMessage() for r in caplog.records) == 2


def test_rejects_settings_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        UsageMeter(Sink(), batch_size=10, max_pending=5)
    with pytest.raises(ValueError, match="flush_interval_s"):
        UsageMeter(Sink(), flush_interval_s=0)


class FailsAfter(Sink):
    def __init__(self, good_calls: int) -> None:
        super().__init__()
        self.good_calls = good_calls

    async def write_usage(self, records: Sequence[UsageRecord]) -> None:
        self.failing = self.calls >= self.good_calls
        await super().write_usage(records)


def spill_lines(*records: UsageRecord) -> str:
    return "".join(
        json.dumps({f.name: getattr(r, f.name) for f in dataclasses.fields(r)}) + "\n" for r in records
    )


async def test_close_mid_replay_keeps_exactly_the_unwritten_tail(tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    spill.write_text(spill_lines(*(rec(i) for i in range(12))))
    sink = FailsAfter(good_calls=1)  # the first batch of the replay is written, then the store goes down
    m = meter(sink, batch_size=5, spill_path=spill)
    await m.start()
    await until(lambda: m.failed_batches_total >= 2)
    await m.close()
    assert sink.ids == ids(5)
    assert not spill.with_name("spill.jsonl.replaying").exists()

    again = Sink()
    m = meter(again, batch_size=5, spill_path=spill)
    await m.start()
    try:
        await until(lambda: len(again.ids) == 7)
    finally:
        await m.close()
    assert again.ids == ids(7, start=5)


async def test_a_replay_interrupted_by_a_crash_is_picked_up_on_start(tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    spill.with_name("spill.jsonl.replaying").write_text(spill_lines(rec(0), rec(1)))
    spill.write_text(spill_lines(rec(2)))
    sink = Sink()
    m = meter(sink, spill_path=spill)
    await m.start()
    try:
        await until(lambda: len(sink.ids) == 3)
    finally:
        await m.close()
    assert sink.ids == ids(3)
    assert not spill.with_name("spill.jsonl.replaying").exists()
    assert not spill.exists() or spill.stat().st_size == 0


async def test_close_lets_a_write_in_progress_finish_instead_of_cancelling_it() -> None:
    release = asyncio.Event()
    cancelled: list[bool] = []

    class SlowSink(Sink):
        async def write_usage(self, records: Sequence[UsageRecord]) -> None:
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            await super().write_usage(records)

    sink = SlowSink()
    m = meter(sink, batch_size=2, flush_interval_s=60)
    await m.start()
    for i in range(3):
        m.record(rec(i))
    await asyncio.sleep(0.01)  # the flusher is now inside write_usage with r0, r1
    closing = asyncio.create_task(m.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    release.set()
    await closing
    assert not cancelled
    assert [len(b) for b in sink.batches] == [2, 1] and sink.ids == ids(3)


async def test_close_gives_up_on_a_hung_sink_after_close_timeout_s_and_spills(tmp_path: Path) -> None:
    class HungSink(Sink):
        async def write_usage(self, records: Sequence[UsageRecord]) -> None:
            await asyncio.Event().wait()

    spill = tmp_path / "spill.jsonl"
    m = meter(HungSink(), batch_size=2, flush_interval_s=60, spill_path=spill, close_timeout_s=0.1)
    await m.start()
    for i in range(3):
        m.record(rec(i))
    await asyncio.sleep(0.01)
    async with asyncio.timeout(2):
        await m.close()
    assert m.spilled_total == 3
    assert [json.loads(line)["request_id"] for line in spill.read_text().splitlines()] == ids(3)
