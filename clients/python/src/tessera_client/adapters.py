"""Auth adapters for `httpx` and `requests`: each request to the downstream API carries a tessera token
for that API (from the broker's cache, exchanged when missing or near expiry). On a 401 the token is
dropped, exchanged again, and the request sent once more — once: a second 401 is the API's answer. If no
token can be had, the request is not sent: there is no fallback to a broader credential."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncGenerator, Generator

import httpx

from .models import TokenResponse

if TYPE_CHECKING:
    from .broker import Broker


def _authorize(request: Any, token: TokenResponse) -> None:
    # DPoP-bound tokens need a proof this adapter does not make; tessera issues Bearer unless asked.
    request.headers["Authorization"] = f"Bearer {token.access_token}"


class HttpxAuth(httpx.Auth):
    """`httpx.Client(auth=HttpxAuth(broker, "https://crm.example", "crm:read", task_id=…))`; works with
    `httpx.AsyncClient` too. Keyword arguments are those of `Broker.exchange`."""

    def __init__(self, broker: "Broker", audience: str, scope: Any = "", **exchange: Any) -> None:
        self.broker = broker
        self.audience = audience
        self.scope = scope
        self.exchange = exchange

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.broker.exchange(self.audience, self.scope, **self.exchange)
        _authorize(request, token)
        response = yield request
        if response.status_code == 401:
            self.broker.invalidate(token)
            _authorize(request, self.broker.exchange(self.audience, self.scope, **self.exchange))
            yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.broker.aexchange(self.audience, self.scope, **self.exchange)
        _authorize(request, token)
        response = yield request
        if response.status_code == 401:
            self.broker.invalidate(token)
            _authorize(request, await self.broker.aexchange(self.audience, self.scope, **self.exchange))
            yield request


try:
    import requests
    from requests.auth import AuthBase
except ImportError:  # pragma: no cover - requests is optional
    requests = None  # type: ignore[assignment]
    AuthBase = object  # type: ignore[assignment, misc]


class RequestsAuth(AuthBase):
    """`requests.get(url, auth=RequestsAuth(broker, "https://crm.example", "crm:read", task_id=…))`."""

    def __init__(self, broker: "Broker", audience: str, scope: Any = "", **exchange: Any) -> None:
        if requests is None:
            raise ImportError("RequestsAuth needs `requests` (pip install 'tessera-client[requests]')")
        self.broker = broker
        self.audience = audience
        self.scope = scope
        self.exchange = exchange

    def __call__(self, request: Any) -> Any:
        token = self.broker.exchange(self.audience, self.scope, **self.exchange)
        _authorize(request, token)
        retried = {"done": False}

        def on_response(response: Any, **kwargs: Any) -> Any:
            if response.status_code != 401 or retried["done"]:
                return response
            retried["done"] = True
            self.broker.invalidate(token)
            fresh = self.broker.exchange(self.audience, self.scope, **self.exchange)
            response.content  # drain, so the connection can be reused
            response.close()
            again = response.request.copy()
            _authorize(again, fresh)
            retry = response.connection.send(again, **kwargs)
            retry.history.append(response)
            retry.request = again
            return retry

        request.register_hook("response", on_response)
        return request
