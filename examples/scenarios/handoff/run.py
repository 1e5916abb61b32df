"""Scenario 5: a planning agent hands work to an execution agent. The executor is re-authorised by policy, does
not inherit the planner's scopes, and the `act` chain of its token shows both agents."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common import (Api, Issuer, ORCHESTRATOR_SECRET, RESOURCE_API_SECRET, Tessera, call, expect,
                    kubernetes_sa, say, show)
from tessera_client import TOKEN_TYPE_ACCESS_TOKEN, Broker, ClientSecret, Verifier
from tessera_client.starlette import require

TICKETS = "https://tickets.example"
AGENT = "system:serviceaccount:agents:"


def tickets_api(broker_url: str) -> Starlette:
    verifier = Verifier(broker_url, TICKETS, credentials=ClientSecret("tickets-api", RESOURCE_API_SECRET))
    reader, writer = require(verifier, ["tickets:read"]), require(verifier, ["tickets:write"])

    async def show_ticket(request: Request) -> JSONResponse:
        token = await reader(request)
        return JSONResponse({"ticket": request.path_params["id"], "state": "open", "via": token.act.chain()})

    async def close_ticket(request: Request) -> JSONResponse:
        token = await writer(request)
        return JSONResponse({"ticket": request.path_params["id"], "state": "closed", "via": token.act.chain()})

    return Starlette(routes=[Route("/tickets/{id}", show_ticket), Route("/tickets/{id}/close", close_ticket,
                                                                         methods=["POST"])])


def main() -> None:
    k8s = Issuer("kubernetes", "https://kubernetes.default.svc.cluster.local")
    with Tessera(__file__, k8s) as tessera, Api(tickets_api(tessera.url)) as api:
        orchestrator = Broker(tessera.url, ClientSecret("orchestrator", ORCHESTRATOR_SECRET),
                              subject_token=kubernetes_sa(k8s, "agents", "orchestrator"))
        inspector = Broker(tessera.url, ClientSecret("tickets-api", RESOURCE_API_SECRET))
        with orchestrator.task("incident-311", purpose="triage incident 311") as task:
            say("1. The orchestrator takes its ceiling for the task: a task token")
            ceiling = task.task_token("tickets:read tickets:write")
            show("task token", {"scope": ceiling.scope, "audience": orchestrator.issuer})

            say("2. It hands the planning agent a tickets token (the planner's assertion is the actor)")
            planner = task.exchange(TICKETS, "tickets:read tickets:write", subject_token=ceiling.access_token,
                                    subject_token_type=TOKEN_TYPE_ACCESS_TOKEN,
                                    actor_token=kubernetes_sa(k8s, "agents", "planner"))
            show("planner", {"scope": planner.scope})
            expect(planner.scopes == ["tickets:read", "tickets:write"], "the planner may read and write")

            say("3. The planner hands the execution to the executor, asking for everything it holds itself")
            executor = task.exchange(TICKETS, "tickets:read tickets:write", subject_token=planner.access_token,
                                     subject_token_type=TOKEN_TYPE_ACCESS_TOKEN,
                                     actor_token=kubernetes_sa(k8s, "agents", "executor"))
            show("executor", {"scope": executor.scope})
            expect(executor.scopes == ["tickets:read"], "the executor is re-authorised: read only, no write inherited")
            info = inspector.introspect(executor)
            show("executor's act chain", info.raw.get("act"))
            expect(info.act.chain() == [AGENT + "executor", AGENT + "planner"],
                   "the act chain names the executor, acting for the planner")
            expect(info.sub == AGENT + "orchestrator" and info.task_id == "incident-311",
                   "the subject is still the orchestrator, and the task is bound")

            say("4. Each agent at the tickets API")
            expect(call("GET", f"{api.url}/tickets/311", executor.access_token).status_code == 200,
                   "the executor reads the ticket")
            expect(call("POST", f"{api.url}/tickets/311/close", executor.access_token).status_code == 403,
                   "the executor cannot close it (insufficient_scope)")
            expect(call("POST", f"{api.url}/tickets/311/close", planner.access_token).status_code == 200,
                   "the planner can")
        say("5. The task ends")
        expect(not any(inspector.introspect(t).active for t in (ceiling, planner, executor)),
               "the task token, the planner's and the executor's tokens are all inactive")
    say("scenario handoff: ok")


if __name__ == "__main__":
    main()
