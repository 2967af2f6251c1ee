"""A task cancelled just as its awaited response arrives stays cancelled (the async gRPC transport's reads).

Found in a fresh-clone CI run: ``test_every_early_end_of_a_koserve_stream_leaves_nothing_in_flight`` saw a cancelled
``AsyncChatClient.chat`` task return its whole answer — Python 3.11's ``asyncio.wait_for`` drops the cancellation
when the inner future is already done (CPython gh-86296). This makes that moment happen on purpose."""

from __future__ import annotations

import asyncio

import pytest

from koserve.client._grpc import _next_within


class OneResponse:
    """An async iterator whose next response is a future the test completes."""

    def __init__(self, loop):
        self.future = loop.create_future()

    def __anext__(self):
        return self.future


@pytest.mark.parametrize("seconds", [5.0, None])
def test_cancel_arriving_with_the_response_is_kept(seconds):
    async def main():
        responses = OneResponse(asyncio.get_running_loop())
        task = asyncio.ensure_future(_next_within(responses, seconds))
        await asyncio.sleep(0)  # the task now waits for the response
        responses.future.set_result(("result", None))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_response_in_time_is_returned_and_a_late_one_times_out():
    async def main():
        responses = OneResponse(asyncio.get_running_loop())
        asyncio.get_running_loop().call_later(0.01, responses.future.set_result, "piece")
        assert await _next_within(responses, 5.0) == "piece"
        with pytest.raises(asyncio.TimeoutError):
            await _next_within(OneResponse(asyncio.get_running_loop()), 0.01)

    asyncio.run(main())
