"""The value sets the chart is rendered with: the ones that must render (and validate), and the ones that must be
refused, each with the message the installer sees."""

from __future__ import annotations

from typing import Any, Callable

from conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures"

# A client secret is stored as its SHA-256 only.
SECRET_SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

POLICY = """\
// Orchestrators in the `agents` namespace may take task tokens and CRM read tokens.
@id("agents-read")
permit (principal, action == Tessera::Action::"exchange", resource)
when { principal.issuer == "kubernetes" && principal.hasTag("namespace") &&
       principal.getTag("namespace") == "agents" && context.scope like "*:read" };

@id("narrow-own-tokens")
permit (principal, action == Tessera::Action::"exchange", resource)
when { context.subject_is_tessera_token };

@id("no-delegated-export")
forbid (principal, action, resource) when { context.scope like "*:export" && context.depth > 0 };
"""


def one_key(keys) -> dict[str, Any]:
    return {"keys": [{"pem": keys["eddsa"].pem}]}


def minimal(keys) -> dict[str, Any]:
    """The chart's defaults plus the one thing they cannot supply: a signing key."""
    return {"signing": one_key(keys)}


def ha(keys) -> dict[str, Any]:
    """Several replicas, autoscaled, with an external Redis and two signing keys (mid-rotation)."""
    return {
        "replicaCount": 3,
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12, "targetMemoryUtilizationPercentage": 80},
        "redis": {"url": "rediss://:s3cret@redis-master.redis.svc:6380/0"},
        "networkPolicy": {"egress": {"redis": {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}}},
        "config": {"broker": {"issuer": "https://tessera.example.com", "task_token_max_ttl": 1800}},
        "signing": {
            "keys": [
                {"name": "2026-11.pem", "pem": keys["eddsa"].pem},
                {"name": "2026-05.pem", "pem": keys["es256"].pem},
            ]
        },
        "image": {"repository": "registry.example.com/platform/tessera", "digest": "sha256:" + "ab" * 32},
    }


def ha_existing_secrets(keys) -> dict[str, Any]:
    """Everything secret comes from Secrets made outside the chart."""
    return {
        "replicaCount": 2,
        "redis": {"existingSecret": "tessera-redis", "existingSecretKey": "url"},
        "signing": {"existingSecret": "tessera-signing", "existingSecretKeys": ["current.pem", "previous.pem"]},
        "config": {"broker": {"issuer": "https://tessera.example.com"}},
    }


def service_monitor(keys) -> dict[str, Any]:
    return {
        "signing": one_key(keys),
        "serviceMonitor": {
            "enabled": True,
            "labels": {"release": "kube-prometheus-stack"},
            "interval": "15s",
            "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}],
        },
    }


def trial_redis(keys) -> dict[str, Any]:
    """A laptop trial of scale-out: two replicas sharing the in-chart Redis."""
    return {"signing": one_key(keys), "replicaCount": 2, "trialRedis": {"enabled": True}}


def dev_mode(keys) -> dict[str, Any]:
    return {"devMode": {"enabled": True, "acknowledgeNotForProduction": True}}


def full(keys) -> dict[str, Any]:
    """A production-shaped config: issuers of every JWKS kind, a catalog, clients, a policy, telemetry."""
    return {
        "signing": {"keys": [{"name": "current.pem", "pem": keys["es256"].pem}]},
        "config": {
            "server": {"max_request_bytes": 131072, "request_timeout_ms": 4000, "max_concurrent_requests": 512},
            "broker": {
                "issuer": "https://tessera.example.com",
                "leeway": 5,
                "max_delegation_depth": 3,
                "max_chain_length": 6,
                "task_token_max_ttl": 1800,
            },
            "rate_limits": {"client_per_minute": 6000, "principal_per_minute": 600, "principal_burst": 100},
            "log": {"level": "warn,tessera::audit=info"},
            "issuers": [
                {
                    "name": "kubernetes",
                    "issuer": "https://kubernetes.default.svc.cluster.local",
                    "jwks_file": "kubernetes-jwks.json",
                    "algorithms": ["RS256", "ES256"],
                    "leeway": 30,
                    "attributes": {
                        "namespace": "/kubernetes.io/namespace",
                        "service_account": "/kubernetes.io/serviceaccount/name",
                    },
                },
                {
                    "name": "spiffe",
                    "spiffe_trust_domain": "agents.example.org",
                    "jwks_inline": (FIXTURES / "spiffe.jwks.json").read_text(),
                    "algorithms": ["ES256"],
                },
                {
                    "name": "github",
                    "issuer": "https://token.actions.githubusercontent.com",
                    "jwks_url": "https://token.actions.githubusercontent.com/.well-known/jwks",
                    "algorithms": ["RS256"],
                    "max_token_bytes": 8192,
                    "refresh_interval": 300,
                    "min_refresh_interval": 30,
                    "attributes": {"repository": "/repository", "ref": "/ref"},
                },
            ],
            "audiences": [
                {
                    "id": "https://crm.example.com",
                    "scopes": ["crm:read", "crm:write", "crm:export"],
                    "max_ttl": 300,
                    "authorization_details": [
                        {
                            "type": "crm_case",
                            "schema": {
                                "type": "object",
                                "required": ["actions", "identifier"],
                                "additionalProperties": False,
                                "properties": {
                                    "actions": {"type": "array", "minItems": 1, "items": {"enum": ["read", "write"]}},
                                    "identifier": {"type": "string", "maxLength": 64},
                                },
                            },
                        },
                        {
                            "type": "payment",
                            "schema": {"type": "object", "properties": {"amount": {"type": "number", "minimum": 0}}},
                            "narrowing": {"amount": "at_most"},
                        },
                    ],
                },
                {
                    "id": "https://tickets.example.com",
                    "scopes": ["tickets:read"],
                    "max_ttl": 600,
                    "labels": {"namespaces": ["agents", "support"], "tier": "internal"},
                    "grant": "strict",
                },
            ],
            "routes": [
                {
                    "path_prefix": "/cases/{case}",
                    "audience": "https://crm.example.com",
                    "scopes": ["crm:read"],
                    "authorization_details": {"type": "crm_case", "fields": {"identifier": "{case}"}},
                },
            ],
            "clients": [
                {"id": "orchestrator", "secret_sha256": SECRET_SHA256, "rpcs": ["exchange", "introspect"]},
                {"id": "gateway", "secret_sha256": SECRET_SHA256.upper(), "rpcs": ["introspect"]},
                {"id": "secops", "secret_sha256": SECRET_SHA256, "rpcs": ["revoke"]},
            ],
            "files": {"kubernetes-jwks.json": (FIXTURES / "kubernetes.jwks.json").read_text()},
        },
        "policy": {"cedar": POLICY},
        "otel": {
            "endpoint": "http://otel-collector.observability:4317",
            "serviceName": "tessera-prod",
            "resourceAttributes": {"deployment.environment": "prod"},
        },
        "networkPolicy": {
            "clients": {"namespaceSelector": {"matchLabels": {"tessera.dev/clients": "allowed"}}},
            "egress": {
                "jwks": {"to": [{"ipBlock": {"cidr": "140.82.112.0/20"}}]},
                "otlp": {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]},
            },
            "extraIngress": [{"from": [{"podSelector": {"matchLabels": {"role": "gateway"}}}], "ports": [{"port": 8080}]}],
        },
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
        "commonLabels": {"team": "identity"},
        "podAnnotations": {"example.com/owner": "identity"},
        "podLabels": {"tessera-tier": "core"},
        "serviceAccount": {"annotations": {"example.com/role": "tessera"}},
        "service": {"annotations": {"example.com/lb": "internal"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "identity", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "imagePullSecrets": [{"name": "regcred"}],
    }


def bare(keys) -> dict[str, Any]:
    """The optional pieces turned off: no NetworkPolicy, no chart ServiceAccount, no spreading, no preStop sleep."""
    return {
        "signing": one_key(keys),
        "networkPolicy": {"enabled": False},
        "serviceAccount": {"create": False},
        "topologySpreadConstraints": [],
        "shutdown": {"preStopSleepSeconds": 0, "terminationGracePeriodSeconds": 20},
        "podDisruptionBudget": {"enabled": False},
    }


def tls(keys) -> dict[str, Any]:
    """TLS on both ports from a cert-manager Secret; no client certificates. Scraped over HTTPS."""
    return {
        "signing": one_key(keys),
        "tls": {"enabled": True, "secretName": "tessera-tls"},
        "serviceMonitor": {"enabled": True},
        "config": {"clients": [{"id": "orchestrator", "secret_sha256": SECRET_SHA256, "rpcs": ["exchange"]}]},
    }


def tls_mtls_optional(keys) -> dict[str, Any]:
    """mTLS with the serving Secret's own ca.crt: workloads with a certificate from the same issuer are
    clients by their SPIFFE ID or DNS name; others still authenticate with a secret."""
    return {
        "signing": one_key(keys),
        "tls": {"enabled": True, "secretName": "tessera-tls", "clientCa": {"fromServingSecret": True}},
        "serviceMonitor": {"enabled": True, "tlsConfig": {"serverName": "tessera.agents.svc.cluster.local"}},
        "config": {
            "clients": [
                {"id": "orchestrator", "rpcs": ["exchange"], "tls_identities": ["spiffe://agents.example.org/ns/agents/sa/orchestrator"]},
                {"id": "gateway", "rpcs": ["introspect"], "tls_identities": ["gateway.ingress.svc", "spiffe://agents.example.org/ns/ingress/sa/gateway"]},
                {"id": "secops", "secret_sha256": SECRET_SHA256, "rpcs": ["revoke", "suspend"]},
            ]
        },
    }


def tls_mtls_required(keys) -> dict[str, Any]:
    """Every connection must present a certificate from a separate client CA (a trust-manager ConfigMap);
    Prometheus scrapes with its own client certificate."""
    return {
        "signing": one_key(keys),
        "tls": {
            "enabled": True,
            "secretName": "tessera-tls",
            "clientCa": {"configMapName": "agents-trust-bundle", "key": "bundle.pem"},
            "clientAuth": "required",
            "reloadIntervalSeconds": 30,
        },
        "serviceMonitor": {
            "enabled": True,
            "tlsConfig": {
                "cert": {"secret": {"name": "prometheus-client-tls", "key": "tls.crt"}},
                "keySecret": {"name": "prometheus-client-tls", "key": "tls.key"},
            },
        },
        "config": {
            "clients": [
                {"id": "orchestrator", "rpcs": ["exchange"], "tls_identities": ["spiffe://agents.example.org/ns/agents/sa/orchestrator"]},
            ]
        },
    }


def tls_client_ca_secret(keys) -> dict[str, Any]:
    """The client CA bundle from an Opaque Secret of its own."""
    return {
        "signing": one_key(keys),
        "tls": {"enabled": True, "secretName": "tessera-tls", "clientCa": {"secretName": "spire-bundle", "key": "bundle.crt"}},
    }


def hot_reload(keys) -> dict[str, Any]:
    """Policy, issuer, audience and client changes reload in the running pods instead of rolling them."""
    return {
        "signing": one_key(keys),
        "config": {
            "hotReload": True,
            "server": {"config_reload_interval": 2},
            "broker": {"task_introspect_clients": ["gateway"]},
            "audiences": [{"id": "https://crm.example.com", "scopes": ["crm:read"], "max_ttl": 300}],
            "clients": [{"id": "gateway", "secret_sha256": SECRET_SHA256, "rpcs": ["introspect"]}],
        },
        "policy": {"cedar": POLICY},
    }


def approvals(keys) -> dict[str, Any]:
    """Step-up approvals with their lifetimes and the signed webhook, its key from a Secret made outside the chart."""
    return {
        "signing": one_key(keys),
        "config": {
            "approvals": {
                "pending_ttl": 600,
                "approved_ttl": 120,
                "webhook_url": "https://approvals.example.com/hooks/tessera",
            },
        },
        "approvals": {"webhookSecret": {"name": "tessera-approvals-webhook", "key": "hmac.key"}},
    }


# Value sets that must render, validate against the Kubernetes schemas and pass yamllint.
GOOD: dict[str, Callable[[Any], dict[str, Any]]] = {
    "minimal": minimal,
    "ha": ha,
    "ha-existing-secrets": ha_existing_secrets,
    "service-monitor": service_monitor,
    "trial-redis": trial_redis,
    "dev-mode": dev_mode,
    "full": full,
    "bare": bare,
    "tls": tls,
    "tls-mtls-optional": tls_mtls_optional,
    "tls-mtls-required": tls_mtls_required,
    "tls-client-ca-secret": tls_client_ca_secret,
    "hot-reload": hot_reload,
    "approvals": approvals,
}

# The TLS value sets.
WITH_TLS = [name for name in GOOD if name.startswith("tls")]

# Value sets that render a ConfigMap whose files `tessera config check` must accept.
WITH_CONFIG = [name for name in GOOD if name != "dev-mode"]

# Value sets the templates refuse (`fail`), with a part of the message the installer sees.
REFUSED: dict[str, tuple[Callable[[Any], dict[str, Any]], str]] = {
    "defaults-without-signing-key": (lambda keys: {}, "tessera: no signing key"),
    "approvals-webhook-without-its-secret": (
        lambda keys: {"signing": one_key(keys), "config": {"approvals": {"webhook_url": "https://a.example/hook"}}},
        "config.approvals.webhook_url needs approvals.webhookSecret.name",
    ),
    "replicas-without-redis": (
        lambda keys: {"signing": one_key(keys), "replicaCount": 2},
        "replicaCount > 1 or autoscaling.enabled=true needs a shared Redis",
    ),
    "autoscaling-without-redis": (
        lambda keys: {"signing": one_key(keys), "autoscaling": {"enabled": True}},
        "embedded, per-process store",
    ),
    "dev-mode-without-acknowledgement": (
        lambda keys: {"devMode": {"enabled": True}},
        "set devMode.acknowledgeNotForProduction=true",
    ),
    "dev-mode-with-replicas": (
        lambda keys: {"devMode": {"enabled": True, "acknowledgeNotForProduction": True}, "replicaCount": 2, "trialRedis": {"enabled": True}},
        "devMode runs a single pod",
    ),
    "redis-url-and-existing-secret": (
        lambda keys: {"signing": one_key(keys), "redis": {"url": "redis://r:6379", "existingSecret": "r"}},
        "set only one of redis.url and redis.existingSecret",
    ),
    "trial-and-external-redis": (
        lambda keys: {"signing": one_key(keys), "redis": {"url": "redis://r:6379"}, "trialRedis": {"enabled": True}},
        "cannot be combined with an external Redis",
    ),
    "keys-and-existing-secret": (
        lambda keys: {"signing": {**one_key(keys), "existingSecret": "s", "existingSecretKeys": ["a.pem"]}},
        "set only one of signing.keys",
    ),
    "existing-secret-without-key-names": (
        lambda keys: {"signing": {"existingSecret": "s"}},
        "signing.existingSecret needs signing.existingSecretKeys",
    ),
    "duplicate-key-names": (
        lambda keys: {"signing": {"keys": [{"name": "k.pem", "pem": keys["eddsa"].pem}, {"name": "k.pem", "pem": keys["es256"].pem}]}},
        "signing key file names must be unique",
    ),
    "config-file-shadowing-tessera-toml": (
        lambda keys: {"signing": one_key(keys), "config": {"files": {"tessera.toml": "x"}}},
        "config.files cannot hold tessera.toml",
    ),
    # TLS values that are incomplete, or that tessera would silently ignore.
    "tls-without-secret-name": (
        lambda keys: {"signing": one_key(keys), "tls": {"enabled": True}},
        "tls.enabled=true needs tls.secretName: a kubernetes.io/tls Secret",
    ),
    "tls-enabled-in-dev-mode": (
        lambda keys: {**dev_mode(keys), "tls": {"enabled": True, "secretName": "tessera-tls"}},
        "tls.enabled=true cannot be combined with devMode: dev mode reads no config file",
    ),
    "tls-required-without-client-ca": (
        lambda keys: {"signing": one_key(keys), "tls": {"enabled": True, "secretName": "t", "clientAuth": "required"}},
        "tls.clientAuth=required needs a client CA",
    ),
    "tls-two-client-ca-sources": (
        lambda keys: {"signing": one_key(keys), "tls": {"enabled": True, "secretName": "t", "clientCa": {"fromServingSecret": True, "configMapName": "b"}}},
        "set only one client CA source",
    ),
    "tls-with-h2c-app-protocol": (
        lambda keys: {"signing": one_key(keys), "tls": {"enabled": True, "secretName": "t"}, "service": {"grpcAppProtocol": "kubernetes.io/h2c"}},
        "kubernetes.io/h2c means HTTP/2 without TLS",
    ),
    "tls-required-scraped-without-client-certificate": (
        lambda keys: {
            "signing": one_key(keys),
            "tls": {"enabled": True, "secretName": "t", "clientAuth": "required", "clientCa": {"fromServingSecret": True}},
            "serviceMonitor": {"enabled": True, "tlsConfig": {"cert": {"secret": {"name": "p", "key": "tls.crt"}}}},
        },
        "give Prometheus one the client CA accepts in serviceMonitor.tlsConfig",
    ),
    "client-ca-without-tls": (
        lambda keys: {"signing": one_key(keys), "tls": {"clientCa": {"fromServingSecret": True}}},
        "tls.clientCa and tls.clientAuth take effect only with tls.enabled=true",
    ),
    "client-auth-required-without-tls": (
        lambda keys: {"signing": one_key(keys), "tls": {"clientAuth": "required"}},
        "take effect only with tls.enabled=true",
    ),
    "service-monitor-tls-config-without-tls": (
        lambda keys: {"signing": one_key(keys), "serviceMonitor": {"enabled": True, "tlsConfig": {"insecureSkipVerify": True}}},
        "serviceMonitor.tlsConfig is used only with tls.enabled=true",
    ),
    "tls-identities-without-tls": (
        lambda keys: {"signing": one_key(keys), "config": {"clients": [{"id": "o", "rpcs": ["exchange"], "tls_identities": ["spiffe://a/b"]}]}},
        "config.clients o has tls_identities, which name client certificates: they need tls.enabled=true and a client CA",
    ),
    "tls-identities-without-client-ca": (
        lambda keys: {
            "signing": one_key(keys),
            "tls": {"enabled": True, "secretName": "t"},
            "config": {"clients": [{"id": "o", "rpcs": ["exchange"], "tls_identities": ["o.agents.svc"]}]},
        },
        "config.clients o has tls_identities",
    ),
}

# Value sets values.schema.json refuses at install time, with the path Helm names.
INVALID: dict[str, tuple[Callable[[Any], dict[str, Any]], str]] = {
    "unknown-top-level-key": (lambda keys: {**minimal(keys), "replicas": 2}, "replicas"),
    "config-key-typo": (lambda keys: {**minimal(keys), "config": {"broker": {"isuer": "https://x.example"}}}, "isuer"),
    "rate-limit-key-typo": (
        lambda keys: {**minimal(keys), "config": {"rate_limits": {"client_per_second": 10}}},
        "client_per_second",
    ),
    "zero-replicas": (lambda keys: {**minimal(keys), "replicaCount": 0}, "/replicaCount"),
    "replicas-as-text": (lambda keys: {**minimal(keys), "replicaCount": "two"}, "/replicaCount"),
    "bad-pull-policy": (lambda keys: {**minimal(keys), "image": {"repository": "tessera", "pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "broker-issuer-not-a-url": (lambda keys: {**minimal(keys), "config": {"broker": {"issuer": "tessera"}}}, "/config/broker/issuer"),
    "detail-type-without-schema": (
        lambda keys: {**minimal(keys), "config": {"audiences": [{"id": "https://a.example", "scopes": ["a"], "authorization_details": [{"type": "x"}]}]}},
        "/config/audiences/0/authorization_details/0",
    ),
    "route-detail-unknown-key": (
        lambda keys: {**minimal(keys), "config": {"routes": [{"path_prefix": "/a/", "audience": "https://a.example", "authorization_details": {"type": "x", "identifier": "1"}}]}},
        "/config/routes/0/authorization_details",
    ),
    "audience-without-scopes": (lambda keys: {**minimal(keys), "config": {"audiences": [{"id": "https://a.example"}]}}, "/config/audiences/0"),
    "audience-grant-typo": (
        lambda keys: {**minimal(keys), "config": {"audiences": [{"id": "https://a.example", "scopes": ["a"], "grant": "all"}]}},
        "/config/audiences/0/grant",
    ),
    "issuer-with-two-jwks-sources": (
        lambda keys: {**minimal(keys), "config": {"issuers": [{"name": "k", "issuer": "https://k", "jwks_url": "https://k/j", "jwks_file": "j.json"}]}},
        "/config/issuers/0",
    ),
    "issuer-allowing-none": (
        lambda keys: {**minimal(keys), "config": {"issuers": [{"name": "k", "issuer": "https://k", "jwks_url": "https://k/j", "algorithms": ["none"]}]}},
        "/config/issuers/0/algorithms/0",
    ),
    "client-with-unknown-rpc": (
        lambda keys: {**minimal(keys), "config": {"clients": [{"id": "c", "secret_sha256": SECRET_SHA256, "rpcs": ["admin"]}]}},
        "/config/clients/0/rpcs/0",
    ),
    "client-without-secret": (lambda keys: {**minimal(keys), "config": {"clients": [{"id": "c", "rpcs": ["exchange"]}]}}, "/config/clients/0"),
    "signing-key-not-pem": (lambda keys: {"signing": {"keys": [{"pem": "not a key"}]}}, "/signing/keys/0/pem"),
    "writable-root-filesystem": (
        lambda keys: {**minimal(keys), "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": False, "allowPrivilegeEscalation": False}},
        "/securityContext/readOnlyRootFilesystem",
    ),
    "root-pod": (lambda keys: {**minimal(keys), "podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    "redis-url-not-a-redis-url": (lambda keys: {**minimal(keys), "redis": {"url": "http://redis:6379"}}, "/redis/url"),
    "redis-sentinel-url": (lambda keys: {**minimal(keys), "redis": {"url": "redis+sentinel://s:26379/m"}}, "/redis/url"),
    # The TLS Secret is tls.secretName; other names (as in other charts) are refused, not ignored.
    "tls-existing-secret": (lambda keys: {**minimal(keys), "tls": {"existingSecret": "tessera-tls"}}, "existingSecret"),
    "tls-client-auth-typo": (lambda keys: {**minimal(keys), "tls": {"enabled": True, "secretName": "t", "clientAuth": "require"}}, "/tls/clientAuth"),
    "tls-reload-interval-zero": (lambda keys: {**minimal(keys), "tls": {"reloadIntervalSeconds": 0}}, "/tls/reloadIntervalSeconds"),
    "tls-client-ca-unknown-key": (lambda keys: {**minimal(keys), "tls": {"clientCa": {"secret": "b"}}}, "secret"),
    "tls-secret-name-not-a-name": (lambda keys: {**minimal(keys), "tls": {"secretName": "Tessera TLS"}}, "/tls/secretName"),
    "tls-identity-with-space": (
        lambda keys: {**minimal(keys), "config": {"clients": [{"id": "c", "rpcs": ["exchange"], "tls_identities": ["a b"]}]}},
        "/config/clients/0/tls_identities/0",
    ),
    "service-monitor-tls-config-typo": (
        lambda keys: {**minimal(keys), "serviceMonitor": {"tlsConfig": {"insecure": True}}},
        "insecure",
    ),
    "bad-scrape-interval": (lambda keys: {**minimal(keys), "serviceMonitor": {"enabled": True, "interval": "often"}}, "/serviceMonitor/interval"),
}

