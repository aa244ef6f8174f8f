"""``post_burst`` gives up the rest of a burst when the producer stops answering (breaker finding:
a server that accepted connections and never answered kept ``orderstream burst`` busy for about an
hour with the defaults)."""

from __future__ import annotations

import socket
import time

from streamcore.burst import post_burst


async def test_a_producer_that_never_answers_ends_the_burst_after_one_batch_gives_up():
    with socket.socket() as listener:  # accepts connections (the kernel's backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        result = await post_burst(url, 1000, batch=10, concurrency=2, attempts=2, timeout_s=0.3, prefix="t")
        elapsed = time.monotonic() - started
    assert result.accepted == {}
    assert elapsed < 5, elapsed  # two batches in flight time out twice each, the other 98 are not sent
    assert result.rejected[0] == (0, "98 batches not sent: the producer stopped answering")
    failed = [body for status, body in result.rejected[1:] if status == 0]
    assert len(failed) == 2 and all("no answer after 2 attempts (TimeoutError" in body or
                                    "no answer after 2 attempts (ServerTimeoutError" in body for body in failed), failed
