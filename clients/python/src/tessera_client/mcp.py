"""For MCP servers built with the official MCP Python SDK: a `TokenVerifier` backed by tessera, so a tool
call is admitted only with a live tessera token for this server's audience.

    from mcp.server.fastmcp import FastMCP
    from mcp.server.auth.settings import AuthSettings
    server = FastMCP("tools", token_verifier=McpTokenVerifier(verifier), auth=AuthSettings(
        issuer_url=broker_issuer, resource_server_url="https://tools.example", required_scopes=["tools:call"]))
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from .errors import TesseraError, TokenRejected
from .resource import Verifier


class McpTokenVerifier:
    """Implements `mcp.server.auth.provider.TokenVerifier`: `verify_token` answers an `AccessToken` for a
    token `verifier` accepts (offline, then introspection unless `online=False`), `None` otherwise (the SDK
    answers 401). The SDK checks `required_scopes` itself; `scopes` adds a floor of its own."""

    def __init__(self, verifier: Verifier, scopes: Iterable[str] = (), *, online: bool = True) -> None:
        self.verifier = verifier
        self.scopes = list(scopes)
        self.online = online

    async def verify_token(self, token: str) -> Optional[Any]:
        from mcp.server.auth.provider import AccessToken

        try:
            v = await self.verifier.averify(token, self.scopes, online=self.online)
        except (TokenRejected, TesseraError):
            return None  # fail closed: refused, or the broker could not say
        return AccessToken(
            token=token,
            client_id=v.client_id or v.sub,
            scopes=v.scopes,
            expires_at=v.exp,
            resource=v.audience,
        )
