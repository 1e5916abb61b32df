"""A FastAPI / Starlette dependency that admits a request only with a tessera token for this API carrying
the scopes a route needs:

    verifier = Verifier("http://tessera:8080", "https://crm.example", credentials=…)

    @app.get("/cases/{case}")                          # FastAPI
    async def case(case: str, token: VerifiedToken = Depends(require(verifier, ["crm:read"]))): …

    async def case(request):                           # Starlette
        token = await require(verifier, ["crm:read"])(request)

A refusal is an `HTTPException` with the RFC 6750 status and `WWW-Authenticate` challenge: 401
`invalid_token` (missing, bad, expired, revoked, for another API), 403 `insufficient_scope`; 503 when the
broker cannot say whether the token is revoked (fail closed)."""

from typing import Awaitable, Callable, Iterable

from starlette.exceptions import HTTPException
from starlette.requests import Request

from .errors import BrokerUnavailable, TokenRejected
from .resource import VerifiedToken, Verifier, bearer


def require(
    verifier: Verifier, scopes: Iterable[str] = (), *, online: bool = True
) -> Callable[[Request], Awaitable[VerifiedToken]]:
    needed = list(scopes)

    async def dependency(request: Request) -> VerifiedToken:
        try:
            token = bearer(request.headers.get("authorization"))
            verified = await verifier.averify(token, needed, online=online)
        except TokenRejected as e:
            raise HTTPException(e.status, detail=e.description, headers={"WWW-Authenticate": e.www_authenticate()})
        except BrokerUnavailable:
            raise HTTPException(503, detail="the token could not be checked", headers={"Retry-After": "1"})
        request.state.tessera_token = verified
        return verified

    return dependency
