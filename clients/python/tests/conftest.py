"""The suite runs against a real dev-mode `tessera serve` (tests/integration/sdk.rs starts it):

- `TESSERA_URL`: its HTTP face; `TESSERA_DEV_DIR`: its `.tessera-dev` folder (to mint dev assertions);
- `TESSERA_BIN`: the `tessera` binary (assertions, and the restart test's own broker).

Without them the suite fails: it does not skip."""

import os
import socket
import subprocess
import threading
from typing import Iterator

import pytest
import uvicorn


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run through `cargo test --test integration sdk` (scripts/test)")
    return value


@pytest.fixture(scope="session")
def broker_url() -> str:
    return env("TESSERA_URL")


def assertion(sub: str, dev_dir: str = "", scope: str = "") -> str:
    args = [env("TESSERA_BIN"), "dev", "assertion", "--sub", sub, "--dev-dir", dev_dir or env("TESSERA_DEV_DIR")]
    if scope:
        args += ["--scope", scope]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def subject() -> str:
    return assertion("orchestrator-1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A uvicorn server for an ASGI app, in a thread, on a free port."""

    def __init__(self, app: object) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Server":
        self.thread.start()
        import time

        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.02)
        raise RuntimeError("the downstream API did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def serve() -> Iterator[type]:
    yield Server
