"""The resource-server helpers: offline and online verification, the FastAPI dependency, the MCP verifier."""

import asyncio

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from tessera_client import Broker, TokenRejected, Verifier, VerifiedToken
from tessera_client.mcp import McpTokenVerifier
from tessera_client.starlette import require

from conftest import assertion

CRM = "https://crm.example"


def test_offline_checks_signature_audience_scopes_and_type(broker_url, subject):
    broker = Broker(broker_url, subject_token=subject)
    token = broker.exchange(CRM, "crm:read", task_id="t-offline").access_token
    crm = Verifier(broker_url, CRM)
    verified = crm.verify_offline(token, ["crm:read"])
    assert verified.sub == "orchestrator-1" and verified.task_id == "t-offline" and verified.scopes == ["crm:read"]
    with pytest.raises(TokenRejected) as scope:
        crm.verify_offline(token, ["crm:write"])
    assert scope.value.status == 403 and scope.value.error == "insufficient_scope" and scope.value.scope == "crm:write"
    with pytest.raises(TokenRejected) as audience:
        Verifier(broker_url, "https://other.example").verify_offline(token)
    assert audience.value.status == 401 and "audience" in audience.value.description
    head, payload, signature = token.split(".")
    with pytest.raises(TokenRejected):
        crm.verify_offline(f"{head}.{payload}.{signature[::-1]}")
    # An upstream assertion is not a tessera access token, even though it is a signed JWT.
    with pytest.raises(TokenRejected):
        crm.verify_offline(subject)


def test_online_verification_sees_a_revocation_at_once(broker_url, subject):
    broker = Broker(broker_url, subject_token=subject)
    token = broker.exchange(CRM, "crm:read", task_id="t-online").access_token
    crm = Verifier(broker_url, CRM)
    assert crm.verify(token).jti
    broker.revoke(token, reason="test")
    crm.verify_offline(token)  # offline cannot know
    with pytest.raises(TokenRejected) as revoked:
        crm.verify(token)
    assert revoked.value.status == 401 and revoked.value.error == "invalid_token"


def test_the_fastapi_dependency_admits_only_live_tokens_with_the_scopes(broker_url, subject):
    verifier = Verifier(broker_url, CRM)
    app = FastAPI()

    @app.get("/cases/{case}")
    async def case(case: str, token: VerifiedToken = Depends(require(verifier, ["crm:read"]))):
        return {"case": case, "sub": token.sub, "task": token.task_id}

    broker = Broker(broker_url, subject_token=subject)
    with TestClient(app) as http, broker.task("t-fastapi") as task:
        read = task.exchange(CRM, "crm:read").access_token
        write = task.exchange(CRM, "crm:write").access_token
        ok = http.get("/cases/1234", headers={"Authorization": f"Bearer {read}"})
        assert ok.status_code == 200 and ok.json() == {"case": "1234", "sub": "orchestrator-1", "task": "t-fastapi"}
        missing = http.get("/cases/1234")
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer ")
        scope = http.get("/cases/1234", headers={"Authorization": f"Bearer {write}"})
        assert scope.status_code == 403 and 'error="insufficient_scope"' in scope.headers["www-authenticate"]
    # The task ended: its tokens are refused.
    with TestClient(app) as http:
        assert http.get("/cases/1234", headers={"Authorization": f"Bearer {read}"}).status_code == 401


def test_the_mcp_verifier_answers_access_tokens_for_live_tokens_only(broker_url, subject):
    verifier = McpTokenVerifier(Verifier(broker_url, CRM))
    broker = Broker(broker_url, subject_token=subject)
    token = broker.exchange(CRM, "crm:read", task_id="t-mcp").access_token

    access = asyncio.run(verifier.verify_token(token))
    assert access is not None and access.scopes == ["crm:read"] and access.resource == CRM
    broker.revoke(token, reason="test")
    assert asyncio.run(verifier.verify_token(token)) is None
    assert asyncio.run(verifier.verify_token(assertion("someone"))) is None


async def _call_echo(url: str, token: str):
    """Calls the MCP server's `echo` tool with `token`: its text, or the exception that refused it."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    try:
        async with streamablehttp_client(url, headers={"Authorization": f"Bearer {token}"}) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return (await session.call_tool("echo", {"text": "hello"})).content[0].text
    except BaseException as e:  # the SDK surfaces a 401/403 as an exception (in a task group)
        return e


def test_an_mcp_server_admits_only_live_tokens_with_its_scope(broker_url, subject, serve):
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.fastmcp import FastMCP

    broker = Broker(broker_url, subject_token=subject)
    port_holder = serve(None)  # a free port for the server's own URL
    resource = f"http://127.0.0.1:{port_holder.port}/mcp"
    server = FastMCP("tessera-protected", host="127.0.0.1", port=port_holder.port,
                     token_verifier=McpTokenVerifier(Verifier(broker_url, CRM)),
                     auth=AuthSettings(issuer_url=broker.issuer, resource_server_url=resource,
                                       required_scopes=["crm:read"]))

    @server.tool()
    def echo(text: str) -> str:
        """Echoes its input."""
        return f"echo: {text}"

    port_holder.server.config.app = server.streamable_http_app()
    with port_holder, broker.task("t-mcp-server") as task:
        read = task.exchange(CRM, "crm:read").access_token
        write = task.exchange(CRM, "crm:write").access_token
        assert asyncio.run(_call_echo(resource, read)) == "echo: hello"
        assert not isinstance(asyncio.run(_call_echo(resource, write)), str), "crm:write lacks the server's scope"
        Broker(broker_url).revoke(read, reason="test")
        assert not isinstance(asyncio.run(_call_echo(resource, read)), str), "a revoked token is refused at once"
