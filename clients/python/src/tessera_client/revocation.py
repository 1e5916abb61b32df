"""Revocations for verifiers that check tokens offline (docs/revocation.md).

- `StatusLists`: the OAuth Token Status List (draft-ietf-oauth-status-list) each tessera token points at
  (`status.status_list {idx, uri}`): the signed list is fetched from the broker, verified with its JWK Set,
  cached for its `ttl`, and the token's bit read — a revoked token (or one of a revoked task, subject or
  client, or derived from a revoked token) is refused within the list's `ttl`, with no call per request.
- `RevocationWatch`: the broker's revocation watch stream (`GET /revocations/watch`, Server-Sent Events) read
  in a background thread, resumed from its cursor after a disconnect; every event is remembered until it
  expires, so a token it ends is refused at once, and listeners (a `Verifier`'s introspection cache) hear of
  each event as it arrives.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import httpx
import jwt

from .credentials import Credentials, NoCredentials
from .errors import BrokerUnavailable, TokenRejected

STATUS_LIST_TYP = "statuslist+jwt"


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StatusLists:
    """Reads the status bit of tessera tokens from the broker's signed status lists.

    `broker_url` is the broker's HTTP face, `issuer` its issuer: a token's list URI must be under the issuer
    (anything else is refused, so a token cannot send this verifier to another host), and is fetched from
    the same path at `broker_url` (the issuer is the broker's public name, which need not be the address this
    verifier reaches it at). `jwks` verifies each list token."""

    def __init__(self, broker_url: str, issuer: Callable[[], str], jwks: jwt.PyJWKClient,
                 algorithms: List[str], http: Optional[httpx.Client] = None) -> None:
        self.broker_url = broker_url.rstrip("/")
        self._issuer = issuer
        self.jwks = jwks
        self.algorithms = algorithms
        self._http = http or httpx.Client(timeout=5.0)
        self._lock = threading.Lock()
        self._cache: Dict[str, Tuple[float, bytes]] = {}

    def _bits(self, uri: str) -> bytes:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(uri)
            if cached and cached[0] > now:
                return cached[1]
        issuer = self._issuer().rstrip("/")
        if not uri.startswith(issuer + "/"):
            raise TokenRejected(401, "invalid_token", "the token's status list is not the broker's")
        try:
            response = self._http.get(self.broker_url + uri[len(issuer):],
                                      headers={"Accept": "application/statuslist+jwt"})
        except httpx.TransportError:
            raise BrokerUnavailable("unavailable", "the status list could not be fetched") from None
        if response.status_code != 200:
            raise BrokerUnavailable("unavailable", f"the status list answered {response.status_code}")
        token = response.text.strip()
        try:
            header = jwt.get_unverified_header(token)
            if str(header.get("typ", "")).lower() != STATUS_LIST_TYP:
                raise TokenRejected(401, "invalid_token", "the status list is not a statuslist+jwt")
            key = self.jwks.get_signing_key_from_jwt(token)
            # The list names itself by `sub` (its URI; the draft has no `iss`), signed by a key of the broker's.
            claims = jwt.decode(token, key.key, algorithms=self.algorithms,
                                options={"require": ["iat", "sub"], "verify_aud": False})
            if claims.get("sub") != uri:
                raise TokenRejected(401, "invalid_token", "the status list is for another URI")
            status_list = claims["status_list"]
            if int(status_list.get("bits", 0)) != 1:
                raise TokenRejected(401, "invalid_token", "unsupported status list bit size")
            bits = zlib.decompress(_b64url(str(status_list["lst"])))
        except TokenRejected:
            raise
        except (jwt.PyJWTError, KeyError, ValueError, TypeError, zlib.error):
            raise TokenRejected(401, "invalid_token", "the status list does not verify") from None
        ttl = float(claims.get("ttl", 60))
        with self._lock:
            self._cache[uri] = (now + max(1.0, ttl), bits)
        return bits

    def revoked(self, claims: Dict[str, Any]) -> bool:
        """Whether the token with `claims` is marked invalid in its status list (False without one)."""
        reference = (claims.get("status") or {}).get("status_list")
        if not reference:
            return False
        idx, uri = int(reference["idx"]), str(reference["uri"])
        bits = self._bits(uri)
        byte = idx // 8
        return byte < len(bits) and bool(bits[byte] >> (idx % 8) & 1)


@dataclass(frozen=True)
class RevocationEvent:
    """One revocation of the watch stream."""

    cursor: str
    kind: str
    value: str
    issuer: str
    revoked_at: int
    expires_at: int
    reason_class: str = ""
    reason: str = ""

    def ends(self, claims: Dict[str, Any]) -> bool:
        """Whether this revocation ends the token with `claims` (docs/revocation.md, "What a verifier does
        with an event"): its jti or an ancestor's, its task or one in its lineage, its subject or an actor (by
        issuer and `sub`) or its client for a token issued up to the revocation."""
        lineage = claims.get("lin") or {}
        issued = int(claims.get("iat", 0))
        if self.kind == "jti":
            return self.value == claims.get("jti") or self.value in (claims.get("anc") or [])
        if self.kind == "task":
            return self.value == claims.get("task_id") or self.value in (lineage.get("tasks") or [])
        if self.kind == "client":
            in_lineage = self.value in (lineage.get("clients") or [])
            return issued <= self.revoked_at and (self.value == claims.get("client_id") or in_lineage)
        if self.kind == "subject":
            return issued <= self.revoked_at and (self.issuer, self.value) in _parties(claims)
        return True  # a kind this verifier does not know: assume it ends the token


def _parties(claims: Dict[str, Any]) -> List[Tuple[str, str]]:
    """The token's subject, every actor of its `act` chain and every party of its lineage, as (iss, sub)."""
    own = str(claims.get("sub_iss", ""))
    parties = [(own, str(claims.get("sub", "")))]
    act = claims.get("act")
    while isinstance(act, dict):
        parties.append((str(act.get("iss") or own), str(act.get("sub", ""))))
        act = act.get("act")
    for party in (claims.get("lin") or {}).get("parties") or []:
        parties.append((str(party.get("iss", "")), str(party.get("sub", ""))))
    return parties


class RevocationWatch:
    """Follows the broker's revocation watch stream in a background thread.

    `credentials` name a client with the `watch` role. Events are remembered until their `expires_at`;
    `revokes(claims)` says whether any ends a token. After a disconnect the stream is resumed from the last
    cursor (every later event, none twice); when the broker no longer covers the cursor (`cursor_expired`,
    410), every listener is told to drop everything (`on_reset`) and the watch starts again from now. Until
    the first connection is established, `ready` is unset: a verifier that relies on the watch should wait
    for it."""

    def __init__(self, broker_url: str, credentials: Optional[Credentials] = None, *,
                 reconnect_seconds: float = 1.0) -> None:
        self.url = broker_url.rstrip("/") + "/revocations/watch"
        self.credentials = credentials or NoCredentials()
        self.reconnect_seconds = reconnect_seconds
        self.cursor = ""
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._events: List[RevocationEvent] = []
        self._listeners: List[Callable[[Optional[RevocationEvent]], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tessera-revocation-watch", daemon=True)

    def start(self) -> "RevocationWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def listen(self, listener: Callable[[Optional[RevocationEvent]], None]) -> None:
        """`listener(event)` for each event, `listener(None)` when everything must be dropped."""
        with self._lock:
            self._listeners.append(listener)

    def revokes(self, claims: Dict[str, Any]) -> bool:
        now = time.time()
        with self._lock:
            self._events = [e for e in self._events if e.expires_at > now]
            return any(e.ends(claims) for e in self._events)

    def _notify(self, event: Optional[RevocationEvent]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except (httpx.HTTPError, ValueError):
                pass
            self._stop.wait(self.reconnect_seconds)

    def _follow(self) -> None:
        form: Dict[str, Any] = {}
        headers: Dict[str, str] = {"Accept": "text/event-stream"}
        self.credentials.apply(form, headers, self.url)
        if self.cursor:
            headers["Last-Event-ID"] = self.cursor
        with httpx.stream("GET", self.url, headers=headers, timeout=httpx.Timeout(5.0, read=60.0)) as response:
            if response.status_code == 410:
                # cursor_expired: anything may have been revoked meanwhile.
                self.cursor = ""
                self._notify(None)
                return
            if response.status_code != 200:
                return
            self.ready.set()
            kind, data = "", []  # type: Tuple[str, List[str]]
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line == "":
                    if kind == "revocation" and data:
                        self._take(json.loads("\n".join(data)))
                    kind, data = "", []
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())

    def _take(self, body: Dict[str, Any]) -> None:
        event = RevocationEvent(
            cursor=str(body.get("cursor", "")), kind=str(body.get("kind", "")), value=str(body.get("value", "")),
            issuer=str(body.get("issuer", "")), revoked_at=int(body.get("revoked_at", 0)),
            expires_at=int(body.get("expires_at", 0)), reason_class=str(body.get("reason_class", "")),
            reason=str(body.get("reason", "")))
        with self._lock:
            self._events.append(event)
        self.cursor = event.cursor or self.cursor
        self._notify(event)
