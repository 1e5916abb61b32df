"""What the scenarios share: a tessera broker started from the scenario's `tessera.toml` (its signing key and
its upstream issuers' keys made fresh in a scratch folder), upstream assertions minted with those keys, and
a downstream API served in a thread.

Run a scenario from the repository root with the SDK installed (`pip install clients/python`) and the
`tessera` binary on PATH (or in TESSERA_BIN):

    python examples/scenarios/retrieval/run.py

Each prints what happens, step by step, and exits non-zero if the broker or the API does not refuse exactly
what the scenario says it must."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, Optional

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

#: The demo secrets whose SHA-256 the scenarios' tessera.toml lists (never use them outside a demo).
ORCHESTRATOR_SECRET = "orchestrator-demo-secret"
RESOURCE_API_SECRET = "resource-api-demo-secret"
SUPERVISOR_SECRET = "supervisor-demo-secret"
BROKER_ISSUER = "https://tessera.scenario"


def say(*parts: Any) -> None:
    print(*parts, flush=True)


def show(label: str, value: Any) -> None:
    print(f"  {label}: {json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value}", flush=True)


def expect(condition: bool, what: str) -> None:
    """A scenario's claim: printed when it holds, the end of the run when it does not."""
    if not condition:
        print(f"  FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"  ok: {what}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Issuer:
    """An upstream identity provider (a Kubernetes API server, GitHub Actions' OIDC issuer) — or a client's
    own key for `private_key_jwt` — whose public half tessera reads from `<name>.jwks.json`: RSA (RS256) or
    P-256 (ES256)."""

    def __init__(self, name: str, iss: str, alg: str = "RS256") -> None:
        self.name, self.iss, self.alg = name, iss, alg
        if alg == "ES256":
            self.key: Any = ec.generate_private_key(ec.SECP256R1())
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = f"{name}-{uuid.uuid4().hex[:8]}"

    def jwks(self) -> Dict[str, Any]:
        algorithm = jwt.algorithms.ECAlgorithm if self.alg == "ES256" else jwt.algorithms.RSAAlgorithm
        jwk = json.loads(algorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        return {"keys": [jwk]}

    def private_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def mint(self, claims: Dict[str, Any], ttl: int = 600) -> str:
        now = int(time.time())
        body = {"iss": self.iss, "aud": BROKER_ISSUER, "iat": now, "nbf": now, "exp": now + ttl,
                "jti": uuid.uuid4().hex, **claims}
        return jwt.encode(body, self.key, algorithm=self.alg, headers={"kid": self.kid, "typ": "JWT"})


def kubernetes_sa(issuer: Issuer, namespace: str, name: str, ttl: int = 600) -> str:
    """A projected service-account token, shaped as the kubelet writes it."""
    return issuer.mint({
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "aud": [BROKER_ISSUER],
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": str(uuid.uuid4())},
            "pod": {"name": f"{name}-7d9f8b6c5d-x2k4q", "uid": str(uuid.uuid4())},
            "warnafter": int(time.time()) + ttl // 2,
        },
    }, ttl)


def tessera_bin() -> str:
    found = os.environ.get("TESSERA_BIN") or shutil.which("tessera")
    if not found:
        sys.exit("the `tessera` binary is needed: put it on PATH or set TESSERA_BIN (cargo build)")
    return found


class Tessera:
    """`tessera serve --config <scenario>/tessera.toml`, run from a scratch copy of the scenario's folder."""

    def __init__(self, scenario: str, *issuers: Issuer) -> None:
        self.folder = tempfile.mkdtemp(prefix="tessera-scenario-")
        here = os.path.dirname(os.path.abspath(scenario))
        for name in os.listdir(here):
            if name.endswith((".toml", ".cedar", ".json")):
                shutil.copy(os.path.join(here, name), self.folder)
        os.makedirs(os.path.join(self.folder, "keys"))
        subprocess.run([tessera_bin(), "keygen", "--out", os.path.join(self.folder, "keys", "signing.pem")],
                       check=True, capture_output=True)
        for issuer in issuers:
            with open(os.path.join(self.folder, f"{issuer.name}.jwks.json"), "w") as f:
                json.dump(issuer.jwks(), f)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(self.folder, "tessera.log"), "w")
        self.process = subprocess.Popen(
            [tessera_bin(), "serve", "--config", os.path.join(self.folder, "tessera.toml"),
             "--grpc-addr", f"127.0.0.1:{free_port()}", "--http-addr", f"127.0.0.1:{self.port}"],
            stdout=self.log, stderr=self.log,
        )
        for _ in range(400):
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        with open(os.path.join(self.folder, "tessera.log")) as f:
            log = f.read()
        self.stop()
        sys.exit("tessera did not start:\n" + log)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "Tessera":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Api:
    """A downstream API (an ASGI app) served by uvicorn in a thread, on a free port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Api":
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def call(method: str, url: str, token: Optional[str], **kwargs: Any) -> httpx.Response:
    """One request to a downstream API, printed with its answer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.request(method, url, headers=headers, **kwargs)
    detail = response.headers.get("www-authenticate") or response.text[:200]
    print(f"  {method} {httpx.URL(url).path} -> {response.status_code} {detail}", flush=True)
    return response
