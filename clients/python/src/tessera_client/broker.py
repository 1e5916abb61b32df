"""The broker client: token exchange with a cache, introspection, revocation, task scopes, approvals.

One `Broker` serves both synchronous and asynchronous code (`exchange` / `aexchange`, `with broker.task(…)` /
`async with broker.task(…)`); it speaks tessera's plain-OAuth HTTP face (docs/README: `POST /oauth2/token`,
`/oauth2/introspect`, `/oauth2/revoke`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import httpx

from .credentials import Credentials, NoCredentials, PrivateKeyJwt, SpiffeJwt, SubjectToken, resolve
from .errors import ApprovalDenied, ApprovalPending, BrokerUnavailable, OAuthError
from .models import TOKEN_EXCHANGE, TOKEN_TYPE_JWT, Introspection, TokenResponse
from .resilience import Backoff, CircuitBreaker

if TYPE_CHECKING:
    from .task import Task

#: Statuses that say "the broker is not able to answer now": retried with backoff, counted by the breaker.
_UNAVAILABLE = {502, 503, 504}

Fields = Union[Dict[str, str], List[Tuple[str, str]]]
CacheKey = Tuple[str, Tuple[str, ...], str, str, str, str]


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest() if value else ""


def _retry_after(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error(response: httpx.Response) -> OAuthError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    error = str(body.get("error") or f"http_{response.status_code}")
    description = str(body.get("error_description") or "")
    if error == "authorization_pending":
        return ApprovalPending(
            description,
            approval_id=str(body.get("approval_id", "")),
            approval_uri=str(body.get("approval_uri", "")),
            interval=int(body.get("interval", 5) or 5),
            status=response.status_code,
        )
    if error == "access_denied":
        return ApprovalDenied(error, description, response.status_code)
    return OAuthError(error, description, response.status_code)


def _tls(credentials: Credentials, verify: Union[bool, str]) -> Union[bool, ssl.SSLContext]:
    """What httpx verifies the broker with and presents to it: an SSL context with the CA to trust and, for
    mTLS, the client certificate (httpx's own `cert=` is deprecated)."""
    cert = credentials.cert
    ca = getattr(credentials, "ca_file", None) or (verify if isinstance(verify, str) else None)
    if cert is None and ca is None:
        return verify if isinstance(verify, bool) else True
    context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(cert[0], cert[1])
    return context


def _json(response: httpx.Response) -> Dict[str, Any]:
    if response.status_code >= 400:
        raise _error(response)
    body = response.json()
    if not isinstance(body, dict):
        raise OAuthError("invalid_response", "the broker answered something other than a JSON object")
    return body


class Broker:
    """A client of one tessera broker.

    `url` is the HTTP face's base URL (`http://127.0.0.1:8080`); `credentials` how this caller authenticates
    (`NoCredentials()` is dev mode's loopback client); `subject_token` the caller's own workload assertion
    (or a callable returning a current one), used when an exchange names none.

    Exchanged tokens are cached per (subject, audience, scopes, task, actor, details) and exchanged again
    `refresh_margin` seconds (or a tenth of their life, whichever is less) before they expire. When the broker
    is unavailable a call is retried with `backoff` and counted by `breaker`; it then raises — it never falls
    back to another credential.
    """

    def __init__(
        self,
        url: str,
        credentials: Optional[Credentials] = None,
        *,
        subject_token: Optional[SubjectToken] = None,
        subject_token_type: str = TOKEN_TYPE_JWT,
        backoff: Optional[Backoff] = None,
        breaker: Optional[CircuitBreaker] = None,
        timeout: float = 10.0,
        refresh_margin: float = 30.0,
        verify: Union[bool, str] = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.credentials = credentials or NoCredentials()
        self.subject_token = subject_token
        self.subject_token_type = subject_token_type
        self.backoff = backoff or Backoff()
        self.breaker = breaker or CircuitBreaker()
        self.refresh_margin = refresh_margin
        self._http_args: Dict[str, Any] = {"timeout": timeout, "verify": _tls(self.credentials, verify)}
        self._http = httpx.Client(**self._http_args)
        self._ahttp: Optional[httpx.AsyncClient] = None
        self._cache: Dict[CacheKey, TokenResponse] = {}
        self._lock = threading.Lock()
        self._metadata: Optional[Dict[str, Any]] = None

    # -- plumbing ---------------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    async def aclose(self) -> None:
        self._http.close()
        if self._ahttp is not None:
            await self._ahttp.aclose()

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _async_http(self) -> httpx.AsyncClient:
        if self._ahttp is None:
            self._ahttp = httpx.AsyncClient(**self._http_args)
        return self._ahttp

    def _audience_for_assertions(self) -> str:
        """What a client assertion's `aud` names, on every endpoint: the broker's `token_endpoint` as its
        metadata says (the broker accepts its issuer or its token endpoint, not the URL this client happens to
        use)."""
        if isinstance(self.credentials, (PrivateKeyJwt, SpiffeJwt)):
            return str(self.metadata()["token_endpoint"])
        return self.url + "/oauth2/token"

    def _form(self, fields: "Fields", endpoint: str) -> Tuple[Dict[str, Any], Dict[str, str]]:
        pairs = fields.items() if isinstance(fields, dict) else fields
        form: Dict[str, Any] = {}
        for name, value in pairs:
            if not value:
                continue  # empty counts as absent at the broker: not sent
            if name in form:  # `audience` and `resource` may repeat (RFC 8693 §2.1)
                form[name] = (form[name] if isinstance(form[name], list) else [form[name]]) + [value]
            else:
                form[name] = value
        headers = {"Accept": "application/json"}
        self.credentials.apply(form, headers, endpoint)
        return form, headers

    def _post(self, path: str, fields: "Fields") -> httpx.Response:
        self.breaker.before()
        last: Optional[Exception] = None
        for attempt in range(self.backoff.attempts):
            retry_after = None
            try:
                # A fresh client assertion per attempt: the broker accepts each one once.
                form, headers = self._form(fields, self._audience_for_assertions())
                response = self._http.post(self.url + path, data=form, headers=headers)
            except httpx.TransportError as e:
                last = BrokerUnavailable("unavailable", f"cannot reach the broker ({type(e).__name__})")
            else:
                if response.status_code in _UNAVAILABLE or response.status_code == 429:
                    last = _error(response)
                    retry_after = _retry_after(response)
                else:
                    self.breaker.success()
                    return response
            if attempt + 1 < self.backoff.attempts:
                time.sleep(self.backoff.delay(attempt, retry_after))
        return self._exhausted(last)

    async def _apost(self, path: str, fields: "Fields") -> httpx.Response:
        self.breaker.before()
        last: Optional[Exception] = None
        for attempt in range(self.backoff.attempts):
            retry_after = None
            try:
                form, headers = self._form(fields, await asyncio.to_thread(self._audience_for_assertions))
                response = await self._async_http().post(self.url + path, data=form, headers=headers)
            except httpx.TransportError as e:
                last = BrokerUnavailable("unavailable", f"cannot reach the broker ({type(e).__name__})")
            else:
                if response.status_code in _UNAVAILABLE or response.status_code == 429:
                    last = _error(response)
                    retry_after = _retry_after(response)
                else:
                    self.breaker.success()
                    return response
            if attempt + 1 < self.backoff.attempts:
                await asyncio.sleep(self.backoff.delay(attempt, retry_after))
        return self._exhausted(last)

    def _exhausted(self, last: Optional[Exception]) -> httpx.Response:
        if isinstance(last, OAuthError) and last.error == "rate_limited":
            raise last  # the broker answered: a rate limit is not an outage
        self.breaker.failure()
        if isinstance(last, OAuthError):
            raise BrokerUnavailable(last.error, last.description, last.status)
        raise last or BrokerUnavailable("unavailable", "the broker did not answer")

    def metadata(self) -> Dict[str, Any]:
        """The broker's RFC 8414 metadata (fetched once)."""
        if self._metadata is None:
            response = self._http.get(self.url + "/.well-known/oauth-authorization-server")
            self._metadata = _json(response)
        return self._metadata

    @property
    def issuer(self) -> str:
        """The broker's issuer: the audience of a task token."""
        return str(self.metadata()["issuer"])

    # -- exchange ---------------------------------------------------------------------------------------

    def _exchange_fields(
        self,
        audience: Union[str, Sequence[str], None],
        scope: Union[str, Iterable[str]],
        resource: Union[str, Sequence[str], None],
        subject_token: Optional[SubjectToken],
        subject_token_type: Optional[str],
        actor_token: Optional[SubjectToken],
        actor_token_type: str,
        task_id: str,
        session_id: str,
        purpose: str,
        authorization_details: Optional[List[Dict[str, Any]]],
    ) -> Tuple[List[Tuple[str, str]], CacheKey]:
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        resources = [resource] if isinstance(resource, str) else list(resource or [])
        scope_text = scope if isinstance(scope, str) else " ".join(scope)
        subject = resolve(subject_token if subject_token is not None else self.subject_token)
        if not subject:
            raise ValueError("no subject token: pass subject_token= here or to Broker()")
        actor = resolve(actor_token)
        details = json.dumps(authorization_details, sort_keys=True) if authorization_details else ""
        fields: List[Tuple[str, str]] = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", subject_token_type or self.subject_token_type),
            ("scope", scope_text),
            ("task_id", task_id),
            ("session_id", session_id),
            ("purpose", purpose),
            ("authorization_details", details),
        ]
        fields += [("audience", a) for a in audiences] + [("resource", r) for r in resources]
        if actor:
            fields += [("actor_token", actor), ("actor_token_type", actor_token_type)]
        key: CacheKey = (
            _digest(subject),
            tuple(sorted(audiences + resources)),
            " ".join(sorted(set(scope_text.split()))),
            task_id,
            _digest(actor),
            details,
        )
        return fields, key

    def _fresh(self, key: CacheKey) -> Optional[TokenResponse]:
        with self._lock:
            cached = self._cache.get(key)
        if cached is None:
            return None
        margin = min(self.refresh_margin, cached.expires_in / 10)
        return cached if cached.remaining() > margin else None

    def _store(self, key: CacheKey, token: TokenResponse) -> None:
        with self._lock:
            self._cache[key] = token

    def exchange(
        self,
        audience: Union[str, Sequence[str], None] = None,
        scope: Union[str, Iterable[str]] = "",
        *,
        resource: Union[str, Sequence[str], None] = None,
        subject_token: Optional[SubjectToken] = None,
        subject_token_type: Optional[str] = None,
        actor_token: Optional[SubjectToken] = None,
        actor_token_type: str = TOKEN_TYPE_JWT,
        task_id: str = "",
        session_id: str = "",
        purpose: str = "",
        authorization_details: Optional[List[Dict[str, Any]]] = None,
        cache: bool = True,
    ) -> TokenResponse:
        """RFC 8693 token exchange: a token for `audience` with (at most) `scope`, for the subject token
        (the broker's own by default), acted on by `actor_token` when given. Cached unless `cache=False`.
        Raises `OAuthError` on a refusal (`ApprovalPending` when a human must approve first),
        `BrokerUnavailable` when the broker cannot answer."""
        fields, key = self._exchange_fields(
            audience, scope, resource, subject_token, subject_token_type, actor_token, actor_token_type,
            task_id, session_id, purpose, authorization_details,
        )  # fmt: skip
        if cache and (hit := self._fresh(key)) is not None:
            return hit
        token = TokenResponse.from_json(_json(self._post("/oauth2/token", fields)))
        if cache:
            self._store(key, token)
        return token

    async def aexchange(
        self,
        audience: Union[str, Sequence[str], None] = None,
        scope: Union[str, Iterable[str]] = "",
        *,
        resource: Union[str, Sequence[str], None] = None,
        subject_token: Optional[SubjectToken] = None,
        subject_token_type: Optional[str] = None,
        actor_token: Optional[SubjectToken] = None,
        actor_token_type: str = TOKEN_TYPE_JWT,
        task_id: str = "",
        session_id: str = "",
        purpose: str = "",
        authorization_details: Optional[List[Dict[str, Any]]] = None,
        cache: bool = True,
    ) -> TokenResponse:
        """`exchange`, for asyncio."""
        fields, key = self._exchange_fields(
            audience, scope, resource, subject_token, subject_token_type, actor_token, actor_token_type,
            task_id, session_id, purpose, authorization_details,
        )  # fmt: skip
        if cache and (hit := self._fresh(key)) is not None:
            return hit
        token = TokenResponse.from_json(_json(await self._apost("/oauth2/token", fields)))
        if cache:
            self._store(key, token)
        return token

    def invalidate(self, token: Optional[TokenResponse] = None, *, task_id: Optional[str] = None) -> None:
        """Drops `token` (a downstream API refused it), or every token of `task_id`, or everything."""
        with self._lock:
            if token is None and task_id is None:
                self._cache.clear()
                return
            for key in [
                k for k, v in self._cache.items() if v is token or (task_id is not None and k[3] == task_id)
            ]:
                del self._cache[key]

    # -- introspection and revocation -------------------------------------------------------------------

    def introspect(self, token: Union[str, TokenResponse]) -> Introspection:
        """RFC 7662 introspection (this client must be allowed to introspect the token's audience)."""
        value = token.access_token if isinstance(token, TokenResponse) else token
        return Introspection.from_json(_json(self._post("/oauth2/introspect", {"token": value})))

    async def aintrospect(self, token: Union[str, TokenResponse]) -> Introspection:
        value = token.access_token if isinstance(token, TokenResponse) else token
        return Introspection.from_json(_json(await self._apost("/oauth2/introspect", {"token": value})))

    @staticmethod
    def _revoke_fields(
        token: Union[str, TokenResponse, None],
        jti: str,
        task_id: str,
        subject: str,
        issuer: str,
        client_id: str,
        reason: str,
    ) -> Dict[str, str]:
        value = token.access_token if isinstance(token, TokenResponse) else (token or "")
        fields = {
            "token": value,
            "jti": jti,
            "task_id": task_id,
            "subject": subject,
            "issuer": issuer,
            "target_client_id": client_id,
            "reason": reason,
        }
        if sum(1 for k in ("token", "jti", "task_id", "subject", "target_client_id") if fields[k]) != 1:
            raise ValueError("name exactly one revocation target")
        return fields

    def revoke(
        self,
        token: Union[str, TokenResponse, None] = None,
        *,
        jti: str = "",
        task_id: str = "",
        subject: str = "",
        issuer: str = "",
        client_id: str = "",
        reason: str = "",
    ) -> Dict[str, Any]:
        """Revokes one target: a token or `jti` (with everything derived from it), a task, a subject (with
        its `issuer`) or a client. The revoked tokens leave the cache."""
        fields = self._revoke_fields(token, jti, task_id, subject, issuer, client_id, reason)
        answer = _json(self._post("/oauth2/revoke", fields))
        self._forget(token, task_id)
        return answer

    async def arevoke(
        self,
        token: Union[str, TokenResponse, None] = None,
        *,
        jti: str = "",
        task_id: str = "",
        subject: str = "",
        issuer: str = "",
        client_id: str = "",
        reason: str = "",
    ) -> Dict[str, Any]:
        fields = self._revoke_fields(token, jti, task_id, subject, issuer, client_id, reason)
        answer = _json(await self._apost("/oauth2/revoke", fields))
        self._forget(token, task_id)
        return answer

    def _forget(self, token: Union[str, TokenResponse, None], task_id: str) -> None:
        if task_id:
            self.invalidate(task_id=task_id)
        elif token is not None:
            value = token.access_token if isinstance(token, TokenResponse) else token
            with self._lock:
                for key in [k for k, v in self._cache.items() if v.access_token == value]:
                    del self._cache[key]
        else:
            # A jti, subject or client may reach any cached token: start afresh.
            self.invalidate()

    # -- approvals --------------------------------------------------------------------------------------

    def approval_status(self, pending: ApprovalPending) -> str:
        """`pending`, `approved`, `denied` or `expired`."""
        # The broker this client talks to, by the approval's id: `approval_uri` names the broker by its
        # public address, which need not be the one this client reaches it at.
        url = f"{self.url}/approvals/{pending.approval_id}" if pending.approval_id else pending.approval_uri
        form: Dict[str, Any] = {}
        headers: Dict[str, str] = {"Accept": "application/json"}
        self.credentials.apply(form, headers, self._audience_for_assertions())
        return str(_json(self._http.get(url, headers=headers)).get("status", ""))

    def wait_for_approval(self, pending: ApprovalPending, timeout: float = 300.0) -> None:
        """Polls the approval every `interval` seconds until a human decides: returns once approved (retry
        the same exchange then), raises `ApprovalDenied` when denied or expired, `TimeoutError` past
        `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.approval_status(pending)
            if status == "approved":
                return
            if status in ("denied", "expired"):
                raise ApprovalDenied("access_denied", f"the approval was {status}")
            if time.monotonic() + pending.interval > deadline:
                raise TimeoutError(f"approval {pending.approval_id} still pending after {timeout} s")
            time.sleep(pending.interval)

    def approve(self, approval_id: str, reason: str = "") -> Dict[str, Any]:
        """Approves a pending approval: for an approver (a client with the `approve` RPC), never the client
        whose exchange opened it. Returns the approval's record."""
        return _json(self._post(f"/approvals/{approval_id}/approve", [("reason", reason)]))

    def deny(self, approval_id: str, reason: str = "") -> Dict[str, Any]:
        """Denies a pending approval (approvers only): the identical exchange stays refused."""
        return _json(self._post(f"/approvals/{approval_id}/deny", [("reason", reason)]))

    # -- tasks ------------------------------------------------------------------------------------------

    def task(
        self,
        task_id: str,
        *,
        purpose: str = "",
        session_id: str = "",
        subject_token: Optional[SubjectToken] = None,
    ) -> "Task":
        """A task scope: `with broker.task("task-42", purpose=…) as task:` (or `async with`). Tokens from
        `task.exchange` carry the task; leaving the block, normally or by an exception, revokes the task at
        the broker, so every token of the task — and every token derived from them — is inactive."""
        from .task import Task

        return Task(self, task_id, purpose=purpose, session_id=session_id, subject_token=subject_token)

