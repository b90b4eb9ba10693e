#!/usr/bin/env python3
"""Publish an event to herald from a backend, retried safely.

    python3 examples/publisher.py TOPIC TYPE DATA_JSON --key KEY [--url URL]

herald answers a publish only after the event is committed, so a `2xx`
means stored. When it cannot store the event now (`503` while PostgreSQL is
unreachable, `429`, a `5xx` from a proxy, or no connection at all), this
publisher waits (the `Retry-After` the server sent, else a growing backoff)
and sends the same request again under the same idempotency key: if an
earlier attempt was stored after all, herald returns that event (`200`)
instead of storing a second one. A `4xx` is a problem with the event itself
and is not retried.

Pick a key that names the event in your own domain (`order-42/paid`), not
the attempt, so a retry after your own process restarts dedupes as well.
Keys are global to a herald deployment.

Prints the stored event's JSON envelope on standard output. Exit status: 0
stored (or already stored under the key), 1 refused, 3 gave up.
Standard library only. Run by tests/api/clients.rs.
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

RETRYABLE = {429, 500, 502, 503, 504}


class Refused(Exception):
    """herald refused the event (a 4xx): retrying would not help."""


class GaveUp(Exception):
    """herald could not store the event before the deadline."""


def publish(url, event, key, deadline=60.0, log=print):
    """POSTs `event` under the idempotency `key` until herald stores it.

    Returns (status, envelope): 201 if this call stored it, 200 if it was
    already stored under `key`.
    """
    body = json.dumps(event).encode()
    give_up_at = time.monotonic() + deadline
    backoff = 0.5
    for attempt in range(1, 1000):
        request = urllib.request.Request(
            f"{url.rstrip('/')}/v1/events",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": key},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as res:
                return res.status, json.load(res)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            if e.code not in RETRYABLE:
                raise Refused(f"{e.code}: {detail}") from None
            wait = retry_after(e.headers.get("Retry-After")) or backoff
            why = f"{e.code} {json_field(detail, 'code') or ''}".strip()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            wait, why = backoff, f"no answer ({getattr(e, 'reason', e)})"
        if time.monotonic() + wait > give_up_at:
            raise GaveUp(f"attempt {attempt}: {why}; giving up")
        log(f"attempt {attempt}: {why}; retrying in {wait:g}s with the same key")
        time.sleep(wait)
        backoff = min(backoff * 2, 10.0)
    raise GaveUp("too many attempts")


def retry_after(value):
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def json_field(text, name):
    try:
        return json.loads(text).get(name)
    except (ValueError, AttributeError):
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("topic")
    parser.add_argument("type")
    parser.add_argument("data", help="the event's data, as JSON")
    parser.add_argument("--key", required=True, help="idempotency key naming this event")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="herald's address")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds before giving up")
    args = parser.parse_args()

    event = {"topic": args.topic, "type": args.type, "data": json.loads(args.data)}
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        status, envelope = publish(args.url, event, args.key, args.deadline, log)
    except Refused as e:
        log(f"refused: {e}")
        return 1
    except GaveUp as e:
        log(str(e))
        return 3
    log("stored" if status == 201 else f"already stored under key {args.key!r}")
    print(json.dumps(envelope, ensure_ascii=False, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
