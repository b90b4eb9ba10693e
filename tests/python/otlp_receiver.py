"""A real OTLP/HTTP receiver for the tests: it decodes what herald exports
with the official schema (the `opentelemetry-proto` package, pinned in
requirements.txt), as a collector would.

It listens on 127.0.0.1, on the port given (0: any free one), and prints
`{"port": N}` as its first line once it accepts. Then each span it receives
is one JSON line: name, kind, trace and span ids in hex, the parent's span
id, links, attributes and the resource's attributes. Lines go to standard
output, or to --out FILE.

With --discard it answers every request without decoding it: an endpoint
that costs herald what a collector would, for benchmarks.

    python3 tests/python/otlp_receiver.py [--port 0] [--out spans.jsonl] [--discard]
"""

import argparse
import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

KINDS = {
    Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
    Span.SPAN_KIND_PRODUCER: "PRODUCER",
    Span.SPAN_KIND_CONSUMER: "CONSUMER",
}


def any_value(value):
    """An OTLP AnyValue as the JSON value it holds."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return value.bytes_value.hex()
    # int_value is an int64: a Python int, as JSON wants it.
    return getattr(value, which)


def attributes(key_values):
    return {kv.key: any_value(kv.value) for kv in key_values}


def spans_of(request):
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "name": span.name,
                    "kind": KINDS.get(span.kind, str(span.kind)),
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "links": [
                        {"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()}
                        for l in span.links
                    ],
                    "attributes": attributes(span.attributes),
                    "status": span.status.code,
                    "resource": resource,
                }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", help="write span lines here instead of stdout")
    parser.add_argument("--discard", action="store_true",
                        help="answer without decoding (benchmarks)")
    args = parser.parse_args()
    out = open(args.out, "a", buffering=1) if args.out else sys.stdout
    lock = threading.Lock()
    empty_answer = ExportTraceServiceResponse().SerializeToString()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.path != "/v1/traces":
                self.answer(404, b"")
                return
            if not args.discard:
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                try:
                    request.ParseFromString(body)
                except Exception:  # noqa: BLE001 - any decoding failure is a 400
                    self.answer(400, b"")
                    return
                lines = [json.dumps(s, sort_keys=True) for s in spans_of(request)]
                with lock:
                    for line in lines:
                        out.write(line + "\n")
                    out.flush()
            self.answer(200, empty_answer)

        def answer(self, status, body):
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
