#!/usr/bin/env python3
"""A remote_write receiver that checks the AWS SigV4 signature of each request with botocore.

Usage: sigv4_receiver.py SERVICE ACCESS_KEY=SECRET_KEY[:SESSION_TOKEN]...

Listens on 127.0.0.1, a port of the system's choosing, and prints "listening PORT". Each POST
is answered 200 when botocore computes the same signature over the headers the request says it
signed (with the secret key of its access key), 403 otherwise. GET /stats answers
{"ok": N, "bad": N, "keys": {access_key: N}, "errors": [...]} (the last errors).
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SERVICE = sys.argv[1]
KEYS = {}
for arg in sys.argv[2:]:
    access, rest = arg.split("=", 1)
    secret, _, token = rest.partition(":")
    KEYS[access] = (secret, token or None)

lock = threading.Lock()
stats = {"ok": 0, "bad": 0, "keys": {}, "errors": []}


def check(method, path, headers, body):
    """None when the signature is right, else why not."""
    auth = headers.get("authorization", "")
    prefix = "AWS4-HMAC-SHA256 "
    if not auth.startswith(prefix):
        return "no SigV4 Authorization header: %r" % auth
    fields = dict(p.strip().split("=", 1) for p in auth[len(prefix):].split(","))
    access, date, region, service, term = fields["Credential"].split("/")
    if access not in KEYS:
        return "unknown access key %s" % access
    if service != SERVICE or term != "aws4_request":
        return "wrong scope %s" % fields["Credential"]
    secret, token = KEYS[access]
    if token is not None and headers.get("x-amz-security-token") != token:
        return "session token missing or wrong"
    signed = fields["SignedHeaders"].split(";")
    for required in ("host", "x-amz-date"):
        if required not in signed:
            return "%s is not signed" % required
    amz_date = headers.get("x-amz-date", "")
    if not amz_date.startswith(date):
        return "X-Amz-Date %s is not of the scope's day %s" % (amz_date, date)
    request = AWSRequest(
        method=method,
        url="http://%s%s" % (headers["host"], path),
        headers={h: headers[h] for h in signed},
        data=body,
    )
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(access, secret, token), service, region)
    canonical = signer.canonical_request(request)
    want = signer.signature(signer.string_to_sign(request, canonical), request)
    if want != fields["Signature"]:
        return "signature %s, botocore computes %s over:\n%s" % (fields["Signature"], want, canonical)
    return None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        error = check("POST", self.path, headers, body)
        with lock:
            if error is None:
                stats["ok"] += 1
                access = headers["authorization"].split("Credential=")[1].split("/")[0]
                stats["keys"][access] = stats["keys"].get(access, 0) + 1
            else:
                stats["bad"] += 1
                stats["errors"] = (stats["errors"] + [error])[-5:]
        self.send_response(200 if error is None else 403)
        self.end_headers()
        if error is not None:
            self.wfile.write(error.encode())

    def do_GET(self):
        with lock:
            body = json.dumps(stats).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print("listening %d" % server.server_address[1], flush=True)
server.serve_forever()
