"""Fixtures for the Helm chart tests: the chart loaded by a real Helm engine (helm-python-sdk embeds Helm's
Go SDK), signing keys made by the tessera binary under test, and rendering helpers.

Run through `bash scripts/test-helm` (it installs the tools); TESSERA_BIN must name a tessera binary.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import helm_python as helm

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "tessera"
HERE = Path(__file__).resolve().parent

# The URI SAN of the test client certificate (pki fixture).
CLIENT_SPIFFE_ID = "spiffe://agents.example.org/ns/agents/sa/orchestrator"

# The release every test renders; with the name "tessera" the full name is "tessera" too.
RELEASE = "tessera"
NAMESPACE = "agents"


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get("TESSERA_BIN")
    if not path:
        raise pytest.UsageError(
            "TESSERA_BIN is not set: the Helm chart tests generate signing keys and check the rendered config with "
            "the tessera binary. Build it (`cargo build`) and run e.g. TESSERA_BIN=target/debug/tessera "
            "bash scripts/test-helm"
        )
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise pytest.UsageError(f"TESSERA_BIN={path} is not an executable file")


@pytest.fixture(scope="session")
def tessera_bin() -> str:
    return os.path.abspath(os.environ["TESSERA_BIN"])


def run_tessera(
    tessera_bin: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TESSERA")}, **(env or {})}
    return subprocess.run(
        [tessera_bin, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@dataclass(frozen=True)
class Key:
    pem: str
    kid: str
    alg: str


@pytest.fixture(scope="session")
def keys(tessera_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    """Two signing keys, as `tessera keygen` writes them: Ed25519 (the default) and ES256."""
    folder = tmp_path_factory.mktemp("keys")
    made = {}
    for name, extra in (("eddsa", []), ("es256", ["--alg", "es256"])):
        out = folder / f"{name}.pem"
        result = run_tessera(tessera_bin, "keygen", *extra, "--out", str(out))
        assert result.returncode == 0, result.stderr
        info = json.loads(result.stdout)
        made[name] = Key(pem=out.read_text(), kid=info["kid"], alg=info["alg"])
    return made


@dataclass(frozen=True)
class Pki:
    """PEM files as a cert-manager CA issuer writes them into a kubernetes.io/tls Secret (tls.crt, tls.key,
    ca.crt), plus a second CA for client certificates (a separate trust bundle) and a key that matches
    neither certificate."""

    files: dict[str, str]
    folder: Path

    def __getitem__(self, name: str) -> str:
        return self.files[name]


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stderr}"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A serving CA and a server certificate for the Service's names (signed by it), and a client CA: made
    with openssl, so `tessera config check` loads real certificates and keys."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "client-ca"):
        openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                "-subj", f"/CN=tessera test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    names = [RELEASE, f"{RELEASE}.{NAMESPACE}", f"{RELEASE}.{NAMESPACE}.svc", f"{RELEASE}.{NAMESPACE}.svc.cluster.local"]
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join('DNS:' + n for n in names)}\n"
    )
    openssl("req", "-new", *ec, "-keyout", "tls.key", "-out", "server.csr", "-subj", f"/CN={RELEASE}.{NAMESPACE}.svc", cwd=d)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "server.ext", "-out", "tls.crt", cwd=d)
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", "other.key", cwd=d)
    # A workload's certificate from the client CA, named by a SPIFFE ID.
    (d / "client.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
        f"subjectAltName=URI:{CLIENT_SPIFFE_ID}\n"
    )
    openssl("req", "-new", *ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=orchestrator", cwd=d)
    openssl("x509", "-req", "-in", "client.csr", "-CA", "client-ca.crt", "-CAkey", "client-ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "client.ext", "-out", "client.crt", cwd=d)
    names = ("tls.crt", "tls.key", "ca.crt", "client-ca.crt", "other.key", "client.crt", "client.key")
    return Pki({name: (d / name).read_text() for name in names}, d)


@pytest.fixture(scope="session")
def chart() -> helm.Chart:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@dataclass
class Rendered:
    """What `helm template` would print, split into manifests."""

    files: dict[str, str]
    docs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for path, text in sorted(self.files.items()):
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc.setdefault("__source__", path)
                    self.docs.append(doc)

    @property
    def notes(self) -> str:
        return next(text for path, text in self.files.items() if path.endswith("NOTES.txt"))

    def manifests(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in d.items() if k != "__source__"} for d in self.docs]

    def stream(self) -> str:
        """The multi-document YAML stream, as `helm template` prints it."""
        parts = []
        for path, text in sorted(self.files.items()):
            if path.endswith("NOTES.txt") or not text.strip():
                continue
            parts.append(f"---\n# Source: {path}\n{text.strip()}\n")
        return "".join(parts)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
        return found[0]

    def has(self, kind: str) -> bool:
        return bool(self.all(kind))

    # Shortcuts into the broker Deployment.
    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment", RELEASE)

    @property
    def pod(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]

    @property
    def container(self) -> dict[str, Any]:
        (container,) = [c for c in self.pod["spec"]["containers"] if c["name"] == "tessera"]
        return container

    def env(self) -> dict[str, Any]:
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in self.container.get("env", [])}


def render(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))


def render_error(chart: helm.Chart, values: dict[str, Any]) -> helm.HelmError:
    with pytest.raises(helm.HelmError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return caught.value
