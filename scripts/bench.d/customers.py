"""Customers for scripts/bench (standard library only).

  customers.py register BASE COUNT PREFIX OUT   register and log in COUNT customers through the
                                                API; one access token a line in OUT
  customers.py clear-carts BASE TOKENS          DELETE /api/v1/cart for every token's customer
  customers.py mint SECRET TTL IDS OUT          an access token for every user id in IDS, signed
                                                as the shop signs them (src/identity/tokens.rs)

Minting is for the 100k-carts figure: 100k registrations would spend the run in argon2, and the
shop checks an access token by its signature and claims alone.
"""

import base64
import hashlib
import hmac
import http.client
import json
import sys
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

WORKERS = 8
local = threading.local()


def connection(base):
    if getattr(local, "conn", None) is None:
        url = urllib.parse.urlsplit(base)
        local.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    return local.conn


def call(base, method, path, body=None, token=None):
    headers = {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    payload = None if body is None else json.dumps(body)
    for attempt in range(2):
        conn = connection(base)
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, data
        except (http.client.HTTPException, OSError):
            conn.close()
            local.conn = None
            if attempt:
                raise
    raise AssertionError("unreachable")


def register(base, count, prefix, out):
    password = "bench-" + uuid.uuid4().hex

    def one(i):
        email = f"{prefix}-{i}@example.com"
        status, data = call(base, "POST", "/api/v1/auth/register",
                            {"email": email, "password": password, "name": f"Bench Customer {i}"})
        if status != 201:
            raise SystemExit(f"register {email}: {status} {data[:300]!r}")
        status, data = call(base, "POST", "/api/v1/auth/login", {"email": email, "password": password})
        if status != 200:
            raise SystemExit(f"login {email}: {status} {data[:300]!r}")
        return json.loads(data)["access_token"]

    with ThreadPoolExecutor(WORKERS) as pool:
        tokens = list(pool.map(one, range(count)))
    with open(out, "w") as f:
        f.write("\n".join(tokens) + "\n")


def clear_carts(base, tokens_file):
    tokens = [t for t in open(tokens_file).read().split("\n") if t]

    def one(token):
        status, data = call(base, "DELETE", "/api/v1/cart", token=token)
        if status != 204:
            raise SystemExit(f"DELETE /api/v1/cart: {status} {data[:300]!r}")

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, tokens))


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def mint(secret, ttl, ids_file, out):
    key = secret.encode()
    header = b64(json.dumps({"typ": "JWT", "alg": "HS256"}, separators=(",", ":")).encode())
    now = int(time.time())
    with open(out, "w") as f:
        for user in open(ids_file).read().split():
            claims = {"sub": user, "role": "customer", "exp": now + int(ttl), "iat": now,
                      "iss": "shop", "aud": "shop-api", "jti": str(uuid.uuid4()), "typ": "access"}
            signing_input = header + b"." + b64(json.dumps(claims, separators=(",", ":")).encode())
            signature = b64(hmac.new(key, signing_input, hashlib.sha256).digest())
            f.write((signing_input + b"." + signature).decode() + "\n")


def main(argv):
    command = argv[1] if len(argv) > 1 else ""
    if command == "register" and len(argv) == 6:
        register(argv[2], int(argv[3]), argv[4], argv[5])
    elif command == "clear-carts" and len(argv) == 4:
        clear_carts(argv[2], argv[3])
    elif command == "mint" and len(argv) == 6:
        mint(argv[2], argv[3], argv[4], argv[5])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
