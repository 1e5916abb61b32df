"""An OAuth client nobody here wrote (authlib, over requests) against tessera's plain-OAuth face: the RFC 8693
token exchange with client_secret_basic and client_secret_post, the RFC 7523 jwt-bearer grant, RFC 7662
introspection (and RFC 9701's signed form, checked with PyJWT against the JWK Set) and RFC 7009 revocation;
the AS metadata document (RFC 8414) tells it where each endpoint is.

Assertions come from the test (files), so this script only speaks OAuth. The last line is a summary the Rust
test reads: `oauth interop: N passed, 0 failed`.
"""

import argparse
import sys

import jwt
import requests
from authlib.integrations.requests_client import OAuth2Session

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"

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
    p.add_argument("--assertion-file", required=True)
    p.add_argument("--actor-file", required=True)
    p.add_argument("--client-secret", required=True)
    p.add_argument("--audience", required=True)
    args = p.parse_args()
    assertion = open(args.assertion_file).read().strip()
    actor = open(args.actor_file).read().strip()

    metadata = requests.get(f"{args.base}/.well-known/oauth-authorization-server", timeout=10).json()
    check("metadata issuer", metadata.get("issuer") == args.issuer, metadata)
    # The metadata's URLs are under the public issuer; here that issuer is not where the test serves, so the
    # paths are taken from it and joined to the test's base.
    path = lambda key: args.base + metadata[key][len(args.issuer.rstrip("/")):]
    token_url, introspect_url, revoke_url = path("token_endpoint"), path("introspection_endpoint"), path("revocation_endpoint")
    check("grant types", TOKEN_EXCHANGE in metadata["grant_types_supported"] and JWT_BEARER in metadata["grant_types_supported"])

    tokens = {}
    for method in ("client_secret_basic", "client_secret_post"):
        session = OAuth2Session("orchestrator", args.client_secret, token_endpoint_auth_method=method)
        token = session.fetch_token(
            token_url,
            grant_type=TOKEN_EXCHANGE,
            subject_token=assertion,
            subject_token_type=JWT,
            actor_token=actor,
            actor_token_type=JWT,
            audience=args.audience,
            scope="crm:read",
            task_id=f"authlib-{method}",
        )
        check(f"{method}: access token", bool(token.get("access_token")), token)
        check(f"{method}: issued_token_type", token.get("issued_token_type") == ACCESS_TOKEN, token)
        check(f"{method}: token_type", str(token.get("token_type")).lower() == "bearer", token)
        check(f"{method}: scope", token.get("scope") == "crm:read", token)
        tokens[method] = token["access_token"]

    bearer = OAuth2Session("orchestrator", args.client_secret).fetch_token(
        token_url, grant_type=JWT_BEARER, assertion=assertion, audience=args.audience, scope="crm:read", task_id="authlib-bearer"
    )
    check("jwt-bearer: access token", bool(bearer.get("access_token")), bearer)

    # A refusal reaches authlib as the OAuth error it is.
    try:
        OAuth2Session("orchestrator", args.client_secret).fetch_token(
            token_url, grant_type=TOKEN_EXCHANGE, subject_token=assertion, subject_token_type=JWT,
            audience=args.audience, scope="crm:export", task_id="authlib-denied",
        )
        check("refusal", False, "a token was issued for crm:export")
    except Exception as e:  # authlib raises OAuthError with the RFC 6749 code
        check("refusal is invalid_scope", getattr(e, "error", None) == "invalid_scope", repr(e))

    gateway = OAuth2Session("gateway", args.client_secret)
    answer = gateway.introspect_token(introspect_url, token=tokens["client_secret_basic"]).json()
    check("introspect: active", answer.get("active") is True, answer)
    check("introspect: audience", answer.get("aud") == args.audience, answer)
    check("introspect: act", isinstance(answer.get("act"), dict) and bool(answer["act"].get("sub")), answer)
    check("introspect: task", answer.get("task_id") == "authlib-client_secret_basic", answer)

    # RFC 9701: the same answer as a JWT signed by tessera, verified by PyJWT against the published JWK Set.
    signed = requests.post(
        introspect_url,
        data={"token": tokens["client_secret_basic"]},
        auth=("gateway", args.client_secret),
        headers={"Accept": "application/token-introspection+jwt"},
        timeout=10,
    )
    check("introspect as JWT: media type", signed.headers.get("content-type") == "application/token-introspection+jwt", signed.headers)
    jwks = jwt.PyJWKClient(path("jwks_uri"))
    key = jwks.get_signing_key_from_jwt(signed.text)
    claims = jwt.decode(signed.text, key.key, algorithms=["EdDSA", "ES256"], audience="gateway", issuer=args.issuer)
    check("introspect as JWT: typ", jwt.get_unverified_header(signed.text).get("typ") == "token-introspection+jwt")
    check("introspect as JWT: answer", claims.get("token_introspection", {}).get("active") is True, claims)

    # The gateway has no right to revoke; the loopback client (dev mode's demo client) does.
    revoked = requests.post(revoke_url, data={"token": tokens["client_secret_basic"], "token_type_hint": "access_token"}, timeout=10)
    check("revoke: 200", revoked.status_code == 200, revoked.text)
    answer = gateway.introspect_token(introspect_url, token=tokens["client_secret_basic"]).json()
    check("introspect after revoke: inactive", answer == {"active": False}, answer)
    answer = gateway.introspect_token(introspect_url, token=tokens["client_secret_post"]).json()
    check("the other token is still active", answer.get("active") is True, answer)

    print(f"oauth interop: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
