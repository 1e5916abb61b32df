"""An unavailable broker: backoff, the circuit breaker, a restart mid-task — and never a broader credential."""

import os
import subprocess
import tempfile
import threading
import time

import httpx
import pytest

from tessera_client import Backoff, Broker, BrokerUnavailable, CircuitBreaker, CircuitOpen, Verifier

from conftest import assertion, env, free_port

CRM = "https://crm.example"


def test_an_unreachable_broker_raises_after_bounded_retries_and_nothing_is_sent(subject, serve):
    import downstream

    api = downstream.app("http://127.0.0.1:9")
    port = free_port()  # nothing listens here
    broker = Broker(f"http://127.0.0.1:{port}", subject_token=subject,
                    backoff=Backoff(attempts=3, base=0.01, cap=0.05), breaker=CircuitBreaker(threshold=2, cooldown=60))
    with serve(api) as server:
        auth = broker.task("t-down").httpx_auth(CRM, "crm:read")
        for _ in range(2):
            with pytest.raises(BrokerUnavailable) as down:
                httpx.get(server.url + "/records", auth=auth)
            assert not isinstance(down.value, CircuitOpen)
        # Two failed calls opened the circuit: the next fails fast, without trying the broker.
        assert broker.breaker.state == "open"
        with pytest.raises(CircuitOpen):
            httpx.get(server.url + "/records", auth=auth)
        # The API never saw a request: no token, and certainly not the subject token in its place.
        assert api.state.seen["requests"] == 0


def test_backoff_is_bounded_with_jitter():
    backoff = Backoff(attempts=6, base=0.1, cap=1.0)
    delays = [backoff.delay(n) for n in range(12) for _ in range(50)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 100  # jittered, not a fixed schedule
    assert backoff.delay(0, retry_after=30) == 1.0  # a Retry-After beyond the cap is capped


def test_the_breaker_half_opens_after_its_cooldown():
    breaker = CircuitBreaker(threshold=1, cooldown=0.05)
    breaker.failure()
    assert breaker.state == "open"
    time.sleep(0.06)
    assert breaker.state == "half-open"
    breaker.before()  # a probe is let through
    breaker.success()
    assert breaker.state == "closed"


class Tessera:
    """A dev-mode `tessera serve` on a fixed port, with its keys in one folder so a restart keeps them."""

    def __init__(self, dev_dir: str, port: int) -> None:
        self.dev_dir, self.port = dev_dir, port
        self.process = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [env("TESSERA_BIN"), "serve", "--dev-dir", self.dev_dir, "--grpc-addr", f"127.0.0.1:{free_port()}",
             "--http-addr", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("tessera serve did not come up")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def test_the_client_rides_out_a_broker_restart_mid_task():
    with tempfile.TemporaryDirectory() as folder:
        dev_dir = os.path.join(folder, ".tessera-dev")
        tessera = Tessera(dev_dir, free_port())
        tessera.start()
        url = f"http://127.0.0.1:{tessera.port}"
        subject = assertion("orchestrator-1", dev_dir=dev_dir)
        broker = Broker(url, subject_token=subject, backoff=Backoff(attempts=12, base=0.1, cap=1.0),
                        breaker=CircuitBreaker(threshold=3, cooldown=5))
        try:
            with broker.task("task-restart", purpose="survive a restart") as task:
                before = task.exchange(CRM, "crm:read")
                tessera.kill()
                # The broker comes back on the same port a moment later; meanwhile the client backs off.
                restart = threading.Timer(1.0, tessera.start)
                restart.start()
                after = task.exchange(CRM, "crm:read", cache=False)
                restart.join()
                assert broker.breaker.state == "closed"
                # What it got is the narrow token it asked for, from the restarted broker — never the subject
                # token or anything broader.
                assert after.access_token not in (before.access_token, subject)
                verified = Verifier(url, CRM).verify(after.access_token, ["crm:read"])
                assert verified.scopes == ["crm:read"] and verified.task_id == "task-restart"
            # Leaving the task after the restart still revokes it.
            assert not broker.introspect(after).active
        finally:
            tessera.kill()
