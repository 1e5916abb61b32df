"""For resource servers (downstream APIs, MCP servers): verify a tessera token offline — signature against
the broker's JWKS, `typ` `at+jwt` (RFC 9068), issuer, this API's audience, time, and the scopes a route
needs — and, when it must see a revocation at once, online with the broker's introspection (RFC 7662), or
offline with the token's status list and the broker's revocation watch stream (`tessera_client.revocation`)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

import jwt

from .broker import Broker
from .credentials import Credentials
from .errors import BrokerUnavailable, TokenRejected
from .models import Actor
from .revocation import RevocationEvent, RevocationWatch, StatusLists

#: What tessera signs with (docs/config.md `[signing]`); never `none`, never HMAC.
ALGORITHMS = ["EdDSA", "ES256"]


@dataclass(frozen=True, repr=False)
class VerifiedToken:
    """A token this API accepted: who it is for, what it may do, for which task, through whom."""

    sub: str
    scopes: List[str]
    audience: str
    jti: str
    exp: int
    task_id: str = ""
    client_id: str = ""
    act: Optional[Actor] = None
    authorization_details: Optional[List[Dict[str, Any]]] = None
    claims: Dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"VerifiedToken(sub={self.sub!r}, scopes={self.scopes!r}, task_id={self.task_id!r})"


def bearer(authorization: Optional[str]) -> str:
    """The token of an `Authorization: Bearer …` header (RFC 6750 §2.1), or `TokenRejected` (401)."""
    if not authorization:
        raise TokenRejected(401, "invalid_token", "a bearer token is required")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRejected(401, "invalid_token", "the Authorization header is not a bearer token")
    return token.strip()


class Verifier:
    """Verifies tessera tokens for one audience (this API).

    `broker_url` is the broker's HTTP face; the JWK Set is read from its `/.well-known/jwks.json` (cached,
    re-read on an unknown `kid`) and introspection posts to its `/oauth2/introspect` authenticated with
    `credentials` (a client allowed to introspect this audience's tokens). `issuer` is the broker's issuer
    (read from its RFC 8414 metadata when not given).

    Revocations without a call per request (docs/revocation.md): with `status_lists=True`, offline
    verification also reads the token's bit in its signed status list (cached for the list's `ttl`), so a
    revoked token is refused within that `ttl`; with `watch` (a started `RevocationWatch`), a token any watched
    revocation ends is refused at once. `introspection_cache_seconds` keeps online answers that long, and a
    watch drops them the moment a revocation arrives."""

    def __init__(
        self,
        broker_url: str,
        audience: str,
        *,
        credentials: Optional[Credentials] = None,
        issuer: Optional[str] = None,
        algorithms: Iterable[str] = ALGORITHMS,
        leeway: int = 5,
        jwks_cache_seconds: int = 300,
        status_lists: bool = False,
        watch: Optional[RevocationWatch] = None,
        introspection_cache_seconds: float = 0.0,
    ) -> None:
        self.broker = Broker(broker_url, credentials)
        self.audience = audience
        self._issuer = issuer
        self.algorithms = list(algorithms)
        self.leeway = leeway
        self.jwks = jwt.PyJWKClient(self.broker.url + "/.well-known/jwks.json", lifespan=jwks_cache_seconds)
        self.status_lists = (
            StatusLists(self.broker.url, lambda: self.issuer, self.jwks, self.algorithms) if status_lists else None
        )
        self.watch = watch
        self.introspection_cache_seconds = introspection_cache_seconds
        self._introspected: Dict[str, float] = {}
        self._cache_lock = threading.Lock()
        if watch is not None:
            watch.listen(self._revoked)

    def _revoked(self, event: Optional[RevocationEvent]) -> None:
        # Any revocation may end a cached answer (this cache does not keep the claims): drop them all.
        with self._cache_lock:
            self._introspected.clear()

    @property
    def issuer(self) -> str:
        if self._issuer is None:
            self._issuer = self.broker.issuer
        return self._issuer

    def verify_offline(self, token: str, scopes: Iterable[str] = ()) -> VerifiedToken:
        """Signature, `typ`, issuer, audience, `exp`/`nbf` and scopes — no call to the broker but for the
        JWK Set. A revoked token passes until it expires: use `verify` where that matters."""
        try:
            header = jwt.get_unverified_header(token)
            if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
                raise TokenRejected(401, "invalid_token", "not an access token (typ at+jwt)")
            key = self.jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
        except TokenRejected:
            raise
        except jwt.ExpiredSignatureError:
            raise TokenRejected(401, "invalid_token", "the token has expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected(401, "invalid_token", "the token is for another audience") from None
        except jwt.PyJWKClientConnectionError:
            raise BrokerUnavailable("unavailable", "the broker's JWK Set could not be fetched") from None
        except (jwt.PyJWTError, ValueError):
            raise TokenRejected(401, "invalid_token", "the token is not valid") from None
        if self.watch is not None and self.watch.revokes(claims):
            raise TokenRejected(401, "invalid_token", "the token has been revoked")
        if self.status_lists is not None and self.status_lists.revoked(claims):
            raise TokenRejected(401, "invalid_token", "the token has been revoked (status list)")
        granted = str(claims.get("scope", "")).split()
        missing = [s for s in scopes if s not in granted]
        if missing:
            raise TokenRejected(403, "insufficient_scope", "the token lacks a scope", " ".join(missing))
        return VerifiedToken(
            sub=str(claims["sub"]),
            scopes=granted,
            audience=self.audience,
            jti=str(claims["jti"]),
            exp=int(claims["exp"]),
            task_id=str(claims.get("task_id") or ""),
            client_id=str(claims.get("client_id") or ""),
            act=Actor.from_json(claims.get("act")),
            authorization_details=claims.get("authorization_details"),
            claims=claims,
        )

    def verify(self, token: str, scopes: Iterable[str] = (), *, online: bool = True) -> VerifiedToken:
        """`verify_offline`, then (when `online`) introspection: a revoked token — or one of a revoked task,
        subject or client, or derived from a revoked token — is refused at once."""
        verified = self.verify_offline(token, scopes)
        if online and not self._active(token):
            raise TokenRejected(401, "invalid_token", "the token is no longer active")
        return verified

    def _active(self, token: str) -> bool:
        """Introspection, answered from the cache while an active answer is fresh."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._cache_lock:
            if self._introspected.get(key, 0.0) > now:
                return True
        active = self.broker.introspect(token).active
        if active and self.introspection_cache_seconds > 0:
            with self._cache_lock:
                self._introspected[key] = now + self.introspection_cache_seconds
        return active

    async def averify(self, token: str, scopes: Iterable[str] = (), *, online: bool = True) -> VerifiedToken:
        """`verify`, off the event loop."""
        return await asyncio.to_thread(self.verify, token, list(scopes), online=online)
