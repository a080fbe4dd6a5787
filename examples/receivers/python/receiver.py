"""Receives kinfer's callbacks and verifies them before trusting them.

    WEBHOOK_SECRET=whsec_...        verify v1 signatures with the model's shared key
    WEBHOOK_PUBLIC_KEYS="whpk_..."  or v1a signatures with its public keys (GET /v1/webhook-keys)
    PORT=8001                       where to listen, on 127.0.0.1

Needs `pip install standardwebhooks`, and `cryptography` for public keys. It
prints each verified callback as a line of JSON and answers 204; a callback
that does not verify gets 401 and kinfer tries again later.
"""

import base64
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

TOLERANCE_SECONDS = 5 * 60


def verify_ed25519(public_keys, body, headers):
    """Checks v1a signatures: any entry that one of the trusted public keys
    verifies over "{webhook-id}.{webhook-timestamp}.{body}"."""
    from cryptography.exceptions import InvalidSignature

    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise WebhookVerificationError("Missing required headers")
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        raise WebhookVerificationError("Timestamp outside the tolerance")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    for entry in signatures.split(" "):
        version, _, signature = entry.partition(",")
        if version != "v1a" or not signature:
            continue
        for key in public_keys:
            try:
                key.verify(base64.b64decode(signature), signed)
                return json.loads(body)
            except (InvalidSignature, ValueError):
                pass
    raise WebhookVerificationError("No matching signature found")


def make_verifier():
    public = os.environ.get("WEBHOOK_PUBLIC_KEYS", "").split()
    if public:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        keys = [Ed25519PublicKey.from_public_bytes(base64.b64decode(k.removeprefix("whpk_"))) for k in public]
        return lambda body, headers: verify_ed25519(keys, body, headers)
    webhook = Webhook(os.environ["WEBHOOK_SECRET"])
    return lambda body, headers: webhook.verify(body, headers)


verify = make_verifier()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        # Verify the body exactly as it arrived: parsing and re-encoding it
        # first would change the bytes that were signed.
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            event = verify(body, headers)
        except (WebhookVerificationError, ValueError) as err:
            print(f"refused {headers.get('webhook-id')}: {err}", file=sys.stderr, flush=True)
            self.send_response(401)
            self.end_headers()
            return
        # webhook-id stays the same across retries: keep it to act on each callback once.
        print(json.dumps({"webhookID": headers["webhook-id"], "event": event}), flush=True)
        self.send_response(204)
        self.end_headers()


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8001"))), Receiver)
    print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()
