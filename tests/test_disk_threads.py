"""The disk executor: jobs run on worker threads and each awaiting task gets its own job's outcome.

Results come back to the loop in batches (one wake-up for all that finished
while it was busy), so what is checked here is that no batch mixes up, drops
or holds back an outcome, and that a shutdown finishes what was queued.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from pyowtorrent.engine.services import ThreadDisk


class Boom(Exception):
    pass


def fail(n: int) -> int:
    raise Boom(f"job {n}")


def test_a_job_runs_on_a_worker_thread_and_its_result_or_exception_reaches_its_caller() -> None:
    async def main() -> None:
        disk = ThreadDisk(2)
        try:
            assert await disk.run(threading.get_ident) != threading.get_ident()
            with pytest.raises(Boom, match="job 7"):
                await disk.run(fail, 7)
        finally:
            await disk.shutdown()

    asyncio.run(main())


def test_thousands_of_jobs_at_once_each_get_their_own_outcome() -> None:
    async def main() -> None:
        disk = ThreadDisk(3)
        try:
            jobs = [disk.run(fail, n) if n % 7 == 0 else disk.run(pow, n, 2) for n in range(3000)]
            outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            await disk.shutdown()
        for n, outcome in enumerate(outcomes):
            if n % 7 == 0:
                assert isinstance(outcome, Boom) and str(outcome) == f"job {n}"
            else:
                assert outcome == n * n

    asyncio.run(main())


def test_a_caller_that_gives_up_does_not_keep_the_others_from_their_results() -> None:
    async def main() -> None:
        disk = ThreadDisk(1)
        gate = threading.Event()
        try:
            held = asyncio.ensure_future(disk.run(gate.wait))
            after = asyncio.ensure_future(disk.run(pow, 3, 2))
            await asyncio.sleep(0)  # both queued; the one worker is held by the first
            held.cancel()
            gate.set()
            assert await after == 9
            assert held.cancelled()
        finally:
            gate.set()
            await disk.shutdown()

    asyncio.run(main())


def test_shutdown_finishes_the_jobs_queued_and_ends_the_threads() -> None:
    async def main() -> None:
        before = set(threading.enumerate())
        disk = ThreadDisk(2)
        done: list[int] = []
        jobs = [asyncio.ensure_future(disk.run(done.append, n)) for n in range(50)]
        await asyncio.sleep(0)  # queued
        await disk.shutdown()
        assert sorted(done) == list(range(50))
        await asyncio.gather(*jobs)
        assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("pyowtorrent-disk")]

    asyncio.run(main())


def test_a_job_asked_for_during_or_after_shutdown_is_refused_and_the_shutdown_completes() -> None:
    async def main() -> None:
        disk = ThreadDisk(2)
        gate = threading.Event()
        running = asyncio.ensure_future(disk.run(gate.wait))
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(disk.shutdown())
        await asyncio.sleep(0)  # the stops are queued behind the running job
        with pytest.raises(RuntimeError, match="shut down"):
            await disk.run(pow, 2, 2)
        gate.set()
        await closing
        assert await running is True

    asyncio.run(main())


def raise_stop_iteration() -> None:
    raise StopIteration


def test_a_job_raising_what_a_future_cannot_hold_fails_alone() -> None:
    async def main() -> None:
        disk = ThreadDisk(1)
        try:
            outcomes = await asyncio.gather(
                disk.run(raise_stop_iteration), disk.run(pow, 3, 3), return_exceptions=True
            )
        finally:
            await disk.shutdown()
        assert isinstance(outcomes[0], RuntimeError) and "StopIteration" in str(outcomes[0])
        assert outcomes[1] == 27

    asyncio.run(main())


def test_a_job_whose_caller_gave_up_before_it_started_is_not_run() -> None:
    async def main() -> None:
        disk = ThreadDisk(1)
        gate = threading.Event()
        ran: list[int] = []
        try:
            held = asyncio.ensure_future(disk.run(gate.wait))
            dropped = asyncio.ensure_future(disk.run(ran.append, 1))
            await asyncio.sleep(0)  # both queued; the one worker is held by the first
            dropped.cancel()
            gate.set()
            await held
            assert await disk.run(ran.append, 2) is None
        finally:
            gate.set()
            await disk.shutdown()
        assert ran == [2]

    asyncio.run(main())


def test_a_disk_without_threads_is_refused() -> None:
    with pytest.raises(ValueError):
        ThreadDisk(0)
