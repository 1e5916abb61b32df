"""An MCP server built with the official MCP Python SDK (FastMCP), protected by tessera: it validates bearer
tokens through tessera's RFC 7662 introspection endpoint, advertises tessera in its protected resource
metadata (RFC 9728), and only accepts tokens issued for its own URL. An MCP client from the same SDK then
calls a tool with a token for the server (it works), with a token for another audience (refused), and with
the first token right after tessera revoked it (refused).

The tokens come from the test (files). The last line is a summary the Rust test reads:
`mcp interop: N passed, 0 failed`.
"""

import argparse
import asyncio
import sys
import threading
import time

import httpx
import uvicorn
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.fastmcp import FastMCP

passed, failed = 0, 0


def check(what, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}: {detail}", file=sys.stderr)


class TesseraIntrospection:
    """The MCP SDK's TokenVerifier, answered by tessera's introspection endpoint."""

    def __init__(self, url, client_id, client_secret):
        self.url, self.auth = url, (client_id, client_secret)

    async def verify_token(self, token):
        async with httpx.AsyncClient(timeout=10) as http:
            answer = (await http.post(self.url, data={"token": token}, auth=self.auth)).json()
        if not answer.get("active"):
            return None
        return AccessToken(
            token=token,
            client_id=answer["client_id"],
            scopes=answer.get("scope", "").split(),
            expires_at=answer.get("exp"),
            resource=answer.get("aud"),
            subject=answer.get("sub"),
            claims={k: answer[k] for k in ("iss", "act", "task_id") if k in answer},
        )


async def call_tool(url, token):
    """Calls the `echo` tool with `token`; returns its text, or the exception that refused it."""
    try:
        async with streamablehttp_client(url, headers={"Authorization": f"Bearer {token}"}) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("echo", {"text": "hello"})
                return result.content[0].text
    except BaseException as e:  # the SDK surfaces a 401 as an exception (in a task group)
        return e


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tessera", required=True, help="tessera's HTTP face, e.g. http://127.0.0.1:8080")
    p.add_argument("--issuer", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--scope", required=True)
    p.add_argument("--gateway-secret", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--other-token-file", required=True)
    args = p.parse_args()
    resource = f"http://127.0.0.1:{args.port}/mcp"
    token = open(args.token_file).read().strip()
    other = open(args.other_token_file).read().strip()

    server = FastMCP(
        "tessera-protected",
        host="127.0.0.1",
        port=args.port,
        token_verifier=TesseraIntrospection(f"{args.tessera}/oauth2/introspect", "gateway", args.gateway_secret),
        auth=AuthSettings(
            issuer_url=args.issuer,
            resource_server_url=resource,
            required_scopes=[args.scope],
            validate_token_resource=True,
        ),
    )

    @server.tool()
    def echo(text: str) -> str:
        """Echoes its input."""
        return f"echo: {text}"

    config = uvicorn.Config(server.streamable_http_app(), host="127.0.0.1", port=args.port, log_level="warning")
    http = uvicorn.Server(config)
    threading.Thread(target=http.run, daemon=True).start()
    deadline = time.time() + 20
    while not http.started:
        if time.time() > deadline:
            print("the MCP server did not start", file=sys.stderr)
            return 1
        time.sleep(0.05)

    # The server advertises tessera as its authorization server (RFC 9728).
    metadata = httpx.get(f"http://127.0.0.1:{args.port}/.well-known/oauth-protected-resource/mcp", timeout=10)
    body = metadata.json() if metadata.status_code == 200 else {}
    check("metadata names tessera", any(s.rstrip("/") == args.issuer.rstrip("/") for s in body.get("authorization_servers", [])), metadata.text)
    # Unauthenticated: 401 with a challenge pointing at that metadata.
    bare = httpx.post(resource, json={}, timeout=10)
    check("no token: 401", bare.status_code == 401, bare.status_code)
    check("no token: resource_metadata", "resource_metadata" in bare.headers.get("www-authenticate", ""), bare.headers)

    result = asyncio.run(call_tool(resource, token))
    check("a token for this server runs the tool", result == "echo: hello", repr(result))
    result = asyncio.run(call_tool(resource, other))
    check("a token for another audience is refused", not isinstance(result, str), repr(result))

    revoked = httpx.post(f"{args.tessera}/oauth2/revoke", data={"token": token}, timeout=10)
    check("tessera revokes the token", revoked.status_code == 200, revoked.text)
    result = asyncio.run(call_tool(resource, token))
    check("the revoked token is refused at once", not isinstance(result, str), repr(result))

    http.should_exit = True
    print(f"mcp interop: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
