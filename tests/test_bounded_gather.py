"""Running jobs together: a job that fails is never read as one that returned nothing."""

from __future__ import annotations

import asyncio

import pytest

from ttc.concurrency import bounded_gather
from ttc.errors import BackendError


async def _value(i: int) -> int:
    await asyncio.sleep(0.01)
    return i


async def _cancelled_inside() -> int:
    """What a call sees when a future it awaits is cancelled by someone else (an executor shut down)."""
    await asyncio.sleep(0.005)
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    future.cancel()
    return await future


def test_a_job_cancelled_from_inside_fails_the_gather_instead_of_leaving_gaps() -> None:
    """The task group ended the other workers and returned [0, 1, None, None, None, None]."""
    jobs = [lambda i=i: _value(i) for i in range(6)]
    jobs[2] = _cancelled_inside
    with pytest.raises(BackendError, match="though nothing cancelled it") as caught:
        asyncio.run(bounded_gather(jobs, 2))
    assert isinstance(caught.value.__cause__, asyncio.CancelledError)


def test_cancelling_the_gather_still_cancels_it() -> None:
    async def main() -> None:
        jobs = [lambda: asyncio.sleep(10) for _ in range(4)]
        await asyncio.wait_for(bounded_gather(jobs, 2), 0.05)

    with pytest.raises(TimeoutError):
        asyncio.run(main())


def test_a_job_whose_own_task_is_cancelled_by_another_fails_the_gather_too() -> None:
    """Its worker ended as cancelled, and the task group returned [0, None, None, None]."""
    async def cancels_itself() -> int:
        await asyncio.sleep(0.005)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(1)
        return 1

    jobs = [lambda i=i: _value(i) for i in range(4)]
    jobs[1] = cancels_itself
    with pytest.raises(BackendError, match="though nothing cancelled it"):
        asyncio.run(bounded_gather(jobs, 2))
