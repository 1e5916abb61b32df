"""Scenario 1: an orchestrator gives a retrieval agent read access to one document repository; the token is
revoked the moment the answer returns, and a replay of it is refused by the document API."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common import (Api, Issuer, ORCHESTRATOR_SECRET, RESOURCE_API_SECRET, Tessera, call, expect,
                    kubernetes_sa, say, show)
from tessera_client import Broker, ClientSecret, OAuthError, Verifier
from tessera_client.starlette import require

HANDBOOK = "https://docs.example/repos/handbook"
FINANCE = "https://docs.example/repos/finance"
DOCS = {"handbook": {"onboarding": "Day one: get a laptop, read the security policy."},
        "finance": {"q3": "Q3 revenue: confidential."}}


def docs_api(broker_url: str) -> Starlette:
    """The document API: each repository is its own audience; every read is verified offline (JWKS) and
    online (introspection), so a revoked token is refused at once."""
    creds = ClientSecret("docs-api", RESOURCE_API_SECRET)
    readers = {repo: require(Verifier(broker_url, f"https://docs.example/repos/{repo}", credentials=creds),
                             ["docs:read"]) for repo in DOCS}

    async def read(request: Request) -> JSONResponse:
        repo, doc = request.path_params["repo"], request.path_params["doc"]
        token = await readers[repo](request)
        return JSONResponse({"repo": repo, "doc": doc, "text": DOCS[repo][doc], "for": token.sub,
                             "via": token.act.chain() if token.act else []})

    return Starlette(routes=[Route("/repos/{repo}/docs/{doc}", read)])


def main() -> None:
    k8s = Issuer("kubernetes", "https://kubernetes.default.svc.cluster.local")
    with Tessera(__file__, k8s) as tessera, Api(docs_api(tessera.url)) as api:
        orchestrator = Broker(tessera.url, ClientSecret("orchestrator", ORCHESTRATOR_SECRET),
                              subject_token=kubernetes_sa(k8s, "agents", "orchestrator"))
        retriever = kubernetes_sa(k8s, "agents", "retriever")

        say("1. The orchestrator asks for a handbook read token for the retrieval agent (task question-7)")
        with orchestrator.task("question-7", purpose="answer: what happens on day one?") as task:
            token = task.exchange(HANDBOOK, "docs:read", actor_token=retriever)
            show("granted", {"scope": token.scope, "expires_in": token.expires_in})
            api_view = Broker(tessera.url, ClientSecret("docs-api", RESOURCE_API_SECRET))
            info = api_view.introspect(token)
            show("introspection", {"sub": info.sub, "aud": info.aud, "act": info.act.chain(), "task": info.task_id})
            expect(info.act.chain() == ["system:serviceaccount:agents:retriever"], "the token names the agent as actor")

            say("2. The retrieval agent reads the handbook")
            answer = call("GET", f"{api.url}/repos/handbook/docs/onboarding", token.access_token)
            expect(answer.status_code == 200, "the handbook read is served")

            say("3. The same token on another repository, and for a write")
            expect(call("GET", f"{api.url}/repos/finance/docs/q3", token.access_token).status_code == 401,
                   "the finance repository refuses it (another audience)")
            for audience, scope, what in [(FINANCE, "docs:read", "a finance token"),
                                          (HANDBOOK, "docs:write", "a handbook write token")]:
                try:
                    task.exchange(audience, scope, actor_token=retriever)
                    expect(False, f"the broker refuses {what} for the agent")
                except OAuthError as refused:
                    show("broker", f"{refused.error}: {refused.description}")
                    expect(refused.error == "invalid_scope", f"the broker refuses {what} for the agent")
            say("4. The answer returns: the task block ends, which revokes the task")
        expect(not api_view.introspect(token).active, "the token is inactive the moment the task ends")

        say("5. A replay of the token")
        expect(call("GET", f"{api.url}/repos/handbook/docs/onboarding", token.access_token).status_code == 401,
               "the document API refuses the replay")
    say("scenario retrieval: ok")


if __name__ == "__main__":
    main()
