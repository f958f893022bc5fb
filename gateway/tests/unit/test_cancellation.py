"""storage/cancellation.py: a cancellation a library lost is raised again."""

from __future__ import annotations

import asyncio

import pytest

from tollgate_gateway.storage.cancellation import reraise_lost_cancel


async def _swallowing(convert: bool) -> None:
    """What redis-py's pipeline can do when cancelled: return, or fail as another error."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        if convert:
            raise ConnectionError("Connection closed by server.") from None


async def _guarded(convert: bool, reached: list[str]) -> None:
    with reraise_lost_cancel():
        await _swallowing(convert)
    reached.append("after")  # a lost cancellation would let the caller go on


@pytest.mark.parametrize("convert", [False, True], ids=["returned", "converted"])
async def test_a_cancellation_lost_inside_is_raised_again(convert: bool) -> None:
    reached: list[str] = []
    task = asyncio.ensure_future(_guarded(convert, reached))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reached == []


async def test_without_a_cancellation_results_and_errors_pass_through() -> None:
    with reraise_lost_cancel():
        value = await asyncio.sleep(0, "ok")
    assert value == "ok"
    with pytest.raises(ConnectionError), reraise_lost_cancel():
        raise ConnectionError("down")
