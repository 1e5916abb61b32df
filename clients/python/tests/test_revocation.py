"""Revocations for offline verifiers: the token's status list, and the broker's revocation watch stream."""

import time

import jwt
import pytest

from tessera_client import Broker, RevocationWatch, TokenRejected, Verifier
from tessera_client import TOKEN_TYPE_ACCESS_TOKEN

CRM = "https://crm.example"


def test_the_status_list_marks_a_revoked_tasks_tokens_for_an_offline_verifier(broker_url, subject):
    broker = Broker(broker_url, subject_token=subject)
    kept = broker.exchange(CRM, "crm:read", task_id="t-status-kept").access_token
    doomed = broker.exchange(CRM, "crm:read", task_id="t-status-doomed").access_token
    assert "status_list" in jwt.decode(doomed, options={"verify_signature": False})["status"]
    # Before the revocation, both are valid in their list.
    assert Verifier(broker_url, CRM, status_lists=True).verify_offline(doomed).task_id == "t-status-doomed"
    broker.revoke(task_id="t-status-doomed", reason="test")
    # A verifier whose copy of the list is fresh (a list is cached for its ttl) sees exactly the revoked task's.
    offline = Verifier(broker_url, CRM, status_lists=True)
    with pytest.raises(TokenRejected) as revoked:
        offline.verify_offline(doomed)
    assert revoked.value.status == 401 and "status list" in revoked.value.description
    assert offline.verify_offline(kept).task_id == "t-status-kept"
    # Without status lists, offline verification cannot know.
    Verifier(broker_url, CRM).verify_offline(doomed)


def test_a_watching_verifier_refuses_a_revoked_token_and_its_descendants_at_once(broker_url, subject):
    watch = RevocationWatch(broker_url).start()
    try:
        assert watch.ready.wait(10), "the watch stream did not open"
        verifier = Verifier(broker_url, CRM, watch=watch, introspection_cache_seconds=60)
        broker = Broker(broker_url, subject_token=subject)
        parent = broker.exchange(CRM, "crm:read crm:write", task_id="t-watch").access_token
        child = broker.exchange(CRM, "crm:read", subject_token=parent, subject_token_type=TOKEN_TYPE_ACCESS_TOKEN,
                                cache=False).access_token
        assert verifier.verify(parent).jti and verifier.verify(child).jti  # both introspected active, cached
        broker.revoke(parent, reason="test")
        claims = jwt.decode(child, options={"verify_signature": False})
        deadline = time.monotonic() + 10
        while not watch.revokes(claims) and time.monotonic() < deadline:
            time.sleep(0.02)
        for token in (parent, child):
            with pytest.raises(TokenRejected):
                verifier.verify_offline(token)
            with pytest.raises(TokenRejected):
                verifier.verify(token)  # the cached "active" was dropped when the event arrived
        # An unrelated token still passes.
        other = broker.exchange(CRM, "crm:read", task_id="t-watch-other").access_token
        assert verifier.verify_offline(other).task_id == "t-watch-other"
        assert watch.cursor, "the watch keeps the cursor it would resume from"
    finally:
        watch.stop()
