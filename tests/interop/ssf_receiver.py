#!/usr/bin/env python3
"""A Shared Signals receiver nobody here wrote, for tessera's SSF transmitter tests.

It verifies every Security Event Token (RFC 8417) with PyJWT against tessera's JWK Set (read from a file the
test fills from GET /.well-known/jwks.json): `typ` secevent+jwt, the signature, `iss`, `aud`, and `iat`/`jti`.

  serve  --jwks-file F --issuer I --audience A [--fail-first N]
         An RFC 8935 push endpoint on 127.0.0.1 (a free port): prints {"listening": PORT}, then for each push
         {"set": CLAIMS} (answered 202), {"refused": N} for the first N pushes (answered 503: the transmitter
         must retry), or {"invalid": WHY} (answered 400 per RFC 8935 §2.3).
  verify --jwks-file F --issuer I --audience A --sets-file S
         Verifies each SET of the JSON array in S (RFC 8936 poll answers): prints {"set": CLAIMS} per SET.
Every line is JSON, flushed at once.
"""
import argparse
import http.server
import json
import sys

import jwt


def emit(obj):
    print(json.dumps(obj), flush=True)


def verify(token, jwks_file, issuer, audience):
    header = jwt.get_unverified_header(token)
    if header.get("typ") != "secevent+jwt":
        raise ValueError(f"typ is {header.get('typ')!r}")
    with open(jwks_file) as f:
        keys = jwt.PyJWKSet.from_dict(json.load(f))
    key = next((k for k in keys.keys if k.key_id == header.get("kid")), None)
    if key is None:
        raise ValueError("no key in the JWKS has that kid")
    return jwt.decode(
        token,
        key.key,
        algorithms=[header["alg"]],
        audience=audience,
        issuer=issuer,
        options={"require": ["iss", "aud", "iat", "jti"], "verify_exp": False},
    )


def serve(args):
    pushes = {"n": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def answer(self, status, body=None):
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            token = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            pushes["n"] += 1
            if pushes["n"] <= args.fail_first:
                emit({"refused": pushes["n"]})
                return self.answer(503)
            if self.headers.get("Content-Type") != "application/secevent+jwt":
                emit({"invalid": "content-type"})
                return self.answer(400, {"err": "invalid_request", "description": "content type"})
            try:
                claims = verify(token, args.jwks_file, args.issuer, args.audience)
            except Exception as e:  # noqa: BLE001 - any failure to verify is an invalid SET
                emit({"invalid": str(e)})
                return self.answer(400, {"err": "invalid_key", "description": "the SET does not verify"})
            emit({"set": claims, "authorization": self.headers.get("Authorization")})
            return self.answer(202)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    emit({"listening": server.server_address[1]})
    server.serve_forever()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["serve", "verify"])
    parser.add_argument("--jwks-file", required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--audience", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--sets-file")
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args)
    else:
        with open(args.sets_file) as f:
            for token in json.load(f):
                emit({"set": verify(token, args.jwks_file, args.issuer, args.audience)})


if __name__ == "__main__":
    sys.exit(main())
