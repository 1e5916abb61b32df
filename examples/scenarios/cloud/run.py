"""Scenario 4: a cloud agent exchanges a workload identity assertion (a Kubernetes projected service-account
token) for ephemeral access to one API — and to nothing else."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common import (Api, Issuer, ORCHESTRATOR_SECRET, RESOURCE_API_SECRET, Tessera, call, expect,
                    kubernetes_sa, say, show)
from tessera_client import Broker, ClientSecret, OAuthError, PrivateKeyJwt, Verifier
from tessera_client.starlette import require

BILLING = "https://billing.example"


def billing_api(broker_url: str) -> Starlette:
    reader = require(Verifier(broker_url, BILLING, credentials=ClientSecret("billing-api", RESOURCE_API_SECRET)),
                     ["billing:read"])

    async def invoices(request: Request) -> JSONResponse:
        token = await reader(request)
        return JSONResponse({"invoices": [{"month": "2026-11", "total_eur": 18250}], "for": token.sub})

    return Starlette(routes=[Route("/invoices", invoices)])


def refused(broker: Broker, audience: str, scope: str) -> str:
    try:
        broker.exchange(audience, scope, task_id="cost-report-2026-11")
    except OAuthError as e:
        show("broker", f"{e.error}: {e.description}")
        return e.error
    return "granted"


def main() -> None:
    k8s = Issuer("kubernetes", "https://kubernetes.default.svc.cluster.local")
    runtime_key = Issuer("agent-runtime", "agent-runtime", alg="ES256")
    with Tessera(__file__, k8s, runtime_key) as tessera, Api(billing_api(tessera.url)) as api:
        assertion = kubernetes_sa(k8s, "finops", "cost-reporter", ttl=3600)
        show("workload assertion", {k: v for k, v in jwt.decode(assertion, options={"verify_signature": False}).items()
                                    if k in ("iss", "sub", "aud")})
        # private_key_jwt: a fresh assertion signed with the runtime's key for every request.
        runtime = PrivateKeyJwt("agent-runtime", runtime_key.private_pem(), algorithm="ES256", kid=runtime_key.kid)
        agent = Broker(tessera.url, runtime, subject_token=assertion)

        say("1. The agent runtime (private_key_jwt: no shared secret) exchanges its service-account token")
        token = agent.exchange(BILLING, "billing:read", task_id="cost-report-2026-11")
        show("granted", {"scope": token.scope, "expires_in": token.expires_in})
        expect(token.expires_in <= 120, "it is ephemeral: two minutes at most, though the assertion lives an hour")
        expect(call("GET", f"{api.url}/invoices", token.access_token).status_code == 200, "the billing API serves it")

        say("2. What the assertion does not open")
        expect(call("GET", f"{api.url}/invoices", assertion).status_code == 401,
               "the raw service-account token is refused by the API (not a tessera token for it)")
        expect(refused(agent, BILLING, "billing:write") == "invalid_scope", "no billing write")
        expect(refused(agent, "https://payroll.example", "payroll:read") == "invalid_scope", "no other API")
        other = Broker(tessera.url, ClientSecret("legacy-runtime", ORCHESTRATOR_SECRET, method="post"),
                       subject_token=kubernetes_sa(k8s, "default", "cost-reporter"))
        expect(refused(other, BILLING, "billing:read") == "invalid_scope",
               "the same service-account name in another namespace gets nothing")

        say("3. The job is done: the agent revokes its token")
        agent.revoke(token, reason="job done")
        expect(call("GET", f"{api.url}/invoices", token.access_token).status_code == 401, "the token is dead")
    say("scenario cloud: ok")


if __name__ == "__main__":
    main()
