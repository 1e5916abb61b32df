"""How the client authenticates to the broker — the methods tessera accepts (docs/config.md, `[[clients]]`):
`client_secret_basic` / `client_secret_post`, `private_key_jwt`, a SPIFFE JWT-SVID (`jwt-spiffe`), mTLS, or
none (dev mode's loopback client). A client assertion is made fresh for every request: the broker accepts
each one once."""

from __future__ import annotations

import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, Union

import jwt

ASSERTION_TYPE_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_TYPE_JWT_SPIFFE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"


class Credentials:
    """Adds the caller's authentication to a form request. `cert` is the client certificate for mTLS."""

    cert: Optional[Tuple[str, str]] = None

    def apply(self, form: Dict[str, str], headers: Dict[str, str], endpoint: str) -> None:
        """Adds what authenticates the caller to `form` and `headers` for a request to `endpoint`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(…)"


class NoCredentials(Credentials):
    """No client authentication: dev mode's loopback client (`loopback_anonymous`)."""


@dataclass(repr=False)
class ClientSecret(Credentials):
    """`client_secret_basic` (the default) or `client_secret_post` (RFC 6749 §2.3.1)."""

    client_id: str
    secret: str
    method: str = "basic"

    def apply(self, form: Dict[str, str], headers: Dict[str, str], endpoint: str) -> None:
        if self.method == "post":
            form["client_id"] = self.client_id
            form["client_secret"] = self.secret
            return
        import base64

        # RFC 6749 §2.3.1: each half is form-urlencoded before they are joined.
        pair = f"{urllib.parse.quote_plus(self.client_id)}:{urllib.parse.quote_plus(self.secret)}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()

    def __repr__(self) -> str:
        return f"ClientSecret(client_id={self.client_id!r}, method={self.method!r})"


@dataclass(repr=False)
class PrivateKeyJwt(Credentials):
    """`private_key_jwt` (RFC 7523 §2.2): a short-lived assertion signed with the client's key, `iss` and
    `sub` the client id, `aud` the token endpoint being called. `key` is a PEM private key (or a
    `cryptography` key object); `algorithm` one the broker's `assertion_issuer` allows."""

    client_id: str
    key: Any
    algorithm: str = "ES256"
    kid: Optional[str] = None
    lifetime: int = 60
    audience: Optional[str] = None

    def assertion(self, endpoint: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.audience or endpoint,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + self.lifetime,
        }
        headers = {"kid": self.kid} if self.kid else None
        return jwt.encode(claims, self.key, algorithm=self.algorithm, headers=headers)

    def apply(self, form: Dict[str, str], headers: Dict[str, str], endpoint: str) -> None:
        form["client_assertion_type"] = ASSERTION_TYPE_JWT_BEARER
        form["client_assertion"] = self.assertion(endpoint)
        form["client_id"] = self.client_id

    def __repr__(self) -> str:
        return f"PrivateKeyJwt(client_id={self.client_id!r}, algorithm={self.algorithm!r})"


@dataclass(repr=False)
class SpiffeJwt(Credentials):
    """A SPIFFE JWT-SVID (`jwt-spiffe`): `fetch_svid(audience)` returns a fresh JWT-SVID for the broker (from
    the SPIFFE Workload API, or a file the agent refreshes); `client_id`, when given, must name the client
    whose `spiffe_ids` hold the SVID's ID."""

    fetch_svid: Callable[[str], str]
    audience: str = ""
    client_id: Optional[str] = None

    def apply(self, form: Dict[str, str], headers: Dict[str, str], endpoint: str) -> None:
        form["client_assertion_type"] = ASSERTION_TYPE_JWT_SPIFFE
        form["client_assertion"] = self.fetch_svid(self.audience or endpoint)
        if self.client_id:
            form["client_id"] = self.client_id


@dataclass(repr=False)
class MutualTls(Credentials):
    """mTLS (RFC 8705): the broker knows the client by its certificate (a SPIFFE X.509-SVID or a
    `tls_identities` entry). The broker's URL must be `https://`; `ca_file` verifies its certificate."""

    cert_file: str
    key_file: str
    ca_file: Optional[str] = None
    cert: Optional[Tuple[str, str]] = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.cert = (self.cert_file, self.key_file)

    def __repr__(self) -> str:
        return f"MutualTls(cert_file={self.cert_file!r})"


SubjectToken = Union[str, Callable[[], str]]
"""A subject (or actor) token: the JWT itself, or a callable returning a current one (a Kubernetes projected
token is re-read from its file, since the kubelet rotates it)."""


def token_from_file(path: str) -> Callable[[], str]:
    """A subject token read from `path` at each use (a projected service-account token, a JWT-SVID file)."""

    def read() -> str:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()

    return read


def resolve(token: Optional[SubjectToken]) -> str:
    if token is None:
        return ""
    return token() if callable(token) else token
