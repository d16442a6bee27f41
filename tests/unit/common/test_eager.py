"""eager_task: the first step runs in the caller's turn, as the new task, in its own
context; afterwards the task behaves like any other (result, errors, cancellation)."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from services.common.eager import eager_task

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("eager_test", default="caller")


async def test_the_first_step_runs_before_work_already_queued():
    order: list[str] = []

    async def queued():
        order.append("queued")

    async def work():
        order.append("first step")
        await asyncio.sleep(0)
        order.append("second step")
        return 42

    asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(queued()))
    await asyncio.sleep(0)  # the callback above creates ``queued``'s task
    task = eager_task(work())
    assert order == ["first step"]
    assert await task == 42
    assert order == ["first step", "queued", "second step"]


async def test_inside_the_first_step_the_current_task_is_the_new_one():
    caller = asyncio.current_task()
    seen: list[asyncio.Task | None] = []

    async def work():
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())

    task = eager_task(work())
    assert asyncio.current_task() is caller  # given back
    await task
    assert seen == [task, task]


async def test_a_timeout_entered_in_the_first_step_cancels_the_task_not_the_caller():
    async def work():
        async with asyncio.timeout(0.01):
            await asyncio.sleep(10)

    task = eager_task(work())
    with pytest.raises(TimeoutError):
        await task
    await asyncio.sleep(0.02)  # the caller was not cancelled meanwhile


async def test_a_context_variable_set_in_the_first_step_stays_in_the_task():
    async def work():
        VAR.set("task")
        await asyncio.sleep(0)
        return VAR.get()

    task = eager_task(work())
    assert VAR.get() == "caller"
    assert await task == "task"


async def test_returning_or_raising_in_the_first_step():
    async def returns():
        return "done"

    async def raises():
        raise ValueError("boom")

    assert await eager_task(returns()) == "done"
    with pytest.raises(ValueError, match="boom"):
        await eager_task(raises())


async def test_cancelled_before_its_next_step_the_coroutine_sees_the_cancellation():
    cleaned: list[str] = []

    async def work():
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("finally")

    task = eager_task(work())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"]
    assert task.cancelled()
