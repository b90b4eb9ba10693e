"""The README's snippet for sseclient-py over requests, run as written:
between the markers is the README's block, byte for byte
(tests/api/clients/third_party.rs checks). The lines after it follow one
stream and print what the snippet hands over, for the Rust test that runs
this script to read:
  EVENT <type> <envelope JSON>   for each event
  REFUSED <status>               once herald refused the stream

usage: python3 tests/python/readme_sseclient.py STREAM_URL TOKEN
Needs: python3 -m pip install -r tests/python/requirements.txt
"""

# README snippet: begin
import json
import time

import requests
import sseclient


def subscribe(url, token, handle):
    """Calls handle(type, envelope) for each event, `reset` included.
    Raises PermissionError when herald refuses the token (401) or the
    topics (403); reconnects after anything else, resuming after the last
    event."""
    last_id, retry = None, 3.0
    while True:
        headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {token}"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        try:
            # The read timeout outlasts herald's 15 s heartbeat.
            with requests.get(url, headers=headers, stream=True, timeout=(5, 45)) as response:
                if response.status_code in (401, 403):
                    raise PermissionError(response.status_code)
                response.raise_for_status()
                for event in sseclient.SSEClient(response).events():
                    if event.id:
                        last_id = event.id
                    if event.retry:
                        retry = int(event.retry) / 1000
                    # The opening frame says what the stream is; no event.
                    if event.event != "stream":
                        handle(event.event, json.loads(event.data))
        except requests.RequestException:
            pass  # dropped, refused, or a 5xx: try again
        time.sleep(retry)
# README snippet: end


if __name__ == "__main__":
    import sys

    def show(kind, envelope):
        print("EVENT", kind, json.dumps(envelope, separators=(",", ":")), flush=True)

    try:
        subscribe(sys.argv[1], sys.argv[2], show)
    except PermissionError as refused:
        print("REFUSED", refused.args[0], flush=True)
