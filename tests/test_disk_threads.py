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
