#!/usr/bin/env python3
"""A small local webhook sink for the demo (make demo): it answers every POST
with 200 and appends one JSON line per request (time, path, the
Idempotency-Key header, the body) to a file, so you can see what iotpipe
delivered.

    webhook_sink.py --port 8599 --out /tmp/iotpipe-demo/webhook.jsonl
    tail -f /tmp/iotpipe-demo/webhook.jsonl

Standard library only; listens on 127.0.0.1.
"""

import argparse
import datetime
import http.server
import json
import threading


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8599)
    ap.add_argument("--out", required=True, help="file to append JSON lines to")
    args = ap.parse_args()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(n).decode("utf-8", "replace")
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
            line = {
                "received_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "path": self.path,
                "idempotency_key": self.headers.get("Idempotency-Key"),
                "body": body,
            }
            with lock, open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
