"""The httpx and requests adapters against a downstream API that checks tokens (JWKS + introspection)."""

import asyncio

import httpx
import pytest
import requests

from tessera_client import Broker, OAuthError

import downstream

CRM = "https://crm.example"


def operator(url):
    """Someone else — a security operator — revoking: this client's cache does not know."""
    return Broker(url)


def test_httpx_attaches_the_task_token_and_recovers_from_a_401_once(broker_url, subject, serve):
    api = downstream.app(broker_url)
    broker = Broker(broker_url, subject_token=subject)
    with serve(api) as server, broker.task("task-httpx") as task:
        with httpx.Client(base_url=server.url, auth=task.httpx_auth(CRM, "crm:read")) as http:
            first = http.get("/records")
            assert first.status_code == 200 and first.json()["task_id"] == "task-httpx"
            # The API now refuses that token (it was revoked): the adapter exchanges again, once, and succeeds.
            operator(broker_url).revoke(api.state.seen["tokens"][-1], reason="test")
            second = http.get("/records")
            assert second.status_code == 200
            assert api.state.seen["requests"] == 3  # the refused try, and the retry
            assert api.state.seen["tokens"][1] != api.state.seen["tokens"][2]


def test_httpx_async_client(broker_url, subject, serve):
    api = downstream.app(broker_url)
    broker = Broker(broker_url, subject_token=subject)

    async def run(url):
        async with broker.task("task-httpx-async") as task:
            async with httpx.AsyncClient(base_url=url, auth=task.httpx_auth(CRM, "crm:read")) as http:
                return (await http.get("/records")).json()

    with serve(api) as server:
        assert asyncio.run(run(server.url))["task_id"] == "task-httpx-async"


def test_a_second_401_is_the_apis_answer(broker_url, subject, serve):
    api = downstream.app(broker_url)
    broker = Broker(broker_url, subject_token=subject)
    with serve(api) as server:
        # crm:write only: the API needs crm:read, so it refuses (403), and the adapter does not loop.
        with broker.task("task-403") as task:
            answer = httpx.get(server.url + "/records", auth=task.httpx_auth(CRM, "crm:write"))
            assert answer.status_code == 403 and "insufficient_scope" in answer.headers["www-authenticate"]
        # The task is revoked behind the adapter's back: the API refuses the cached token (401), the
        # adapter asks for a fresh one, the broker refuses it for the revoked task, and nothing more is sent.
        with broker.task("task-dead") as task:
            auth = task.httpx_auth(CRM, "crm:read")
            assert httpx.get(server.url + "/records", auth=auth).status_code == 200
            operator(broker_url).revoke(task_id="task-dead", reason="test")
            before = api.state.seen["requests"]
            with pytest.raises(OAuthError) as refused:
                httpx.get(server.url + "/records", auth=auth)
            assert refused.value.error == "invalid_grant"
            assert api.state.seen["requests"] == before + 1


def test_requests_attaches_the_token_and_recovers_from_a_401_once(broker_url, subject, serve):
    api = downstream.app(broker_url)
    broker = Broker(broker_url, subject_token=subject)
    with serve(api) as server, broker.task("task-requests") as task:
        auth = task.requests_auth(CRM, "crm:read")
        with requests.Session() as http:
            assert http.get(server.url + "/records", auth=auth).status_code == 200
            operator(broker_url).revoke(api.state.seen["tokens"][-1], reason="test")
            again = http.get(server.url + "/records", auth=auth)
            assert again.status_code == 200 and len(again.history) == 1
            assert again.history[0].status_code == 401
