"""The broker client against a real dev-mode tessera: typed exchange, the cache, task scopes."""

import asyncio
import dataclasses
import time

import httpx
import pytest

from tessera_client import Broker, ClientSecret, OAuthError, TokenResponse

from conftest import assertion

CRM = "https://crm.example"


def test_exchange_answers_the_rfc8693_response_typed(broker_url, subject):
    broker = Broker(broker_url, subject_token=subject)
    token = broker.exchange(CRM, "crm:read", task_id="t-typed")
    assert isinstance(token, TokenResponse)
    assert token.issued_token_type == "urn:ietf:params:oauth:token-type:access_token"
    assert token.token_type == "Bearer" and token.scopes == ["crm:read"]
    assert 0 < token.expires_in <= 300 and token.remaining() > 0
    assert token.access_token not in repr(token)
    seen = broker.introspect(token)
    assert seen.active and seen.aud == CRM and seen.task_id == "t-typed" and seen.sub == "orchestrator-1"


def test_a_refusal_is_an_oauth_error_with_its_code(broker_url, subject):
    broker = Broker(broker_url, subject_token=subject)
    with pytest.raises(OAuthError) as refused:
        broker.exchange(CRM, "crm:export", task_id="t-refused")  # the demo policy never grants it
    assert refused.value.error == "invalid_scope" and refused.value.status == 400
    with pytest.raises(OAuthError) as unknown:
        broker.exchange("https://nowhere.example", "crm:read", task_id="t-refused")
    assert unknown.value.error == "invalid_target"


def test_the_cache_is_per_audience_scopes_task_and_actor(broker_url, subject):
    broker = Broker(broker_url, subject_token=subject)
    first = broker.exchange(CRM, "crm:read crm:write", task_id="t-cache")
    assert broker.exchange(CRM, "crm:write crm:read", task_id="t-cache") is first  # same scope set
    assert broker.exchange(CRM, "crm:read", task_id="t-cache") is not first
    assert broker.exchange(CRM, "crm:read crm:write", task_id="t-other") is not first
    actor = assertion("summariser-1")
    acted = broker.exchange(CRM, "crm:read crm:write", task_id="t-cache", actor_token=actor)
    assert acted is not first and broker.introspect(acted).act.sub == "summariser-1"
    assert broker.exchange(CRM, "crm:read crm:write", task_id="t-cache", cache=False) is not first


def test_a_cached_token_is_exchanged_again_shortly_before_it_expires(broker_url, subject):
    broker = Broker(broker_url, subject_token=subject, refresh_margin=30)
    first = broker.exchange(CRM, "crm:read", task_id="t-refresh")
    # The same token, as it will be 280 s from now: 20 s left, inside the margin (30 s, a tenth of 300 s).
    (key,) = [k for k, v in broker._cache.items() if v is first]
    broker._cache[key] = dataclasses.replace(first, expires_at=time.time() + 20)
    second = broker.exchange(CRM, "crm:read", task_id="t-refresh")
    assert second.access_token != first.access_token and second.remaining() > 200


def test_leaving_a_task_block_revokes_every_token_of_the_task(broker_url, subject):
    broker = Broker(broker_url, subject_token=subject)
    with broker.task("task-42", purpose="summarise case 1234") as task:
        read = task.exchange(CRM, "crm:read")
        write = task.exchange(CRM, "crm:write")
        ceiling = task.task_token("crm:read crm:write")
        # A sub-agent's token, derived from the task token with the sub-agent's assertion as actor.
        delegated = broker.exchange(CRM, "crm:read", subject_token=ceiling.access_token,
                                    subject_token_type="urn:ietf:params:oauth:token-type:access_token",
                                    actor_token=assertion("summariser-1"), task_id="task-42")
        tokens = [read, write, ceiling, delegated]
        assert all(broker.introspect(t).active for t in tokens)
        assert broker.introspect(read).task_id == "task-42"
    assert task.revoked
    assert not any(broker.introspect(t).active for t in tokens)
    # The cache forgot them: a new task with the same id would not be handed a dead token.
    assert not any(v in tokens for v in broker._cache.values())


def test_a_task_block_left_by_an_exception_revokes_too(broker_url, subject):
    broker = Broker(broker_url, subject_token=subject)
    with pytest.raises(RuntimeError):
        with broker.task("task-fails") as task:
            token = task.exchange(CRM, "crm:read")
            raise RuntimeError("the agent crashed")
    assert not broker.introspect(token).active


def test_async_with_task_revokes_on_exit(broker_url, subject):
    async def run():
        broker = Broker(broker_url, subject_token=subject)
        async with broker.task("task-async", purpose="async") as task:
            token = await task.aexchange(CRM, "crm:read")
            assert (await broker.aintrospect(token)).active
        alive = (await broker.aintrospect(token)).active
        await broker.aclose()
        return alive

    assert asyncio.run(run()) is False


def test_secrets_never_show_in_reprs():
    creds = ClientSecret("orchestrator", "s3cret-value")
    assert "s3cret-value" not in repr(creds)


def test_credentials_are_sent_as_client_secret_basic_and_post(broker_url, subject):
    # Dev mode knows one client, the loopback one: a caller naming another client is refused, which shows
    # the credentials reached the broker in the form it reads (Basic header or form fields).
    for method in ("basic", "post"):
        broker = Broker(broker_url, ClientSecret("nobody", "wrong", method=method), subject_token=subject)
        with pytest.raises(OAuthError) as refused:
            broker.exchange(CRM, "crm:read", task_id="t-auth")
        assert refused.value.error == "invalid_client" and refused.value.status == 401


def test_an_approval_answer_is_a_typed_exception():
    from tessera_client import ApprovalDenied, ApprovalPending
    from tessera_client.broker import _error

    body = {"error": "authorization_pending", "error_description": "a human must approve crm:export",
            "approval_id": "ap-1", "approval_uri": "http://b/approvals/ap-1", "interval": 3}
    pending = _error(httpx.Response(400, json=body))
    assert isinstance(pending, ApprovalPending)
    assert (pending.approval_id, pending.approval_uri, pending.interval) == ("ap-1", "http://b/approvals/ap-1", 3)
    denied = _error(httpx.Response(400, json={"error": "access_denied", "error_description": "no"}))
    assert isinstance(denied, ApprovalDenied)
