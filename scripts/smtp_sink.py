#!/usr/bin/env python3
"""An SMTP sink for the test suite, on aiosmtpd (a real SMTP server over TCP).

It keeps every message it accepts and serves them as JSON over HTTP:

  GET /messages?to=ADDRESS   messages whose envelope recipients include ADDRESS (all without ?to),
                             each {from, to, subject, message_id, text, html, raw}
  GET /refusals?to=ADDRESS   {"count": n}: how often RCPT TO:ADDRESS was refused
  GET /health                {"status": "ok"}

Refusals are chosen by the recipient, so tests sharing one sink never affect each other:
  refuse-*@...   answered 451 (transient: the sender should retry)
  reject-*@...   answered 550 (permanent)

Started by scripts/test through ensure_smtp_sink (scripts/services.sh), from a venv in
$SHOP_TOOLS_DIR.
"""

import argparse
import email
import email.policy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from aiosmtpd.controller import Controller

LOCK = threading.Lock()
MESSAGES = []
REFUSALS = {}


def body(parsed, kind):
    part = parsed.get_body(preferencelist=(kind,))
    return part.get_content() if part is not None else None


class Sink:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("refuse-") or local.startswith("reject-"):
            with LOCK:
                REFUSALS[address.lower()] = REFUSALS.get(address.lower(), 0) + 1
            if local.startswith("refuse-"):
                return "451 4.3.0 Refused by the test sink, try again later"
            return "550 5.1.1 Rejected by the test sink"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        record = {
            "from": envelope.mail_from,
            "to": [address.lower() for address in envelope.rcpt_tos],
            "subject": str(parsed.get("Subject", "")),
            "message_id": str(parsed.get("Message-ID", "")),
            "text": body(parsed, "plain"),
            "html": body(parsed, "html"),
            "raw": raw.decode("utf-8", "replace"),
        }
        with LOCK:
            MESSAGES.append(record)
        return "250 Message accepted for delivery"


class Api(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        to = parse_qs(url.query).get("to", [None])[0]
        to = to.lower() if to else None
        with LOCK:
            if url.path == "/messages":
                answer = [m for m in MESSAGES if to is None or to in m["to"]]
            elif url.path == "/refusals":
                answer = {"count": REFUSALS.get(to, 0)}
            elif url.path == "/health":
                answer = {"status": "ok"}
            else:
                self.send_error(404)
                return
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args()
    controller = Controller(Sink(), hostname=args.host, port=args.smtp_port)
    controller.start()
    try:
        ThreadingHTTPServer((args.host, args.http_port), Api).serve_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
