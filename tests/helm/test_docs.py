"""docs/kubernetes.md's `helm install`, `helm upgrade` and `helm template` commands render: each is parsed like
Helm parses it (-f files, then --set, --set-string, --set-file), with the files the walkthrough creates (its
values and policy files, keys from `tessera keygen`, a JWKS like the cluster's), and the walkthrough's config
check is run for real."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

import helm_python as helm
from conftest import ROOT, Rendered, run_tessera
from value_sets import FIXTURES, SECRET_SHA256

DOC = ROOT / "docs" / "kubernetes.md"
# Shell variables the walkthrough sets before using them.
VARIABLES = {"CLIENT_SECRET_SHA256": SECRET_SHA256}


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", DOC.read_text(), re.MULTILINE | re.DOTALL)


def doc_files() -> dict[str, str]:
    """Files the walkthrough shows whole: a block whose first line is a comment naming the file."""
    files = {}
    for _, body in blocks():
        first = body.splitlines()[0]
        named = re.fullmatch(r"(?:#|//) ([\w.-]+\.(?:yaml|cedar))", first.strip())
        if named:
            files[named.group(1)] = body
    return files


def helm_commands() -> list[str]:
    commands = []
    for lang, body in blocks():
        if lang != "sh":
            continue
        for command in re.sub(r"\\\n\s*", " ", body).splitlines():
            command = command.strip()
            if re.match(r"helm (install|upgrade|template) ", command):
                commands.append(command)
    return commands


def merge(base: Any, new: Any) -> Any:
    """Helm's composition: maps merge key by key; a --set list index updates that element in place."""
    if isinstance(base, dict) and isinstance(new, dict):
        out = dict(base)
        for k, v in new.items():
            out[k] = merge(base.get(k), v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(new, list):
        out = list(base) + [None] * max(0, len(new) - len(base))
        for i, v in enumerate(new):
            if v is not None:
                out[i] = merge(out[i], v) if out[i] is not None else v
        return out
    return new


def parse(command: str, workdir: Path) -> tuple[str, str, dict[str, Any], list[str]]:
    for name, value in VARIABLES.items():
        command = command.replace(f"${name}", value).replace(f"${{{name}}}", value)
    assert "$" not in command, f"unknown shell variable in: {command}"
    words = shlex.split(command)
    if "|" in words:
        words = words[: words.index("|")]
    assert words[0] == "helm"
    action, rest = words[1], words[2:]
    positional, files, sets, show_only = [], [], [], []
    namespace = "default"
    i = 0
    while i < len(rest):
        word = rest[i]
        if word in ("-n", "--namespace", "-f", "--values", "--set", "--set-string", "--set-file", "--show-only"):
            value = rest[i + 1]
            i += 2
            if word in ("-n", "--namespace"):
                namespace = value
            elif word in ("-f", "--values"):
                files.append(value)
            elif word == "--show-only":
                show_only.append(value)
            else:
                sets.append((word, value))
        elif word in ("--create-namespace", "--wait", "--atomic"):
            i += 1
        elif word.startswith("-"):
            pytest.fail(f"the test does not know the flag {word} (in: {command})")
        else:
            positional.append(word)
            i += 1
    release, chart = positional
    assert chart == "./helm/tessera", command
    values: dict[str, Any] = {}
    for file in files:
        values = merge(values, yaml.safe_load((workdir / file).read_text()))
    for kind in ("--set", "--set-string", "--set-file"):
        for flag, expression in sets:
            if flag != kind:
                continue
            if kind == "--set":
                parsed = helm.parse_set_string(expression)
            elif kind == "--set-string":
                parsed = helm.parse_set_string_values(expression)
            else:
                key, path = expression.rsplit("=", 1)
                assert (workdir / path).is_file(), f"{path} is not a file the walkthrough makes"
                parsed = helm.parse_set_file(f"{key}={workdir / path}")
            values = merge(values, parsed)
    return release, namespace, values, show_only


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tessera_bin) -> Path:
    """The folder the walkthrough runs in, with every file it makes."""
    folder = tmp_path_factory.mktemp("walkthrough")
    for name, body in doc_files().items():
        (folder / name).write_text(body)
    (folder / "kubernetes-jwks.json").write_text((FIXTURES / "kubernetes.jwks.json").read_text())
    pems = {m for command in helm_commands() for m in re.findall(r"=([\w.-]+\.pem)'", command)}
    for pem in sorted(pems):
        result = run_tessera(tessera_bin, "keygen", "--out", str(folder / pem))
        assert result.returncode == 0, result.stderr
    return folder


def test_the_walkthrough_has_its_commands_and_files():
    commands = helm_commands()
    assert len(commands) >= 6, commands
    assert {"tessera-values.yaml", "tessera-policy.cedar", "orchestrator.yaml"} <= set(doc_files())


@pytest.mark.parametrize("index", range(len(helm_commands())))
def test_documented_helm_command_renders(index, chart, workdir, tessera_bin, tmp_path):
    command = helm_commands()[index]
    release, namespace, values, show_only = parse(command, workdir)
    try:
        rendered = Rendered(chart.render(values, name=release, namespace=namespace, is_install=True))
    except helm.HelmError as e:
        pytest.fail(f"{command}\nfails to render: {e}")
    assert rendered.one("Deployment", release if "tessera" in release else f"{release}-tessera")
    if show_only == ["templates/configmap.yaml"]:
        # The walkthrough's check: the ConfigMap's files and the key, laid out as in the pod.
        (tmp_path / "config").mkdir()
        (tmp_path / "keys").mkdir()
        for name, content in rendered.one("ConfigMap")["data"].items():
            (tmp_path / "config" / name).write_text(content)
        (tmp_path / "keys" / "signing-key-0.pem").write_text((workdir / "signing-key.pem").read_text())
        result = run_tessera(tessera_bin, "config", "check", str(tmp_path / "config" / "tessera.toml"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ok (1 issuers, 1 audiences, 1 clients, 1 signing keys)" in result.stdout


def test_the_walkthrough_policy_passes_policy_check(workdir, tessera_bin):
    result = run_tessera(tessera_bin, "policy", "check", str(workdir / "tessera-policy.cedar"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_orchestrator_pod_matches_the_chart(workdir, chart):
    """The example client pod carries the label the NetworkPolicy admits and asks for the broker's audience."""
    pod = yaml.safe_load((workdir / "orchestrator.yaml").read_text())
    values = yaml.safe_load((workdir / "tessera-values.yaml").read_text())
    labels = chart.values["networkPolicy"]["clients"]["podLabels"]
    assert labels.items() <= pod["metadata"]["labels"].items()
    (source,) = pod["spec"]["volumes"][0]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == values["config"]["broker"]["issuer"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["TESSERA_CLIENT_ID"] == values["config"]["clients"][0]["id"]
    assert env["TESSERA_ADDR"] == "http://tessera.tessera.svc:50051"
