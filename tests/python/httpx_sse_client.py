"""A Python subscriber with httpx-sse against herald.

httpx-sse parses the stream but, unlike a browser's EventSource, never
reconnects by itself: a Python client remembers the id of the last event it
handled and, after a drop, reconnects with it in `Last-Event-ID`.

Checks: events arrive with their id, type and envelope; after a drop, a
reconnect with `Last-Event-ID` gets exactly the events published while away
(no gap, no duplicate), then live ones; a cursor ahead of the log gets one
`reset` event first.

Run by tests/api/clients.rs: python3 tests/python/httpx_sse_client.py BASE_URL
Needs: python3 -m pip install -r tests/python/requirements.txt
"""

import os
import signal
import sys
import time

try:
    import httpx
    from httpx_sse import connect_sse
except ImportError as e:
    sys.exit(f"{e}: python3 -m pip install -r tests/python/requirements.txt (.ci/run does)")

# Fail rather than hang if herald never sends what we wait for.
signal.alarm(60)

BASE = sys.argv[1].rstrip("/")
TOPIC = f"python:t{os.getpid()}-{time.time_ns()}"


def publish(client, type_, data):
    res = client.post(f"{BASE}/v1/events", json={"topic": TOPIC, "type": type_, "data": data})
    assert res.status_code == 201, f"publish answered {res.status_code}: {res.text}"
    return res.json()


def events(blocks):
    """The events among a connection's blocks, without the stream's own
    `event: stream` frames (its opening) and those that carry no data (the
    heartbeats, which httpx-sse reports as empty messages once an id has
    been seen)."""
    return (sse for sse in blocks if sse.data and sse.event != "stream")


def connect(client, last_event_id=None):
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    return connect_sse(client, "GET", f"{BASE}/v1/stream", params={"topic": TOPIC}, headers=headers)


def take(stream, n):
    out = []
    for sse in stream:
        out.append(sse)
        if len(out) == n:
            return out
    raise AssertionError(f"stream ended after {len(out)} of {n} events")


def check(received, stored):
    assert [s.id for s in received] == [e["id"] for e in stored], (received, stored)
    assert [s.event for s in received] == [e["type"] for e in stored]
    assert [s.json() for s in received] == stored


def main():
    # The read timeout only has to outlast herald's heartbeat.
    with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
        # 1. Subscribe, receive.
        with connect(client) as source:
            res = source.response
            assert res.status_code == 200, res.status_code
            assert res.headers["content-type"] == "text/event-stream"
            assert res.headers["cache-control"] == "no-cache"
            assert res.headers["x-accel-buffering"] == "no"
            blocks = source.iter_sse()
            first_block = next(blocks)
            assert first_block.retry is not None and first_block.retry > 0, first_block
            first = [
                publish(client, "order.created", {"order": 1, "items": ["a", "b"]}),
                publish(client, "order.paid", {"order": 1, "amount": "12.50"}),
                publish(client, "order.created", {"order": 2, "note": "naïve \"quotes\"\nnewline"}),
            ]
            seen = take(events(blocks), 3)
            check(seen, first)
        # 2. Dropped (the `with` closed the connection); published meanwhile:
        last_id = seen[-1].id
        missed = [publish(client, "order.shipped", {"order": 1}), publish(client, "order.paid", {"order": 2})]

        # 3. Reconnect with Last-Event-ID: exactly the missed ones, then live.
        with connect(client, last_event_id=last_id) as source:
            stream = events(source.iter_sse())
            replayed = take(stream, 2)
            check(replayed, missed)
            live = [publish(client, "order.shipped", {"order": 2})]
            check(take(stream, 1), live)
        all_ids = [s["id"] for s in first + missed + live]
        assert all_ids == [str(i) for i in range(int(all_ids[0]), int(all_ids[0]) + 6)], all_ids

        # 4. A cursor ahead of the log: one reset first, then live events.
        with connect(client, last_event_id="999999") as source:
            stream = events(source.iter_sse())
            [reset] = take(stream, 1)
            assert reset.event == "reset", reset
            info = reset.json()
            assert info["reason"] == "cursor_ahead", info
            assert reset.id == info["continue_from"] == live[-1]["id"], (reset, info)
            after = [publish(client, "order.created", {"order": 3})]
            check(take(stream, 1), after)

    print(f"httpx-sse received ids {', '.join(all_ids)}; resumed after {last_id}; reset {info}")


if __name__ == "__main__":
    main()
