"""A small downstream API protected by tessera (JWKS + introspection), for the adapter tests: `GET /records`
needs `crm:read`; it counts the requests it saw and remembers the last bearer token."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tessera_client import Verifier
from tessera_client.starlette import require


def app(broker_url: str, audience: str = "https://crm.example") -> Starlette:
    verifier = Verifier(broker_url, audience)
    needs_read = require(verifier, ["crm:read"])
    seen = {"requests": 0, "tokens": []}

    async def records(request: Request) -> JSONResponse:
        seen["requests"] += 1
        seen["tokens"].append(request.headers.get("authorization", "").removeprefix("Bearer "))
        token = await needs_read(request)
        return JSONResponse({"sub": token.sub, "task_id": token.task_id, "scopes": token.scopes})

    api = Starlette(routes=[Route("/records", records)])
    api.state.seen = seen
    return api
