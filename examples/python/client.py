#!/usr/bin/env python3
"""A kinfer client that needs nothing but the Python standard library.

It does what the original service's client did: start a receiver for the
callback, submit {"id", "callback_url"} to POST /v1/inferences, print the
server's answer, then print the callback when it arrives. It waits --timeout
seconds at most, and exits 0 only for a callback whose status is "succeeded".

With --count N it submits N requests one after another, ids ID-1 .. ID-N, each
once the previous one's callback has arrived, and prints how long each took
from submit to callback: against a pool (a model with workers), the first may
wait for a pod to start and the others find it waiting.

Submitting the same id and body again is safe: once a request has ended and
its callback was delivered, the server sends the callback again.

    python3 examples/python/client.py                      # against make run
    python3 examples/python/client.py --input '{"text": "great movie"}' --model sentiment
    python3 examples/python/client.py --input '{"text": "great movie"}' --model sentiment --id run-7 --count 3
    KINFER_TOKEN=$(kubectl create token my-client) python3 examples/python/client.py --server https://kinfer.example.com

In a cluster the shim checks a Kubernetes bearer token (--token or KINFER_TOKEN).
Callbacks are signed when the model has a signing secret; verify them with any
Standard Webhooks library before trusting them.
"""

import argparse
import http.server
import json
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request


def parse_args():
    p = argparse.ArgumentParser(description="Submit an inference to kinfer and wait for its callback.")
    p.add_argument("--server", default=os.environ.get("KINFER_URL", "http://localhost:8000"),
                   help="the shim's base URL (default: $KINFER_URL or http://localhost:8000)")
    p.add_argument("--listen", default="localhost:8001", help="host:port the callback receiver listens on")
    p.add_argument("--callback-url", help="URL kinfer should POST to (default: http://LISTEN/v1/results)")
    p.add_argument("--id", default="1234", help="the request's id")
    p.add_argument("--model", help="the InferenceModel to run (default: the server's default)")
    p.add_argument("--input", help="the input, as JSON")
    p.add_argument("--namespace", help="submit to /v1/namespaces/NAMESPACE/inferences")
    p.add_argument("--token", default=os.environ.get("KINFER_TOKEN"), help="a Kubernetes bearer token")
    p.add_argument("--count", type=positive, default=1,
                   help="submit this many requests one after another, with ids ID-1 .. ID-N (default: 1, id ID)")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for each callback (default: 120)")
    return p.parse_args()


def positive(value):
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def start_receiver(listen, callbacks):
    host, _, port = listen.rpartition(":")

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            # Answer first: kinfer retries until it gets a 2xx.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"message": "Result received"}')
            callbacks.put((self.headers, body))  # header names are case-insensitive here

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((host, int(port)), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def namespace_path(args):
    return "/v1/namespaces/%s" % args.namespace if args.namespace else "/v1"


def submit(args, request_id, callback_url):
    body = {"id": request_id, "callback_url": callback_url}
    if args.model:
        body["model"] = args.model
    if args.input:
        body["input"] = json.loads(args.input)
    url = args.server.rstrip("/") + namespace_path(args) + "/inferences"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    if args.token:
        request.add_header("Authorization", "Bearer " + args.token)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


# What each callback status means, for a status other than "succeeded".
OUTCOMES = {
    "failed": "the inference failed",
    "canceled": "the inference was canceled before it finished",
    "expired": "the inference waited longer than its queue timeout to start, and never ran",
}


def outcome(body):
    """Says why a callback body is not a success, or None for a success."""
    try:
        callback = json.loads(body)
    except ValueError:
        return "the callback is not JSON"
    status = callback.get("status")
    if status == "succeeded":
        return None
    why = OUTCOMES.get(status, "the callback has an unknown status %r" % status)
    if callback.get("error"):
        why += ": " + callback["error"]
    return why


def callback_id(body):
    try:
        return str(json.loads(body).get("id"))
    except (ValueError, AttributeError):
        return None


def wait_for_callback(callbacks, request_id, deadline):
    """Returns the first callback for request_id, or None at the deadline.

    Callbacks for other ids (a late redelivery of an earlier one) are skipped."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            headers, body = callbacks.get(timeout=left)
        except queue.Empty:
            return None
        if callback_id(body) == request_id:
            return headers, body


def run_one(args, request_id, callbacks, callback_url):
    """Submits one request and waits for its callback; returns an exit code."""
    submitted = time.monotonic()
    status, answer = submit(args, request_id, callback_url)
    print("Server answered %d: %s" % (status, json.dumps(answer)), flush=True)
    if status != 202:
        return 1

    callback = wait_for_callback(callbacks, request_id, submitted + args.timeout)
    if callback is None:
        status_url = "%s%s/inferences/%s" % (args.server.rstrip("/"), namespace_path(args),
                                             urllib.parse.quote(request_id, safe=""))
        print("No callback within %g s, so giving up (--timeout). The request may still be waiting or running, "
              "or its callback may not reach %s. See where it stands: GET %s"
              % (args.timeout, callback_url, status_url), file=sys.stderr)
        return 1
    took = time.monotonic() - submitted
    headers, body = callback
    print("Callback received (webhook-id %s): %s" % (headers.get("webhook-id", "none"), body.decode()), flush=True)
    if args.count > 1:
        print("Request %s: callback %.0f ms after submit" % (request_id, took * 1000), flush=True)
    why = outcome(body)
    if why:
        print("Inference %s did not succeed: %s" % (request_id, why), file=sys.stderr)
        return 1
    return 0


def main():
    args = parse_args()
    callbacks = queue.Queue()
    receiver = start_receiver(args.listen, callbacks)
    callback_url = args.callback_url or "http://%s/v1/results" % args.listen
    ids = [args.id] if args.count == 1 else ["%s-%d" % (args.id, n) for n in range(1, args.count + 1)]
    try:
        for request_id in ids:
            code = run_one(args, request_id, callbacks, callback_url)
            if code != 0:
                return code
    finally:
        receiver.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
