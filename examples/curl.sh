#!/bin/sh
# A herald session with curl: subscribe, publish, watch the event arrive,
# retry a publish under the same idempotency key, resume after a drop with
# Last-Event-ID, and read the history as JSON.
#
#   sh examples/curl.sh                     # herald on http://127.0.0.1:8080
#   HERALD_URL=http://host:port sh examples/curl.sh
#
# Run by tests/api/clients.rs against a fresh herald.
set -eu

HERALD=${HERALD_URL:-http://127.0.0.1:8080}
TOPIC=${TOPIC:-demo:curl-$$}
dir=$(mktemp -d)
sub=
trap '[ -n "$sub" ] && kill "$sub" 2>/dev/null; rm -rf "$dir"' EXIT

# until FILE PATTERN: wait (up to 10 s) for a line matching PATTERN in FILE.
until_seen() {
    i=0
    until grep -q -- "$2" "$1"; do
        i=$((i + 1))
        if [ "$i" -gt 100 ]; then
            echo "no line matching '$2' after 10 s; got:" >&2
            cat "$1" >&2
            exit 1
        fi
        sleep 0.1
    done
}

publish() { # publish [curl options...]: POST /v1/events, fail on a 4xx/5xx
    curl -sS --fail-with-body "$HERALD/v1/events" -H 'Content-Type: application/json' "$@"
    echo
}

echo "== subscribe to $TOPIC (in the background; -N prints frames as they come)"
curl -sSN "$HERALD/v1/stream?topic=$TOPIC" > "$dir/stream" &
sub=$!
until_seen "$dir/stream" '^retry: '

echo "== publish"
publish -d "{\"topic\":\"$TOPIC\",\"type\":\"deploy.started\",\"data\":{\"version\":\"4.7.11\"}}"

# Keys are global to the deployment: name the event itself, not the attempt.
key="$TOPIC/deploy-4.7.11/finished"
echo "== publish with an idempotency key, twice: one event, the second answer is the first"
publish -H "Idempotency-Key: $key" \
    -d "{\"topic\":\"$TOPIC\",\"type\":\"deploy.finished\",\"data\":{\"ok\":true}}"
publish -H "Idempotency-Key: $key" \
    -d "{\"topic\":\"$TOPIC\",\"type\":\"deploy.finished\",\"data\":{\"ok\":true}}"

echo "== what the subscriber saw"
until_seen "$dir/stream" '^event: deploy.finished'
cat "$dir/stream"
last=$(sed -n 's/^id: //p' "$dir/stream" | tail -n 1)
kill "$sub"
sub=

echo "== while no one listens"
publish -d "{\"topic\":\"$TOPIC\",\"type\":\"deploy.verified\",\"data\":null}"

echo "== resume after id $last, the last one seen, as a reconnecting EventSource does"
curl -sSN -H "Last-Event-ID: $last" "$HERALD/v1/stream?topic=$TOPIC" > "$dir/resumed" &
sub=$!
until_seen "$dir/resumed" '^event: deploy.verified'
cat "$dir/resumed"
kill "$sub"
sub=

echo "== history as JSON"
curl -sS --fail-with-body "$HERALD/v1/events?after=0&topic=$TOPIC"
echo
