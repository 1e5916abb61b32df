#!/usr/bin/env python3
"""TLS and mTLS interop: Python grpcio (stubs generated from proto/) and `requests` calling tessera over TLS.

It uses only what a third-party client would: grpc.ssl_channel_credentials with the CA bundle and, for mTLS, a
client certificate and key; requests with `verify=` and `cert=`. It prints one JSON object: what each call
returned (the issued token's client_id, or the error), for the Rust test to assert.

Usage: tls_interop.py --grpc HOST:PORT --http HOST:PORT --stubs DIR --ca CA.pem --cert C.pem --key K.pem
       (the subject token on stdin)
"""
import argparse
import base64
import json
import os
import sys

AUDIENCE = "https://crm.example"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"


def claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def grpc_exchange(grpc, pb, pb_grpc, target, credentials, subject, task):
    # The server certificate is for "localhost"; the address may be 127.0.0.1.
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(target, credentials, options=options) as channel:
        stub = pb_grpc.TokenBrokerStub(channel)
        request = pb.ExchangeTokenRequest(
            grant_type=TOKEN_EXCHANGE, subject_token=subject, subject_token_type=JWT,
            audience=[AUDIENCE], scope="crm:read", task_id=task)
        try:
            response = stub.ExchangeToken(request, timeout=10)
            return {"client_id": claims(response.access_token).get("client_id")}
        except grpc.RpcError as e:
            return {"error": e.code().name}


def main():
    parser = argparse.ArgumentParser()
    for flag in ["--grpc", "--http", "--stubs", "--ca", "--cert", "--key"]:
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    subject = sys.stdin.read().strip()
    sys.path.insert(0, os.path.abspath(args.stubs))
    import grpc
    import requests
    from tessera.v1 import broker_pb2 as pb
    from tessera.v1 import broker_pb2_grpc as pb_grpc

    read = lambda p: open(p, "rb").read()
    out = {}
    mtls = grpc.ssl_channel_credentials(read(args.ca), read(args.key), read(args.cert))
    out["grpc_mtls"] = grpc_exchange(grpc, pb, pb_grpc, args.grpc, mtls, subject, "tls-py-1")
    tls_only = grpc.ssl_channel_credentials(read(args.ca))
    out["grpc_no_cert"] = grpc_exchange(grpc, pb, pb_grpc, args.grpc, tls_only, subject, "tls-py-2")

    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": JWT,
            "audience": AUDIENCE, "scope": "crm:read", "task_id": "tls-py-3"}
    url = f"https://localhost:{args.http.rsplit(':', 1)[1]}/oauth2/token"
    r = requests.post(url, data=form, verify=args.ca, cert=(args.cert, args.key), timeout=10)
    out["http_mtls"] = {"status": r.status_code, "client_id": claims(r.json()["access_token"]).get("client_id")
                        if r.status_code == 200 else None}
    r = requests.post(url, data=form, verify=args.ca, timeout=10)
    out["http_no_cert"] = {"status": r.status_code, "error": r.json().get("error")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
