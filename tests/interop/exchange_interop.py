#!/usr/bin/env python3
"""Independent interop client for the tessera token broker.

It uses only what a third-party client would: grpcio with stubs generated from proto/tessera/v1/broker.proto,
grpcio-status for the google.rpc error details, and PyJWT (with cryptography) both to mint the upstream workload
assertions and to verify the issued tokens against GetJwks, and to sign DPoP proofs (RFC 9449) whose key's RFC 7638
thumbprint joserfc (authlib's JOSE library) computes. It shares no code with the Rust implementation.

Exit status: 0 if every check passed, 1 if any failed, 2 on a usage or environment problem.
The last line printed is "interop: N passed, M failed".
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import uuid

GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TT_JWT = "urn:ietf:params:oauth:token-type:jwt"
TT_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
SCOPE = "crm:read"
OTHER_AUDIENCE = "https://other.example"
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "jti", "sub", "aud", "iss"]
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
LEEWAY = 5  # seconds of clock tolerance when verifying issued tokens
RPC_TIMEOUT = 10  # seconds per call
LEAK_WINDOW = 8  # an error text containing this many consecutive signature characters counts as echoing it

PASSED, FAILED = [], []


def check(name, cond, detail=""):
    """Record one check; a failure is printed with its name and the reason, and the run goes on."""
    if cond:
        PASSED.append(name)
        print(f"ok   {name}", flush=True)
    else:
        FAILED.append(name)
        print(f"FAIL {name}: {detail}", flush=True)
    return bool(cond)


def guarded(name, fn, *args):
    """Run one step; an unexpected exception becomes a failed check named `name` rather than a traceback."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - report and keep going
        check(name, False, f"unexpected {describe(e)}")
        return None


def describe(e):
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        infos, _ = error_infos(e)
        reasons = ",".join(f"{i.domain}/{i.reason}" for i in infos) or "none"
        return f"gRPC error {e.code().name}: {e.details()!r} (ErrorInfo: {reasons})"
    return f"{type(e).__name__}: {e}"


def import_deps(stubs_dir):
    """Third-party imports happen after argument parsing so that --help works anywhere."""
    global grpc, jwt, rpc_status, error_details_pb2, serialization, pb, pb_grpc
    sys.path.insert(0, os.path.abspath(stubs_dir))
    try:
        import grpc
        import jwt
        from cryptography.hazmat.primitives import serialization
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status
        from tessera.v1 import broker_pb2 as pb
        from tessera.v1 import broker_pb2_grpc as pb_grpc
    except ImportError as e:
        print(f"interop: cannot import a dependency ({e}); need grpcio, grpcio-status, PyJWT[crypto] and "
              f"tessera/v1/broker_pb2*.py under --stubs {stubs_dir}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------- fixtures and hand-made tokens

class Fixtures:
    def __init__(self, root):
        self.root = root

    def _read(self, name):
        with open(os.path.join(self.root, name), "rb") as f:
            return f.read()

    def key(self, name):
        return serialization.load_pem_private_key(self._read(f"{name}.key.pem"), password=None)

    def jwks(self, name):
        return json.loads(self._read(f"{name}.jwks.json"))

    def kid(self, name):
        return self.jwks(name)["keys"][0]["kid"]

    def claims(self, name):
        return json.loads(self._read(os.path.join("claims", f"{name}.json")))


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj):
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def kubernetes_claims(fx, issuer, iat, exp, fresh_jti=False):
    c = fx.claims("kubernetes")
    c.update(aud=[issuer], iat=iat, nbf=iat, exp=exp)
    c["kubernetes.io"]["warnafter"] = iat + 300
    if fresh_jti:  # one assertion per request, so replay protection cannot mask the error under test
        c["jti"] = str(uuid.uuid4())
    return c


def mint_kubernetes(fx, issuer, now, fresh_jti=True, age=0, lifetime=600):
    c = kubernetes_claims(fx, issuer, now - age, now - age + lifetime, fresh_jti)
    return jwt.encode(c, fx.key("kubernetes"), algorithm="RS256", headers={"kid": fx.kid("kubernetes")}), c


def mint_spiffe(fx, issuer, now):
    c = fx.claims("spiffe")
    c.update(aud=[issuer], iat=now, exp=now + 600)
    c.pop("iss", None)
    return jwt.encode(c, fx.key("spiffe"), algorithm="ES256", headers={"kid": fx.kid("spiffe")}), c


def verify_with_fixture_jwks(fx, name, token, alg, issuer):
    """Self-check: the assertion verifies against the fixture JWKS, so a broker rejection is not a fixture bug."""
    keyset = jwt.PyJWKSet.from_dict(fx.jwks(name))
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(token, keyset[kid].key, algorithms=[alg], audience=issuer)


def alg_none_token(claims, kid):
    return f"{b64json({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{b64json(claims)}."


def hs256_with_public_key_token(fx, claims):
    """The RS256/HS256 key-confusion attack: HMAC keyed with the issuer's public key PEM."""
    secret = fx.key("kubernetes").public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': fx.kid('kubernetes')})}.{b64json(claims)}"
    return f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def tamper_signature(token):
    # Change the FIRST signature character: the last one may carry only padding bits and decode unchanged.
    head, payload, sig = token.split(".")
    return f"{head}.{payload}.{'B' if sig[0] == 'A' else 'A'}{sig[1:]}"


# ---------------------------------------------------------------- broker calls and verification

def exchange_request(args, subject, subject_type=TT_JWT, actor=None, **overrides):
    fields = dict(grant_type=GRANT_TOKEN_EXCHANGE, subject_token=subject, subject_token_type=subject_type,
                  audience=[args.target], scope=SCOPE, task_id=args.task_id)
    if actor:
        fields.update(actor_token=actor, actor_token_type=TT_JWT)
    fields.update(overrides)
    return pb.ExchangeTokenRequest(**fields)


def check_response(label, resp, max_expires_in=None):
    check(f"{label}: access_token present", bool(resp.access_token), "empty access_token")
    check(f"{label}: token_type is Bearer", resp.token_type == "Bearer", f"got {resp.token_type!r}")
    check(f"{label}: issued_token_type is access_token", resp.issued_token_type == TT_ACCESS_TOKEN,
          f"got {resp.issued_token_type!r}")
    check(f"{label}: scope is {SCOPE}", resp.scope == SCOPE, f"got {resp.scope!r}")
    limit = max_expires_in or float("inf")
    check(f"{label}: expires_in in (0, {max_expires_in or 'inf'}]", 0 < resp.expires_in <= limit,
          f"got {resp.expires_in}")


def verify_access_token(label, token, keyset, raw_jwks, args):
    """Verify an issued token with PyJWT against the broker's JWKS; return its claims or None."""
    header = jwt.get_unverified_header(token)
    check(f"{label}: header typ is at+jwt", header.get("typ") == "at+jwt", f"header {header}")
    kid = header.get("kid")
    if not check(f"{label}: header kid is in the JWKS", kid in raw_jwks, f"kid {kid!r}, JWKS has {list(raw_jwks)}"):
        return None
    alg = raw_jwks[kid].get("alg") or keyset[kid].algorithm_name
    try:
        claims = jwt.decode(token, keyset[kid].key, algorithms=[alg], audience=args.target,
                            issuer=args.broker_issuer, leeway=LEEWAY, options={"require": REQUIRED_CLAIMS})
    except jwt.InvalidTokenError as e:
        check(f"{label}: signature and registered claims verify ({alg})", False, f"{type(e).__name__}: {e}")
        return None
    check(f"{label}: signature and registered claims verify ({alg})", True)
    check(f"{label}: aud is exactly the target string", claims["aud"] == args.target,
          f"aud {claims['aud']!r}, want the plain string {args.target!r}")
    check(f"{label}: scope claim is {SCOPE}", claims.get("scope") == SCOPE, f"scope {claims.get('scope')!r}")
    check(f"{label}: task_id claim", claims.get("task_id") == args.task_id, f"task_id {claims.get('task_id')!r}")
    check(f"{label}: client_id claim present", bool(claims.get("client_id")), f"claims {sorted(claims)}")
    return claims


def error_infos(err):
    """ErrorInfo details of a failed call, plus a reason why there are none."""
    try:
        status = rpc_status.from_call(err)
    except ValueError as e:
        return [], f"malformed grpc-status-details-bin: {e}"
    if status is None:
        return [], "no grpc-status-details-bin trailer"
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    return infos, None if infos else f"no ErrorInfo among {[d.type_url for d in status.details]}"


def echoed(text, token):
    if token in text:
        return "the whole token"
    sig = token.split(".")[2] if token.count(".") == 2 else ""
    for i in range(len(sig) - LEAK_WINDOW + 1):
        if sig[i:i + LEAK_WINDOW] in text:
            return f"signature fragment {sig[i:i + LEAK_WINDOW]!r}"
    return None


def expect_rejected(stub, label, req, code, reason):
    try:
        stub.ExchangeToken(req, timeout=RPC_TIMEOUT)
    except grpc.RpcError as e:
        err = e
    else:
        check(f"{label}: rejected", False, f"broker issued a token; expected {code.name} / {reason}")
        return
    check(f"{label}: status {code.name}", err.code() == code, f"got {err.code().name}: {err.details()!r}")
    infos, why = error_infos(err)
    got = [(i.domain, i.reason) for i in infos]
    check(f"{label}: ErrorInfo tessera/{reason}", ("tessera", reason) in got, why or f"got {got}")
    text = " ".join([err.details() or ""] + [f"{i.reason} {dict(i.metadata)}" for i in infos])
    leaks = [f"{what} {leak}" for what, tok in (("subject_token", req.subject_token), ("actor_token", req.actor_token))
             if tok and (leak := echoed(text, tok))]
    check(f"{label}: error text does not echo the tokens", not leaks, f"{leaks} in {text[:120]!r}...")


# ---------------------------------------------------------------- the run

def run(args):
    fx = Fixtures(args.fixtures)
    channel = grpc.insecure_channel(args.addr)
    try:
        grpc.channel_ready_future(channel).result(timeout=args.connect_timeout)
    except grpc.FutureTimeoutError:
        check("0 connect", False, f"no gRPC connection to {args.addr} within {args.connect_timeout}s")
        return
    stub = pb_grpc.TokenBrokerStub(channel)
    iss, now = args.broker_issuer, int(time.time())

    def step1():  # the template's own jti, aud/iat/nbf/exp/warnafter set as a kubelet would
        c = kubernetes_claims(fx, iss, now, now + 600)
        tok = jwt.encode(c, fx.key("kubernetes"), algorithm="RS256", headers={"kid": fx.kid("kubernetes")})
        check("1 kubernetes assertion verifies against its fixture JWKS",
              verify_with_fixture_jwks(fx, "kubernetes", tok, "RS256", iss)["sub"] == c["sub"])
        return tok, c
    subject, subject_claims = guarded("1 mint kubernetes assertion", step1) or (None, None)

    def step2():
        tok, c = mint_spiffe(fx, iss, now)
        check("2 SPIFFE JWT-SVID verifies against its fixture JWKS",
              verify_with_fixture_jwks(fx, "spiffe", tok, "ES256", iss)["sub"] == c["sub"])
        return tok
    actor = guarded("2 mint SPIFFE actor assertion", step2)
    spiffe_id = fx.claims("spiffe")["sub"]

    def step3():
        resp = stub.GetJwks(pb.GetJwksRequest(), timeout=RPC_TIMEOUT)
        raw = json.loads(resp.jwks_json)["keys"]
        keyset = jwt.PyJWKSet.from_json(resp.jwks_json)
        check("3 JWKS has keys, all usable by PyJWT", len(raw) >= 1 and len(keyset.keys) == len(raw),
              f"{len(raw)} keys published, {len(keyset.keys)} usable")
        check("3 every JWK has kid and alg", all(k.get("kid") and k.get("alg") for k in raw), f"keys {raw}")
        check("3 no private key material", not any(PRIVATE_JWK_MEMBERS & set(k) for k in raw), f"keys {raw}")
        check("3 keys[] and jwks_json agree", {k.kid for k in resp.keys} == {k.get("kid") for k in raw},
              f"{[k.kid for k in resp.keys]} vs {[k.get('kid') for k in raw]}")
        return keyset, {k["kid"]: k for k in raw if k.get("kid")}
    keyset, raw_jwks = guarded("3 GetJwks", step3) or (None, {})

    issued = parent = None
    if subject and actor:
        def step4():
            resp = stub.ExchangeToken(exchange_request(args, subject, actor=actor), timeout=RPC_TIMEOUT)
            check_response("4 exchange", resp)
            return resp.access_token or None
        issued = guarded("4 exchange", step4)
    else:
        check("4 exchange", False, "cannot run: no subject or actor assertion (steps 1-2)")

    if issued and keyset:
        def step5():
            claims = verify_access_token("5 issued token", issued, keyset, raw_jwks, args)
            if claims is None:
                return None
            check("5 sub is the kubernetes service account", claims["sub"] == subject_claims["sub"],
                  f"sub {claims['sub']!r}")
            act = claims.get("act")
            check("5 act.sub is the SPIFFE ID", isinstance(act, dict) and act.get("sub") == spiffe_id, f"act {act!r}")
            check("5 exp <= subject assertion exp", claims["exp"] <= subject_claims["exp"],
                  f"exp {claims['exp']} > {subject_claims['exp']}")
            return claims
        parent = guarded("5 verify issued token", step5)

        def step6():
            kid = jwt.get_unverified_header(issued)["kid"]
            try:
                jwt.decode(tamper_signature(issued), keyset[kid].key, algorithms=[raw_jwks[kid]["alg"]],
                           audience=args.target, issuer=iss, leeway=LEEWAY)
            except jwt.InvalidSignatureError:
                check("6 tampered signature is rejected", True)
            else:
                check("6 tampered signature is rejected", False, "PyJWT accepted a token with a modified signature")
        guarded("6 tampered signature is rejected", step6)
    else:
        check("5 verify issued token", False, "cannot run: no issued token or no JWKS (steps 3-4)")
        check("6 tampered signature is rejected", False, "cannot run: no issued token or no JWKS (steps 3-4)")

    if issued and keyset and parent:
        def step7():
            asked_at = int(time.time())
            req = exchange_request(args, issued, TT_ACCESS_TOKEN, task_id="", requested_expires_in=60)
            resp = stub.ExchangeToken(req, timeout=RPC_TIMEOUT)
            check_response("7 re-exchange", resp, max_expires_in=60)
            claims = verify_access_token("7 narrowed token", resp.access_token, keyset, raw_jwks, args)
            if claims is None:
                return
            check("7 exp <= parent exp", claims["exp"] <= parent["exp"], f"exp {claims['exp']} > {parent['exp']}")
            check("7 lifetime honours requested_expires_in=60", claims["exp"] <= asked_at + 60 + LEEWAY,
                  f"exp {claims['exp']} is {claims['exp'] - asked_at}s after the request")
            check("7 sub preserved", claims["sub"] == parent["sub"], f"sub {claims['sub']!r}")
            check("7 act preserved", claims.get("act") == parent.get("act"),
                  f"act {claims.get('act')!r}, parent {parent.get('act')!r}")
        guarded("7 re-exchange", step7)
    else:
        check("7 re-exchange", False, "cannot run: no verified token from steps 4-5")

    def fresh():
        return mint_kubernetes(fx, iss, int(time.time()))[0]

    def claims_now():
        t = int(time.time())
        return kubernetes_claims(fx, iss, t, t + 600, fresh_jti=True)

    def fresh_actor():
        return mint_spiffe(fx, iss, int(time.time()))[0]

    INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED = (
        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    cases = [
        ("8a grant_type=password", lambda: exchange_request(args, fresh(), actor=fresh_actor(), grant_type="password"),
         INVALID_ARGUMENT, "unsupported_grant_type"),
        ("8b alg=none", lambda: exchange_request(
            args, alg_none_token(claims_now(), fx.kid("kubernetes")), actor=fresh_actor()),
         UNAUTHENTICATED, "invalid_grant"),
        ("8c HS256 keyed with the RSA public key", lambda: exchange_request(
            args, hs256_with_public_key_token(fx, claims_now()), actor=fresh_actor()),
         UNAUTHENTICATED, "invalid_grant"),
        ("8d expired assertion", lambda: exchange_request(
            args, mint_kubernetes(fx, iss, int(time.time()), age=4000, lifetime=400)[0], actor=fresh_actor()),
         UNAUTHENTICATED, "invalid_grant"),
        ("8e attacker EdDSA key with kubernetes kid", lambda: exchange_request(
            args, jwt.encode(claims_now(), fx.key("attacker"), algorithm="EdDSA",
                             headers={"kid": fx.kid("kubernetes")}), actor=fresh_actor()),
         UNAUTHENTICATED, "invalid_grant"),
        ("8f audience not in catalog", lambda: exchange_request(
            args, fresh(), actor=fresh_actor(), audience=["https://not-in-catalog.example"]),
         PERMISSION_DENIED, "invalid_target"),
        ("8g scope never granted", lambda: exchange_request(args, fresh(), actor=fresh_actor(), scope="crm:export"),
         PERMISSION_DENIED, "invalid_scope"),
        ("8h two audiences", lambda: exchange_request(
            args, fresh(), actor=fresh_actor(), audience=[args.target, OTHER_AUDIENCE]),
         PERMISSION_DENIED, "invalid_target"),
        ("8i not a JWT", lambda: exchange_request(args, "not.a.jwt", actor=fresh_actor()),
         UNAUTHENTICATED, "invalid_grant"),
        ("8j unknown subject_token_type", lambda: exchange_request(
            args, fresh(), subject_type="urn:example:unknown", actor=fresh_actor()),
         INVALID_ARGUMENT, "invalid_request"),
    ]
    if issued:
        cases.append(("8k audience hopping with the issued token", lambda: exchange_request(
            args, issued, TT_ACCESS_TOKEN, task_id="", audience=[OTHER_AUDIENCE]), PERMISSION_DENIED, "invalid_target"))
    else:
        check("8k audience hopping with the issued token", False, "cannot run: no issued token from step 4")
    for label, build, code, reason in cases:
        guarded(label, lambda: expect_rejected(stub, label, build(), code, reason))

    # 9: DPoP (RFC 9449) over gRPC: a proof signed by PyJWT with a key from `cryptography`, in the `dpop`
    # metadata entry, binds the issued token to the key's RFC 7638 thumbprint as joserfc computes it.
    def step9():
        from cryptography.hazmat.primitives.asymmetric import ec
        from joserfc.jwk import ECKey
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        htu = args.broker_issuer.rstrip("/") + "/tessera.v1.TokenBroker/ExchangeToken"

        def proof():
            claims = {"htm": "POST", "htu": htu, "iat": int(time.time()), "jti": str(uuid.uuid4())}
            return jwt.encode(claims, key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": jwk})

        first = proof()
        resp = stub.ExchangeToken(exchange_request(args, fresh(), actor=fresh_actor()), metadata=(("dpop", first),),
                                  timeout=RPC_TIMEOUT)
        check("9 dpop: token_type is DPoP", resp.token_type == "DPoP", f"got {resp.token_type!r}")
        claims = jwt.decode(resp.access_token, options={"verify_signature": False})
        thumbprint = ECKey.import_key(jwk).thumbprint()
        check("9 dpop: cnf.jkt is the key's thumbprint", claims.get("cnf") == {"jkt": thumbprint},
              f"cnf {claims.get('cnf')!r}, thumbprint {thumbprint!r}")
        try:
            stub.ExchangeToken(exchange_request(args, fresh(), actor=fresh_actor()), metadata=(("dpop", first),),
                               timeout=RPC_TIMEOUT)
            check("9 dpop: a replayed proof is refused", False, "the broker issued a token")
        except grpc.RpcError as err:
            got = {(i.domain, i.reason) for i in error_infos(err)[0]}
            check("9 dpop: a replayed proof is refused", err.code() == UNAUTHENTICATED
                  and ("tessera", "invalid_dpop_proof") in got, f"{err.code().name} {got}")
    guarded("9 dpop", step9)
    channel.close()


def main(argv=None):
    p = argparse.ArgumentParser(description="Interop checks of the tessera broker with grpcio and PyJWT.")
    p.add_argument("--addr", required=True, help="broker gRPC address HOST:PORT (plaintext)")
    p.add_argument("--stubs", required=True, help="directory holding tessera/v1/broker_pb2{,_grpc}.py")
    p.add_argument("--fixtures", required=True, help="path to tests/fixtures")
    p.add_argument("--broker-issuer", required=True, help="the broker's issuer, also the assertions' audience")
    p.add_argument("--target", required=True, help="a catalogued downstream audience")
    p.add_argument("--task-id", required=True, help="task the issued token is bound to")
    p.add_argument("--connect-timeout", type=float, default=20.0,
                   help="seconds to wait for the broker to accept a connection (default 20)")
    args = p.parse_args(argv)
    import_deps(args.stubs)
    try:
        run(args)
    except Exception as e:  # noqa: BLE001 - a bug in this script still ends with a named failure
        check("interop script", False, f"unexpected {describe(e)}")
    if FAILED:
        print(f"interop: failed checks: {', '.join(FAILED)}", file=sys.stderr, flush=True)
    print(f"interop: {len(PASSED)} passed, {len(FAILED)} failed", flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
