"""A client assertion made by a library nobody here wrote: authlib's `PrivateKeyJWT` (RFC 7523 §2.2
`private_key_jwt`, signed with joserfc) authenticating an OAuth2Session against tessera's HTTP face, for the
RFC 8693 token exchange and RFC 7662 introspection; and the same library's assertion replayed by hand, which
tessera must refuse (each assertion is good for one request).

The client's private key and the subject assertion come from the test (files). The last line is a summary the
Rust test reads: `client assertion interop: N passed, 0 failed`.
"""

import argparse
import sys

import jwt
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from joserfc.jwk import ECKey

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

passed, failed = 0, 0


def check(what, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}: {detail}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True, help="the HTTP face, e.g. http://127.0.0.1:8080")
    p.add_argument("--issuer", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--key-file", required=True, help="the client's PKCS#8 PEM private key (P-256)")
    p.add_argument("--kid", required=True)
    p.add_argument("--assertion-file", required=True)
    p.add_argument("--audience", required=True)
    args = p.parse_args()
    key = ECKey.import_key(open(args.key_file).read())
    subject = open(args.assertion_file).read().strip()

    metadata = requests.get(f"{args.base}/.well-known/oauth-authorization-server", timeout=10).json()
    check("private_key_jwt advertised", "private_key_jwt" in metadata["token_endpoint_auth_methods_supported"], metadata)
    check("ES256 advertised", "ES256" in metadata.get("token_endpoint_auth_signing_alg_values_supported", []), metadata)
    # The assertion's `aud` is the token endpoint as the metadata names it (the public URL); the test serves
    # the face elsewhere, so requests go to the test's base with the same paths.
    token_endpoint = metadata["token_endpoint"]
    path = lambda url: args.base + url[len(args.issuer.rstrip("/")):]
    token_url, introspect_url = path(token_endpoint), path(metadata["introspection_endpoint"])

    session = OAuth2Session(args.client_id, key, token_endpoint_auth_method="private_key_jwt")
    session.register_client_auth_method(PrivateKeyJWT(token_endpoint, headers={"kid": args.kid}, alg="ES256"))
    issued = []
    for task in ("authlib-pkjwt-1", "authlib-pkjwt-2"):
        # Each request carries a fresh assertion (authlib mints a new `jti`), so both succeed.
        token = session.fetch_token(
            token_url,
            grant_type=TOKEN_EXCHANGE,
            subject_token=subject,
            subject_token_type=JWT,
            audience=args.audience,
            scope="crm:read",
            task_id=task,
        )
        claims = jwt.decode(token["access_token"], options={"verify_signature": False})
        check(f"exchange {task}", claims.get("client_id") == args.client_id and claims.get("task_id") == task, claims)
        issued.append(token["access_token"])

    answer = session.introspect_token(introspect_url, token=issued[0]).json()
    check("introspection authenticated by private_key_jwt", answer.get("active") is True, answer)

    # One assertion, by the same library, sent twice by hand: the second is a replay.
    assertion = private_key_jwt_sign(
        key, client_id=args.client_id, token_endpoint=token_endpoint, header={"kid": args.kid}, alg="ES256"
    )
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": JWT,
        "audience": args.audience,
        "scope": "crm:read",
        "task_id": "authlib-replay",
        "client_assertion_type": JWT_BEARER_ASSERTION,
        "client_assertion": assertion,
    }
    first = requests.post(token_url, data=form, timeout=10)
    check("first use", first.status_code == 200 and "access_token" in first.json(), first.text)
    second = requests.post(token_url, data=form, timeout=10)
    body = second.json()
    check("replay refused", second.status_code == 401 and body.get("error") == "invalid_client", second.text)
    check("replay issued nothing", "access_token" not in body, body)
    check("replay does not echo the assertion", assertion not in second.text, second.text)

    print(f"client assertion interop: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
