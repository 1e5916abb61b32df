"""The Helm chart (helm/tessera), rendered and linted by a real Helm engine, for the value sets in value_sets.py:
every manifest validated against the Kubernetes API schemas (kubernetes-validate, strict), the rendered stream
passed through yamllint, the refused value sets asserted to fail with their messages, and the rendered config
checked by the tessera binary itself (`tessera config check`)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

import helm_python as helm
from conftest import CHART_DIR, CLIENT_SPIFFE_ID, HERE, NAMESPACE, RELEASE, ROOT, Rendered, render, render_error, run_tessera
from value_sets import GOOD, INVALID, REFUSED, SECRET_SHA256, WITH_CONFIG, WITH_TLS, full, minimal, tls_mtls_optional

# The Kubernetes versions every manifest is validated against: the oldest the chart is tested for and the
# newest kubernetes-validate carries.
K8S_VERSIONS = ["1.31.0", kubernetes_validate.utils.latest_version()]
SERVICE_MONITOR_SCHEMA = json.loads((HERE / "servicemonitor.schema.json").read_text())


@pytest.fixture(scope="module")
def rendered(chart, keys) -> dict[str, Rendered]:
    return {name: render(chart, build(keys)) for name, build in GOOD.items()}


# ---------------------------------------------------------------------------------------------------------------
# Lint, render, validate.


@pytest.mark.parametrize("name", GOOD)
def test_helm_lint_strict(name, keys):
    report = helm.lint(CHART_DIR, GOOD[name](keys), strict=True, namespace=NAMESPACE, kube_version="v1.31.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], json.dumps(report, indent=1)
    assert report["total_charts_linted"] == 1


@pytest.mark.parametrize("name", GOOD)
def test_manifests_validate_against_kubernetes_schemas(name, rendered):
    manifests = rendered[name].manifests()
    assert manifests, "nothing rendered"
    for manifest in manifests:
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        assert manifest["metadata"].get("namespace") == NAMESPACE, where
        if manifest["apiVersion"] == "monitoring.coreos.com/v1":
            jsonschema.validate(manifest, SERVICE_MONITOR_SCHEMA)
            continue
        for version in K8S_VERSIONS:
            try:
                validated = kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.utils.SchemaNotFoundError as e:
                pytest.fail(f"{where}: {e.message}")
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                pytest.fail(f"{where} is not a valid Kubernetes {version} object: {path}: {e.message}")
            assert validated == kubernetes_validate.utils.major_minor(version)


def test_validation_is_strict_and_catches_mistakes(rendered):
    """The validator really refuses what the API server would: an unknown field, a wrong type."""
    deployment = json.loads(json.dumps(rendered["minimal"].manifests()))
    deployment = next(m for m in deployment if m["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["serviceName"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    monitor = next(m for m in rendered["service-monitor"].manifests() if m["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["inteval"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)


@pytest.mark.parametrize("name", GOOD)
def test_rendered_yaml_passes_yamllint(name, rendered):
    config = YamlLintConfig(file=str(HERE / "yamllint.yaml"))
    stream = rendered[name].stream()
    problems = list(linter.run(stream, config))
    lines = stream.splitlines()
    assert not problems, "\n".join(f"{p.line}:{p.column} {p.rule} {p.desc}: {lines[p.line - 1]!r}" for p in problems)


@pytest.mark.parametrize("name", GOOD)
def test_resource_names_are_unique_and_labelled(name, rendered):
    seen = set()
    for manifest in rendered[name].manifests():
        key = (manifest["kind"], manifest["metadata"]["name"])
        assert key not in seen, key
        seen.add(key)
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/name"] == "tessera"
        assert labels["app.kubernetes.io/component"] in ("broker", "trial-redis")


# ---------------------------------------------------------------------------------------------------------------
# Refused values.


@pytest.mark.parametrize("name", REFUSED)
def test_unsafe_values_are_refused_with_a_clear_message(name, chart, keys):
    build, message = REFUSED[name]
    error = render_error(chart, build(keys))
    assert isinstance(error, helm.HelmRenderError), repr(error)
    assert message in str(error), str(error)
    assert "tessera: " in str(error)


@pytest.mark.parametrize("name", INVALID)
def test_schema_refuses_bad_values_at_install_time(name, chart, keys):
    build, where = INVALID[name]
    error = render_error(chart, build(keys))
    assert isinstance(error, helm.HelmValuesError), repr(error)
    assert "values don't meet the specifications of the schema" in str(error)
    assert where in str(error), str(error)


def test_default_values_meet_the_schema(chart):
    chart.validate_schema({})


# ---------------------------------------------------------------------------------------------------------------
# The rendered config is one tessera accepts.


# Where each volume is mounted in the pod, relative to /etc/tessera (tessera.toml is in config/).
MOUNTS = {"config": "config", "signing-keys": "keys", "tls": "tls", "client-ca": "client-ca", "approvals-webhook": "approvals"}


def lay_out(tmp_path: Path, rendered: Rendered, keys, pki=None) -> Path:
    """The pod's view: the ConfigMap's files in config/, the signing keys in keys/ (decoded from the chart's
    Secret, or generated under the names an existing Secret would hold), and with TLS the serving Secret's
    files in tls/ and a separate client CA bundle in client-ca/ (PEM files made by openssl, under the names
    the volumes' items give them)."""
    config_dir, keys_dir = tmp_path / "config", tmp_path / "keys"
    config_dir.mkdir()
    keys_dir.mkdir()
    for file, content in rendered.one("ConfigMap", f"{RELEASE}-config")["data"].items():
        (config_dir / file).write_text(content)
    volumes = {v["name"]: v for v in rendered.pod["spec"]["volumes"]}
    if "tls" in volumes:
        assert pki is not None, "a TLS value set needs the pki fixture"
        (tmp_path / "tls").mkdir()
        for item in volumes["tls"]["secret"]["items"]:
            (tmp_path / "tls" / item["path"]).write_text(pki[item["key"]])
    if "client-ca" in volumes:
        (tmp_path / "client-ca").mkdir()
        source = volumes["client-ca"].get("secret") or volumes["client-ca"]["configMap"]
        for item in source["items"]:
            (tmp_path / "client-ca" / item["path"]).write_text(pki["client-ca.crt"])
    if "approvals-webhook" in volumes:
        (tmp_path / "approvals").mkdir()
        for item in volumes["approvals-webhook"]["secret"]["items"]:
            (tmp_path / "approvals" / item["path"]).write_text("an HMAC key of at least thirty-two bytes, for the check")
    secret_name = volumes["signing-keys"]["secret"]["secretName"]
    items = [item["path"] for item in volumes["signing-keys"]["secret"]["items"]]
    chart_secrets = [s for s in rendered.all("Secret") if s["metadata"]["name"] == secret_name]
    if chart_secrets:
        for file, data in chart_secrets[0]["data"].items():
            (keys_dir / file).write_bytes(base64.b64decode(data))
        assert sorted(items) == sorted(chart_secrets[0]["data"])
    else:
        for i, file in enumerate(items):
            (keys_dir / file).write_text(list(keys.values())[i % len(keys)].pem)
    return config_dir / "tessera.toml"


@pytest.mark.parametrize("name", WITH_CONFIG)
def test_rendered_config_passes_tessera_config_check(name, rendered, keys, pki, tessera_bin, tmp_path):
    r = rendered[name]
    config_file = lay_out(tmp_path, r, keys, pki)
    # The mount paths the Deployment uses are the ones the relative paths in tessera.toml assume.
    mounts = {m["name"]: m["mountPath"] for m in r.container["volumeMounts"]}
    assert mounts["config"] == "/etc/tessera/config" and mounts["signing-keys"] == "/etc/tessera/keys"
    for volume, mount in mounts.items():
        if volume in MOUNTS:
            assert mount == f"/etc/tessera/{MOUNTS[volume]}", volume
    assert r.container["args"][:3] == ["serve", "--config", "/etc/tessera/config/tessera.toml"]

    result = run_tessera(tessera_bin, "config", "check", str(config_file))
    assert result.returncode == 0, result.stdout + result.stderr
    values = GOOD[name](keys)
    config = values.get("config", {})
    signing = values.get("signing", {})
    expected_keys = len(signing.get("keys") or signing.get("existingSecretKeys"))
    assert (
        f"ok ({len(config.get('issuers', []))} issuers, {len(config.get('audiences', []))} audiences, "
        f"{len(config.get('clients', []))} clients, {expected_keys} signing keys)" in result.stdout
    ), result.stdout


@pytest.mark.parametrize("name", ["ha", "trial-redis"])
def test_redis_url_reaches_the_store_config(name, rendered, keys, tessera_bin, tmp_path):
    """The pod's TESSERA__STORE__REDIS_URL is the config key store.redis_url, and the URL is one tessera takes."""
    r = rendered[name]
    config_file = lay_out(tmp_path, r, keys)
    ref = r.env()["TESSERA__STORE__REDIS_URL"]["secretKeyRef"]
    url = base64.b64decode(r.one("Secret", ref["name"])["data"][ref["key"]]).decode()
    result = run_tessera(tessera_bin, "config", "check", str(config_file), env={"TESSERA__STORE__REDIS_URL": url})
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_check_notices_a_broken_rendered_config(rendered, keys, tessera_bin, tmp_path):
    """The check above has teeth: the same layout without its signing key is refused."""
    config_file = lay_out(tmp_path, rendered["minimal"], keys)
    for key in (tmp_path / "keys").iterdir():
        key.unlink()
    result = run_tessera(tessera_bin, "config", "check", str(config_file))
    assert result.returncode != 0
    assert "signing.keys[0]" in result.stderr


def test_rendered_toml_mirrors_the_values(rendered, keys):
    r = rendered["full"]
    toml = tomllib.loads(r.one("ConfigMap")["data"]["tessera.toml"])
    values = full(keys)["config"]
    assert toml["server"] == {"grpc_addr": "0.0.0.0:50051", **values["server"]}
    assert toml["broker"] == values["broker"]
    assert toml["log"] == {"format": "json", "level": values["log"]["level"]}
    assert toml["rate_limits"] == values["rate_limits"]
    assert toml["policy"] == {"file": "policy.cedar"}
    assert toml["signing"] == {"keys": ["../keys/current.pem"]}
    assert toml["issuers"] == values["issuers"]
    assert toml["audiences"] == values["audiences"]
    assert toml["routes"] == values["routes"]
    assert toml["clients"] == values["clients"]
    assert "store" not in toml
    data = r.one("ConfigMap")["data"]
    assert data["policy.cedar"] == full(keys)["policy"]["cedar"]
    # Without rate limits in the values, the config has no [rate_limits] table (every limit off).
    assert "rate_limits" not in tomllib.loads(rendered["minimal"].one("ConfigMap")["data"]["tessera.toml"])
    assert json.loads(data["kubernetes-jwks.json"]) == json.loads(values["files"]["kubernetes-jwks.json"])


def test_approvals_render_their_section_and_mount_the_webhook_key(rendered):
    r = rendered["approvals"]
    toml = tomllib.loads(r.one("ConfigMap")["data"]["tessera.toml"])
    assert toml["approvals"] == {
        "pending_ttl": 600,
        "approved_ttl": 120,
        "webhook_url": "https://approvals.example.com/hooks/tessera",
        "webhook_secret_file": "../approvals/hmac.key",
    }
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    assert mounts["approvals-webhook"] == {"name": "approvals-webhook", "mountPath": "/etc/tessera/approvals", "readOnly": True}
    volume = {v["name"]: v for v in r.pod["spec"]["volumes"]}["approvals-webhook"]["secret"]
    assert volume["secretName"] == "tessera-approvals-webhook"
    assert volume["items"] == [{"key": "hmac.key", "path": "hmac.key"}]
    # Without approvals in the values: no section, no volume.
    minimal = rendered["minimal"]
    assert "approvals" not in tomllib.loads(minimal.one("ConfigMap")["data"]["tessera.toml"])
    assert "approvals-webhook" not in {v["name"] for v in minimal.pod["spec"]["volumes"]}


def test_default_broker_issuer_is_the_service_url(rendered):
    toml = tomllib.loads(rendered["minimal"].one("ConfigMap")["data"]["tessera.toml"])
    assert toml["broker"]["issuer"] == f"https://{RELEASE}.{NAMESPACE}.svc"


def test_default_policy_is_tessera_default_policy(chart):
    """values.yaml's default policy grants what policy/default.cedar grants (its rules, comments aside)."""

    def rules(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("//")]

    assert rules(chart.values["policy"]["cedar"]) == rules((ROOT / "policy" / "default.cedar").read_text())


# ---------------------------------------------------------------------------------------------------------------
# The Deployment.


def test_probes_use_native_grpc_readiness_distinct_from_liveness(rendered):
    c = rendered["minimal"].container
    assert c["readinessProbe"]["grpc"] == {"port": 50051, "service": "tessera.v1.TokenBroker"}
    assert c["livenessProbe"]["grpc"] == {"port": 50051}
    assert c["startupProbe"]["grpc"] == {"port": 50051}
    assert c["readinessProbe"]["periodSeconds"] < c["livenessProbe"]["periodSeconds"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 50051, "http": 8080}
    assert c["args"][-2:] == ["--grpc-addr", "0.0.0.0:50051"]
    # The HTTP listener (metrics) binds every interface, through the variable form of --http-addr.
    assert rendered["minimal"].env()["TESSERA_HTTP_ADDR"] == "0.0.0.0:8080"
    assert not [a for a in c["args"] if a.startswith("--http")]


def test_plaintext_is_the_default(rendered):
    """Without tls.enabled nothing TLS is rendered: no [tls] section, no TLS volume, HTTP scraped as http."""
    for name in GOOD:
        if name in WITH_TLS:
            continue
        r = rendered[name]
        if r.has("ConfigMap"):
            assert "tls" not in tomllib.loads(r.one("ConfigMap")["data"]["tessera.toml"])
        assert not {"tls", "client-ca"} & {v["name"] for v in r.pod["spec"]["volumes"]}
        assert "grpc" in r.container["readinessProbe"]
    service = rendered["minimal"].one("Service", RELEASE)
    assert {p["name"]: p["appProtocol"] for p in service["spec"]["ports"]} == {"grpc": "grpc", "http": "http"}
    (endpoint,) = rendered["service-monitor"].one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "http" and "tlsConfig" not in endpoint


@pytest.mark.parametrize("name", WITH_TLS)
def test_probes_with_tls_speak_tls_or_connect_only(name, rendered, keys):
    """The kubelet's gRPC probe speaks no TLS. With TLS the probes GET /healthz over HTTPS (the kubelet sends no
    client certificate, which an optional client CA allows); with client certificates required, where that
    handshake would fail, they only connect to the gRPC port."""
    r = rendered[name]
    c = r.container
    required = GOOD[name](keys)["tls"].get("clientAuth") == "required"
    expected = {"tcpSocket": {"port": "grpc"}} if required else {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTPS"}}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in c[probe], probe
        assert {k: v for k, v in c[probe].items() if k in ("httpGet", "tcpSocket", "grpc", "exec")} == expected, probe
    # The probe timings are the same values as in plaintext.
    plain = rendered["minimal"].container
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert {k: v for k, v in c[probe].items() if k not in expected} == {
            k: v for k, v in plain[probe].items() if k != "grpc"
        }, probe
    # The named ports the probes use exist.
    assert {"grpc", "http"} <= {p["name"] for p in c["ports"]}


@pytest.mark.parametrize("name", WITH_TLS)
def test_tls_secrets_are_mounted_as_read_only_directories(name, rendered, keys):
    """A subPath mount never receives a renewed Secret; tessera's reloading needs the directory mount."""
    r = rendered[name]
    values = GOOD[name](keys)["tls"]
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    volumes = {v["name"]: v for v in r.pod["spec"]["volumes"]}
    assert not [m for m in r.container["volumeMounts"] if "subPath" in m or "subPathExpr" in m]
    assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/tessera/tls", "readOnly": True}
    secret = volumes["tls"]["secret"]
    assert secret["secretName"] == values["secretName"] and secret["defaultMode"] == 0o440
    expected = ["tls.crt", "tls.key"] + (["ca.crt"] if values.get("clientCa", {}).get("fromServingSecret") else [])
    assert [(i["key"], i["path"]) for i in secret["items"]] == [(k, k) for k in expected]
    ca = values.get("clientCa", {})
    if ca.get("secretName") or ca.get("configMapName"):
        assert mounts["client-ca"] == {"name": "client-ca", "mountPath": "/etc/tessera/client-ca", "readOnly": True}
        source = volumes["client-ca"].get("secret") or volumes["client-ca"].get("configMap")
        assert source.get("secretName", source.get("name")) == (ca.get("secretName") or ca.get("configMapName"))
        assert ("secret" in volumes["client-ca"]) == bool(ca.get("secretName"))
        assert source["defaultMode"] == 0o440
        assert source["items"] == [{"key": ca["key"], "path": ca["key"]}]
    else:
        assert "client-ca" not in mounts and "client-ca" not in volumes


@pytest.mark.parametrize("name", WITH_TLS)
def test_rendered_tls_section_points_into_the_mounts(name, rendered, keys):
    r = rendered[name]
    values = GOOD[name](keys)["tls"]
    section = tomllib.loads(r.one("ConfigMap")["data"]["tessera.toml"])["tls"]
    mounts = {m["mountPath"] for m in r.container["volumeMounts"]}
    volumes = {v["name"]: v for v in r.pod["spec"]["volumes"]}

    def in_pod(relative: str) -> str:
        # Relative to tessera.toml's folder, /etc/tessera/config.
        resolved = Path("/etc/tessera/config", relative).resolve(strict=False).as_posix()
        folder, file = resolved.rsplit("/", 1)
        assert folder in mounts, resolved
        name = next(m["name"] for m in r.container["volumeMounts"] if m["mountPath"] == folder)
        source = volumes[name].get("secret") or volumes[name].get("configMap")
        assert file in [item["path"] for item in source["items"]], resolved
        return resolved

    assert in_pod(section["cert_file"]) == "/etc/tessera/tls/tls.crt"
    assert in_pod(section["key_file"]) == "/etc/tessera/tls/tls.key"
    assert section["reload_interval"] == values.get("reloadIntervalSeconds", 10)
    ca = values.get("clientCa", {})
    if ca:
        expected = "/etc/tessera/tls/ca.crt" if ca.get("fromServingSecret") else f"/etc/tessera/client-ca/{ca['key']}"
        assert in_pod(section["client_ca_file"]) == expected
        assert section["client_auth"] == values.get("clientAuth", "optional")
    else:
        assert "client_ca_file" not in section and "client_auth" not in section


def test_rotated_tls_secret_does_not_roll_the_pods(chart, keys, rendered):
    """tessera re-reads the certificate files itself: no checksum annotation follows the TLS Secret, and the
    pod template does not depend on the certificate's content (which the chart never sees)."""
    plain = rendered["minimal"].pod["metadata"]["annotations"]
    for name in WITH_TLS:
        annotations = rendered[name].pod["metadata"]["annotations"]
        assert set(annotations) <= set(plain) | {"checksum/redis-url"}, name
        assert not [k for k in annotations if "tls" in k or "cert" in k]
    # The reload interval is in tessera.toml, so changing it rolls the pods (tessera reads it at start).
    a = render(chart, {**minimal(keys), "tls": {"enabled": True, "secretName": "t"}}).pod["metadata"]["annotations"]
    b = render(chart, {**minimal(keys), "tls": {"enabled": True, "secretName": "t", "reloadIntervalSeconds": 60}}).pod["metadata"]["annotations"]
    assert a["checksum/config"] != b["checksum/config"]


def test_tls_config_check_loads_the_certificate_files(rendered, keys, pki, tessera_bin, tmp_path):
    """The config check of the TLS sets has teeth: a key that does not match the certificate, or a client CA
    file that holds no certificate, is refused, naming the file."""
    config_file = lay_out(tmp_path, rendered["tls-mtls-required"], keys, pki)
    ok = run_tessera(tessera_bin, "config", "check", str(config_file))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "client-ca" / "bundle.pem").write_text("not a certificate\n")
    result = run_tessera(tessera_bin, "config", "check", str(config_file))
    assert result.returncode != 0 and "bundle.pem" in result.stderr, result.stderr
    (tmp_path / "client-ca" / "bundle.pem").write_text(pki["client-ca.crt"])
    (tmp_path / "tls" / "tls.key").write_text(pki["other.key"])
    result = run_tessera(tessera_bin, "config", "check", str(config_file))
    assert result.returncode != 0 and "tls.key" in result.stderr, result.stderr


@contextlib.contextmanager
def serving(tessera_bin: str, config_file: Path):
    """`tessera serve` on the laid-out config, on free loopback ports; yields {port name: port}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA")}
    env["TESSERA_HTTP_ADDR"] = "127.0.0.1:0"
    process = subprocess.Popen(
        [tessera_bin, "serve", "--config", str(config_file), "--grpc-addr", "127.0.0.1:0"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    ports: dict[str, int] = {}
    seen = []
    try:
        deadline = time.monotonic() + 30
        while len(ports) < 2:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"tessera serve did not start: {''.join(seen)}")
            seen.append(line)
            try:
                fields = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "serving" in fields.get("message", "") and "addr" in fields:
                ports["http" if "HTTP" in fields["message"] else "grpc"] = int(fields["addr"].rsplit(":", 1)[1])
        yield ports
    finally:
        process.terminate()
        process.wait(timeout=20)


def https_get(port: int, path: str, context: ssl.SSLContext, server_name: str | None = None) -> str:
    """One HTTP/1.1 GET over TLS; returns the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {server_name or 'x'}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    return answer.split(b"\r\n", 1)[0].decode()


def kubelet_context() -> ssl.SSLContext:
    """What the kubelet's HTTPS probe does: no certificate verification, no client certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.mark.parametrize("name", WITH_TLS)
def test_probes_and_scrape_work_against_the_binary(name, rendered, keys, pki, tessera_bin, tmp_path):
    """The rendered probes, done as the kubelet does them, pass against `tessera serve` on the rendered config
    and PEM files; the ServiceMonitor's TLS settings (its CA, server name and, with clientAuth=required, a
    client certificate) verify the served certificate and get /metrics."""
    r = rendered[name]
    config_file = lay_out(tmp_path, r, keys, pki)
    required = GOOD[name](keys)["tls"].get("clientAuth") == "required"
    with serving(tessera_bin, config_file) as ports:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = r.container[probe]
            if "httpGet" in spec:
                get = spec["httpGet"]
                assert get["scheme"] == "HTTPS"
                assert https_get(ports[get["port"]], get["path"], kubelet_context()) == "HTTP/1.1 200 OK", probe
            else:
                socket.create_connection(("127.0.0.1", ports[spec["tcpSocket"]["port"]]), timeout=5).close()
        if required:
            # Why the probes only connect: without a client certificate the handshake fails.
            with pytest.raises(ssl.SSLError):
                https_get(ports["http"], "/healthz", kubelet_context())
        # The scrape as the ServiceMonitor configures it (or, without one, as it would).
        if r.has("ServiceMonitor"):
            (endpoint,) = r.one("ServiceMonitor")["spec"]["endpoints"]
        else:
            endpoint = {"port": "http", "path": "/metrics", "tlsConfig": {"serverName": f"{RELEASE}.{NAMESPACE}.svc"}}
        server_name = endpoint["tlsConfig"]["serverName"]
        if "ca" in endpoint["tlsConfig"]:
            assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": GOOD[name](keys)["tls"]["secretName"], "key": "ca.crt"}
        scraper = ssl.create_default_context(cafile=str(pki.folder / "ca.crt"))
        if required:
            # Prometheus' client certificate: one the client CA issued.
            scraper.load_cert_chain(str(pki.folder / "client.crt"), str(pki.folder / "client.key"))
        assert https_get(ports[endpoint["port"]], endpoint["path"], scraper, server_name) == "HTTP/1.1 200 OK"
        # A scraper that checked the certificate for another name would be refused.
        with pytest.raises(ssl.SSLCertVerificationError):
            https_get(ports["http"], "/metrics", scraper, "elsewhere.example")


def test_tls_identities_render_as_a_toml_list(rendered, keys):
    """Clients identified by a certificate need no secret_sha256; their identities stay a list."""
    toml = tomllib.loads(rendered["tls-mtls-optional"].one("ConfigMap")["data"]["tessera.toml"])
    assert toml["clients"] == tls_mtls_optional(keys)["config"]["clients"]
    assert toml["clients"][1]["tls_identities"] == ["gateway.ingress.svc", "spiffe://agents.example.org/ns/ingress/sa/gateway"]
    assert "secret_sha256" not in toml["clients"][0]


def test_graceful_shutdown_and_rolling_update(rendered):
    r = rendered["minimal"]
    pod = r.pod["spec"]
    sleep = r.container["lifecycle"]["preStop"]["sleep"]["seconds"]
    # The preStop sleep, then the drain of in-flight RPCs (bounded by the 5 s request timeout), fit in the grace period.
    assert pod["terminationGracePeriodSeconds"] >= sleep + 5 + 10
    strategy = r.deployment["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert r.deployment["spec"]["minReadySeconds"] > 0
    assert "lifecycle" not in rendered["bare"].container
    assert rendered["bare"].pod["spec"]["terminationGracePeriodSeconds"] == 20


def test_security_context_is_hardened(rendered):
    for name in ("minimal", "dev-mode", "trial-redis"):
        r = rendered[name]
        for deployment in r.all("Deployment"):
            spec = deployment["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert spec["automountServiceAccountToken"] is False
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["runAsNonRoot"] is True
                assert sc["readOnlyRootFilesystem"] is True
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"] == {"drop": ["ALL"]}
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
                assert "limits" in c["resources"] and "requests" in c["resources"]
    pod = rendered["minimal"].pod["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["enableServiceLinks"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["signing-keys"]["secret"]["defaultMode"] == 0o440
    assert "emptyDir" in volumes["tmp"]


def test_topology_spread_selects_the_broker_pods(rendered):
    r = rendered["ha"]
    constraints = r.pod["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in constraints] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    selector = r.deployment["spec"]["selector"]["matchLabels"]
    for c in constraints:
        assert c["labelSelector"] == {"matchLabels": selector}
        assert c["matchLabelKeys"] == ["pod-template-hash"]
    assert "topologySpreadConstraints" not in rendered["bare"].pod["spec"]


def test_config_changes_roll_the_pods(chart, keys):
    """Without config.hotReload, any change to the config or the policy replaces the pods."""
    before = render(chart, minimal(keys)).pod["metadata"]["annotations"]
    changed = render(chart, {**minimal(keys), "config": {"log": {"level": "debug"}}}).pod["metadata"]["annotations"]
    assert before["checksum/config"] != changed["checksum/config"]
    assert before["checksum/signing-keys"] == changed["checksum/signing-keys"]
    policy = render(chart, {**minimal(keys), "policy": {"cedar": "// nothing is granted\n"}}).pod["metadata"]["annotations"]
    assert policy["checksum/config"] != before["checksum/config"]


def test_hot_reload_rolls_the_pods_only_for_what_tessera_keeps_from_its_start(chart, keys, rendered):
    """With config.hotReload the ConfigMap is mounted as a directory (an update reaches the pod as a ..data
    symlink swap, which subPath mounts never see) and no checksum of it rolls the pods: a change to the policy,
    issuers, audiences, clients or the [broker] keys a reload takes leaves the pod template as it is (tessera
    reloads them), while a change to a section tessera keeps from its start still rolls the pods."""
    from value_sets import hot_reload

    r = rendered["hot-reload"]
    annotations = r.pod["metadata"]["annotations"]
    assert "checksum/config" not in annotations and "checksum/config-fixed" in annotations
    container = r.pod["spec"]["containers"][0]
    mount = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert mount == [{"name": "config", "mountPath": "/etc/tessera/config", "readOnly": True}], mount
    assert all("subPath" not in m for m in container["volumeMounts"])
    config = tomllib.loads(r.one("ConfigMap", f"{RELEASE}-config")["data"]["tessera.toml"])
    assert config["server"]["config_reload_interval"] == 2

    def variant(change):
        values = hot_reload(keys)
        change(values)
        out = render(chart, values)
        return out.pod, out.one("ConfigMap", f"{RELEASE}-config")["data"]

    base_pod, base_data = variant(lambda v: None)
    reloadable = {
        "audience": lambda v: v["config"]["audiences"].append({"id": "https://b.example", "scopes": ["b:read"], "max_ttl": 60}),
        "client": lambda v: v["config"]["clients"].append({"id": "c2", "secret_sha256": SECRET_SHA256, "rpcs": ["exchange"]}),
        "issuer": lambda v: v["config"].setdefault("issuers", []).append({"name": "k", "issuer": "https://k.example", "jwks_url": "https://k.example/jwks"}),
        "policy": lambda v: v["policy"].update({"cedar": "// nothing is granted\n"}),
        "task-introspect": lambda v: v["config"]["broker"].update({"task_introspect_clients": []}),
        "task-ttl": lambda v: v["config"]["broker"].update({"task_token_max_ttl": 600}),
    }
    for name, change in reloadable.items():
        pod, data = variant(change)
        assert data != base_data, name
        assert pod == base_pod, f"{name}: reloaded in place, the pods do not roll"
    fixed = {
        "log": lambda v: v["config"].update({"log": {"level": "debug"}}),
        "server": lambda v: v["config"]["server"].update({"max_request_bytes": 100000}),
        "leeway": lambda v: v["config"]["broker"].update({"leeway": 10}),
        "issuer": lambda v: v["config"]["broker"].update({"issuer": "https://other.example.com"}),
        "rate-limits": lambda v: v["config"].update({"rate_limits": {"client_per_minute": 60}}),
        "grpc-port": lambda v: v.update({"containerPorts": {"grpc": 50052, "http": 8080}}),
    }
    for name, change in fixed.items():
        pod, _ = variant(change)
        assert pod["metadata"]["annotations"]["checksum/config-fixed"] != annotations["checksum/config-fixed"], name


def test_key_rotation_publishes_every_key_and_signs_with_the_first(chart, keys):
    old = {"name": "old.pem", "pem": keys["eddsa"].pem}
    new = {"name": "new.pem", "pem": keys["es256"].pem}
    steps = [[old], [old, new], [new, old], [new]]
    annotations = []
    for step in steps:
        r = render(chart, {"signing": {"keys": step}})
        toml = tomllib.loads(r.one("ConfigMap")["data"]["tessera.toml"])
        assert toml["signing"]["keys"] == [f"../keys/{k['name']}" for k in step]
        secret = r.one("Secret", f"{RELEASE}-signing-keys")
        assert {f: base64.b64decode(d).decode() for f, d in secret["data"].items()} == {k["name"]: k["pem"] for k in step}
        annotations.append(r.pod["metadata"]["annotations"]["checksum/signing-keys"])
    # Every step rolls the pods.
    assert len(set(annotations)) == len(steps)


def test_existing_signing_secret_is_mounted_in_signing_order(rendered):
    r = rendered["ha-existing-secrets"]
    volume = next(v for v in r.pod["spec"]["volumes"] if v["name"] == "signing-keys")
    assert volume["secret"]["secretName"] == "tessera-signing"
    assert [i["key"] for i in volume["secret"]["items"]] == ["current.pem", "previous.pem"]
    assert not [s for s in r.all("Secret") if "signing" in s["metadata"]["name"]]
    assert "checksum/signing-keys" not in r.pod["metadata"]["annotations"]
    assert "rollout restart" in r.notes


def test_image_reference(rendered):
    assert rendered["minimal"].container["image"] == "tessera:0.1.0"
    assert rendered["ha"].container["image"] == "registry.example.com/platform/tessera@sha256:" + "ab" * 32


def test_chart_app_version_is_the_crate_version(chart):
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert chart.metadata["appVersion"] == cargo["package"]["version"]


def test_dockerfile_builds_the_image_the_chart_runs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", dockerfile, re.MULTILINE | re.IGNORECASE)
    assert len(stages) >= 2, "multi-stage build"
    runtime = dockerfile[dockerfile.rfind("\nFROM ") :]
    # The runtime stage takes the binary only, and runs as the user the chart's securityContext names.
    copies = re.findall(r"^COPY\s+(.*)$", runtime, re.MULTILINE)
    assert len(copies) == 1 and "--from=" in copies[0] and copies[0].rstrip().endswith("/usr/local/bin/tessera")
    assert re.search(r"^USER\s+65532:65532\s*$", runtime, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT\s+\["/usr/local/bin/tessera"\]\s*$', runtime, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "target" in ignored or "/target" in ignored


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------------------
# Store, telemetry, mTLS, dev mode.


def test_embedded_store_by_default(rendered):
    r = rendered["minimal"]
    assert "TESSERA__STORE__REDIS_URL" not in r.env()
    assert not r.has("HorizontalPodAutoscaler") and not r.has("PodDisruptionBudget")
    assert r.deployment["spec"]["replicas"] == 1
    assert "embedded" in r.notes


def test_external_redis_url_comes_from_a_chart_secret(rendered):
    r = rendered["ha"]
    ref = r.env()["TESSERA__STORE__REDIS_URL"]["secretKeyRef"]
    secret = r.one("Secret", ref["name"])
    assert base64.b64decode(secret["data"][ref["key"]]).decode() == "rediss://:s3cret@redis-master.redis.svc:6380/0"
    assert "checksum/redis-url" in r.pod["metadata"]["annotations"]
    # The URL (and its password) appears nowhere else.
    assert "s3cret" not in r.stream()


def test_external_redis_from_an_existing_secret(rendered):
    r = rendered["ha-existing-secrets"]
    assert r.env()["TESSERA__STORE__REDIS_URL"] == {"secretKeyRef": {"name": "tessera-redis", "key": "url"}}
    assert not r.all("Secret")
    assert r.has("ConfigMap")


def test_hpa_and_pdb_for_several_replicas(rendered):
    r = rendered["ha"]
    assert "replicas" not in r.deployment["spec"]
    hpa = r.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": RELEASE}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu", "memory"]
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"] == r.deployment["spec"]["selector"]["matchLabels"]
    two = rendered["ha-existing-secrets"]
    assert two.deployment["spec"]["replicas"] == 2 and two.has("PodDisruptionBudget")


def test_trial_redis_is_labelled_isolated_and_wired(rendered):
    r = rendered["trial-redis"]
    name = f"{RELEASE}-trial-redis"
    redis = r.one("Deployment", name)
    assert redis["metadata"]["labels"]["tessera.dev/trial-only"] == "true"
    assert "trial only" in redis["metadata"]["annotations"]["tessera.dev/warning"]
    assert redis["spec"]["replicas"] == 1
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--save") + 1] == ""
    service = r.one("Service", name)
    assert service["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
    # The broker's selector does not catch the Redis pod, and vice versa.
    assert r.one("Service", RELEASE)["spec"]["selector"]["app.kubernetes.io/component"] == "broker"
    ref = r.env()["TESSERA__STORE__REDIS_URL"]["secretKeyRef"]
    url = base64.b64decode(r.one("Secret", ref["name"])["data"][ref["key"]]).decode()
    assert url == f"redis://{name}.{NAMESPACE}.svc:6379"
    # Only the broker pods may reach it.
    policy = r.one("NetworkPolicy", name)
    assert policy["spec"]["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": r.deployment["spec"]["selector"]["matchLabels"]}}],
            "ports": [{"port": "redis", "protocol": "TCP"}],
        }
    ]
    assert policy["spec"]["egress"] == []
    broker_egress = r.one("NetworkPolicy", RELEASE)["spec"]["egress"]
    assert {"podSelector": {"matchLabels": redis["spec"]["selector"]["matchLabels"]}} in [
        peer for rule in broker_egress for peer in rule.get("to", [])
    ]
    assert "FOR TRIALS ONLY" in r.notes


def test_otel_environment(rendered):
    env = rendered["full"].env()
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert env["OTEL_SERVICE_NAME"] == "tessera-prod"
    attributes = dict(kv.split("=", 1) for kv in env["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    assert attributes["k8s.pod.name"] == "$(POD_NAME)" and attributes["deployment.environment"] == "prod"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # Variables referenced as $(VAR) must be defined before the one that references them.
    names = [e["name"] for e in rendered["full"].container["env"]]
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert env["RUST_BACKTRACE"] == "1"
    minimal_env = rendered["minimal"].env()
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in minimal_env and minimal_env["OTEL_SERVICE_NAME"] == "tessera"


def test_dev_mode_runs_without_config_on_a_writable_tmp(rendered):
    r = rendered["dev-mode"]
    args = r.container["args"]
    assert args == ["serve", "--dev-dir", "/tmp/tessera-dev", "--grpc-addr", "0.0.0.0:50051"]
    assert "--config" not in args
    assert r.env()["TESSERA_DEV_DIR"] == "/tmp/tessera-dev"
    assert {m["mountPath"] for m in r.container["volumeMounts"]} == {"/tmp"}
    assert not r.has("ConfigMap") and not r.has("Secret")
    assert "DEV MODE" in r.notes and "NOT for production" in r.notes
    assert r.container["securityContext"]["readOnlyRootFilesystem"] is True


# ---------------------------------------------------------------------------------------------------------------
# Service, NetworkPolicy, ServiceMonitor, ServiceAccount.


def test_service_ports_and_app_protocol(rendered):
    service = rendered["minimal"].one("Service", RELEASE)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == 50051 and ports["grpc"]["targetPort"] == "grpc"
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ports["http"]["port"] == 8080 and ports["http"]["appProtocol"] == "http"
    assert service["spec"]["selector"] == rendered["minimal"].deployment["spec"]["selector"]["matchLabels"]


def test_network_policy_admits_clients_and_the_scraper_only(rendered):
    r = rendered["minimal"]
    policy = r.one("NetworkPolicy", RELEASE)
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == r.deployment["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    clients, scraper = spec["ingress"]
    assert clients["from"] == [{"podSelector": {"matchLabels": {"tessera-client": "true"}}, "namespaceSelector": {}}]
    assert {p["port"] for p in clients["ports"]} == {"grpc", "http"}
    assert scraper["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert scraper["from"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    egress_ports = [sorted(p["port"] for p in rule["ports"]) for rule in spec["egress"]]
    # DNS and JWKS only: no Redis (embedded store), no OTLP (no endpoint).
    assert egress_ports == [[53, 53], [443]]


def test_network_policy_egress_follows_redis_and_otel(rendered):
    ha_egress = rendered["ha"].one("NetworkPolicy", RELEASE)["spec"]["egress"]
    assert {"ports": [{"port": 6379, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]} in ha_egress
    full_spec = rendered["full"].one("NetworkPolicy", RELEASE)["spec"]
    otlp = [rule for rule in full_spec["egress"] if {p["port"] for p in rule["ports"]} == {4317}]
    assert otlp and otlp[0]["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "observability"}
    assert full_spec["ingress"][0]["from"][0]["namespaceSelector"] == {"matchLabels": {"tessera.dev/clients": "allowed"}}
    assert full_spec["ingress"][-1]["from"] == [{"podSelector": {"matchLabels": {"role": "gateway"}}}]
    assert not rendered["bare"].has("NetworkPolicy")


def test_service_monitor_scrapes_metrics_on_the_http_port(rendered):
    r = rendered["service-monitor"]
    monitor = r.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http", "/metrics", "15s")
    assert endpoint["relabelings"][0]["targetLabel"] == "node"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= r.one("Service", RELEASE)["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert not rendered["minimal"].has("ServiceMonitor")


def test_service_monitor_scrapes_https_with_tls(rendered):
    """With TLS /metrics is HTTPS: the scrape verifies the broker's certificate (never insecureSkipVerify by
    default) against the serving Secret's ca.crt, for the Service's name; values add or replace fields."""
    (endpoint,) = rendered["tls"].one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["port"] == "http"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "tessera-tls", "key": "ca.crt"}},
        "insecureSkipVerify": False,
        "serverName": f"{RELEASE}.{NAMESPACE}.svc",
    }
    (endpoint,) = rendered["tls-mtls-optional"].one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["tlsConfig"]["serverName"] == f"{RELEASE}.{NAMESPACE}.svc.cluster.local"
    (endpoint,) = rendered["tls-mtls-required"].one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "tessera-tls", "key": "ca.crt"}},
        "cert": {"secret": {"name": "prometheus-client-tls", "key": "tls.crt"}},
        "keySecret": {"name": "prometheus-client-tls", "key": "tls.key"},
        "insecureSkipVerify": False,
        "serverName": f"{RELEASE}.{NAMESPACE}.svc",
    }


def test_service_monitor_ca_from_values_replaces_the_default(chart, keys):
    values = {
        **minimal(keys),
        "tls": {"enabled": True, "secretName": "t"},
        "serviceMonitor": {"enabled": True, "tlsConfig": {"ca": {"configMap": {"name": "root-ca", "key": "ca.pem"}}}},
    }
    (endpoint,) = render(chart, values).one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["tlsConfig"]["ca"] == {"configMap": {"name": "root-ca", "key": "ca.pem"}}
    (monitor,) = [m for m in render(chart, values).manifests() if m["kind"] == "ServiceMonitor"]
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    values["serviceMonitor"]["tlsConfig"] = {"caFile": "/etc/prometheus/secrets/ca/ca.crt"}
    (endpoint,) = render(chart, values).one("ServiceMonitor")["spec"]["endpoints"]
    assert "ca" not in endpoint["tlsConfig"] and endpoint["tlsConfig"]["caFile"] == "/etc/prometheus/secrets/ca/ca.crt"


def test_service_app_protocol_with_tls(rendered, chart, keys):
    """gRPC over TLS is still grpc; the HTTP port says https."""
    for name in WITH_TLS:
        ports = {p["name"]: p["appProtocol"] for p in rendered[name].one("Service", RELEASE)["spec"]["ports"]}
        assert ports == {"grpc": "grpc", "http": "https"}, name
    mesh = render(chart, {**minimal(keys), "tls": {"enabled": True, "secretName": "t"}, "service": {"grpcAppProtocol": "tls", "httpAppProtocol": "tls"}})
    assert {p["appProtocol"] for p in mesh.one("Service", RELEASE)["spec"]["ports"]} == {"tls"}


def test_notes_with_tls_use_tls(rendered):
    for name in WITH_TLS:
        notes = rendered[name].notes
        assert "-plaintext" not in notes, name
        assert "-cacert tessera-ca.crt" in notes and f"-authority {RELEASE}.{NAMESPACE}.svc" in notes
        assert "jsonpath='{.data.ca\\.crt}'" in notes
        assert "TLS" in notes
    assert "-cert client.crt -key client.key" in rendered["tls-mtls-required"].notes
    assert "-cert client.crt" not in rendered["tls"].notes
    assert "-plaintext" in rendered["minimal"].notes


def test_service_account(rendered):
    r = rendered["full"]
    account = r.one("ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert account["metadata"]["annotations"] == {"example.com/role": "tessera"}
    assert r.pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    bare = rendered["bare"]
    assert not bare.has("ServiceAccount") and bare.pod["spec"]["serviceAccountName"] == "default"


def test_notes_tell_how_to_try_it(rendered):
    notes = rendered["minimal"].notes
    assert f"kubectl -n {NAMESPACE} port-forward service/{RELEASE} 50051:50051" in notes
    assert "grpc.health.v1.Health/Check" in notes
    dev = rendered["dev-mode"].notes
    assert "tessera dev assertion" in dev and "tessera exchange" in dev


# ---------------------------------------------------------------------------------------------------------------
# values.yaml documents every value.


def test_every_value_is_documented():
    text = (CHART_DIR / "values.yaml").read_text()
    lines = text.splitlines()
    root = yaml.compose(text)
    undocumented = []

    def commented(line: int) -> bool:
        return line > 0 and lines[line - 1].strip().startswith("#")

    def walk(node: yaml.Node, path: str, documented: bool) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            here = f"{path}.{key.value}" if path else key.value
            doc = documented or commented(key.start_mark.line)
            leaf = not isinstance(value, yaml.MappingNode) or not value.value
            if leaf and not doc:
                undocumented.append(here)
            walk(value, here, doc)

    walk(root, "", False)
    assert not undocumented, f"values without a comment above them (or above a parent): {undocumented}"


def test_schema_covers_every_value(chart):
    """Every key of values.yaml is declared in values.schema.json (whose objects refuse unknown keys)."""
    schema = chart.schema

    def walk(values: Any, node: dict[str, Any], path: str) -> None:
        if not isinstance(values, dict):
            return
        if node.get("additionalProperties") is not False:
            return  # a free-form Kubernetes object (resources, affinity, ...) or a map of user-chosen keys
        properties = node.get("properties", {})
        for key, value in values.items():
            assert key in properties, f"{path}.{key} is not in values.schema.json"
            walk(value, properties[key], f"{path}.{key}")

    walk(chart.values, schema, "")
    assert schema["additionalProperties"] is False
