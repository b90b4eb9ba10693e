"""The README's snippet for httpx-sse, run as written: between the markers
is the README's block, byte for byte (tests/api/clients/third_party.rs
checks). The lines after it follow one stream and print what the snippet
hands over, for the Rust test that runs this script to read:
  EVENT <type> <envelope JSON>   for each event
  REFUSED <status>               once herald refused the stream

usage: python3 tests/python/readme_httpx_sse.py STREAM_URL TOKEN
Needs: python3 -m pip install -r tests/python/requirements.txt
"""

# README snippet: begin
import time

import httpx
from httpx_sse import connect_sse


def subscribe(url, token, handle):
    """Calls handle(type, envelope) for each event, `reset` included.
    Raises PermissionError when herald refuses the token (401) or the
    topics (403); reconnects after anything else, resuming after the last
    event."""
    last_id, retry = None, 3.0
    # The read timeout outlasts herald's 15 s heartbeat.
    with httpx.Client(timeout=httpx.Timeout(5.0, read=45.0)) as client:
        while True:
            headers = {"Authorization": f"Bearer {token}"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                with connect_sse(client, "GET", url, headers=headers) as source:
                    if source.response.status_code in (401, 403):
                        raise PermissionError(source.response.status_code)
                    source.response.raise_for_status()
                    for sse in source.iter_sse():
                        if sse.id:
                            last_id = sse.id
                        if sse.retry is not None:
                            retry = sse.retry / 1000
                        # The opening frame says what the stream is, and
                        # `: ping` comes as a message without data: no events.
                        if sse.event != "stream" and sse.data:
                            handle(sse.event, sse.json())
            except (httpx.TransportError, httpx.HTTPStatusError):
                pass  # dropped, refused, or a 5xx: try again
            time.sleep(retry)
# README snippet: end


if __name__ == "__main__":
    import json
    import sys

    def show(kind, envelope):
        print("EVENT", kind, json.dumps(envelope, separators=(",", ":")), flush=True)

    try:
        subscribe(sys.argv[1], sys.argv[2], show)
    except PermissionError as refused:
        print("REFUSED", refused.args[0], flush=True)
