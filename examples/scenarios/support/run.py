"""Scenario 2: a support agent lets a summariser read one case record for one time window. Another case, or
the same case after the window, is refused; an export needs a human's approval."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common import (Api, Issuer, ORCHESTRATOR_SECRET, RESOURCE_API_SECRET, SUPERVISOR_SECRET, Tessera, call,
                    expect, kubernetes_sa, say, show)
from tessera_client import ApprovalPending, Broker, ClientSecret, OAuthError, Verifier
from tessera_client.starlette import require

CRM = "https://crm.example"
CASES = {"1234": "Customer reports double billing in November.", "5678": "Another customer's case."}


def case_api(broker_url: str) -> Starlette:
    """The CRM's case API: a read needs `crm:read` and a `crm_case` detail naming this case with `read`."""
    verifier = Verifier(broker_url, CRM, credentials=ClientSecret("crm-api", RESOURCE_API_SECRET), leeway=0)
    reader = require(verifier, ["crm:read"])

    async def case(request: Request) -> JSONResponse:
        token = await reader(request)
        number = request.path_params["id"]
        allowed = any(d.get("type") == "crm_case" and d.get("identifier") == number and "read" in d.get("actions", [])
                      for d in token.authorization_details or [])
        if not allowed:
            raise HTTPException(403, "the token does not name this case",
                                headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'})
        return JSONResponse({"case": number, "record": CASES[number]})

    return Starlette(routes=[Route("/cases/{id}", case)])


def main() -> None:
    k8s = Issuer("kubernetes", "https://kubernetes.default.svc.cluster.local")
    with Tessera(__file__, k8s) as tessera, Api(case_api(tessera.url)) as api:
        desk = Broker(tessera.url, ClientSecret("support-desk", ORCHESTRATOR_SECRET),
                      subject_token=kubernetes_sa(k8s, "support", "support-agent"))
        summariser = kubernetes_sa(k8s, "support", "summariser")
        details = [{"type": "crm_case", "actions": ["read"], "identifier": "1234"}]

        with desk.task("1234", purpose="summarise case 1234") as task:
            say("1. The support agent asks for a read of case 1234 for the summariser")
            token = task.exchange(CRM, "crm:read", actor_token=summariser, authorization_details=details)
            show("granted", {"scope": token.scope, "expires_in": token.expires_in,
                             "authorization_details": token.authorization_details})

            say("2. The summariser reads case 1234, then tries another case")
            expect(call("GET", f"{api.url}/cases/1234", token.access_token).status_code == 200, "case 1234 is served")
            expect(call("GET", f"{api.url}/cases/5678", token.access_token).status_code == 403,
                   "case 5678 is refused: the token names case 1234 only")
            try:
                task.exchange(CRM, "crm:read", actor_token=summariser, cache=False,
                              authorization_details=[{"type": "crm_case", "actions": ["read"], "identifier": "5678"}])
                expect(False, "the broker refuses case 5678 within task 1234")
            except OAuthError as e:
                show("broker", f"{e.error}: {e.description}")
                expect(e.error == "invalid_scope", "the broker refuses case 5678 within task 1234")

            say("3. An export of the case waits for a supervisor")
            export = [{"type": "crm_case", "actions": ["export"], "identifier": "1234"}]
            try:
                task.exchange(CRM, "crm:export", actor_token=summariser, authorization_details=export)
                expect(False, "the export waits for a human's approval")
            except ApprovalPending as pending:
                show("broker", f"authorization_pending: approval {pending.approval_id} at {pending.approval_uri}")
                expect(True, "the export waits for a human's approval")
                try:
                    desk.approve(pending.approval_id)
                    expect(False, "the desk cannot approve its own escalation")
                except OAuthError as e:
                    expect(e.error == "unauthorized_client", "the desk cannot approve its own escalation")
                supervisor = Broker(tessera.url, ClientSecret("supervisor", SUPERVISOR_SECRET))
                decided = supervisor.approve(pending.approval_id, reason="customer asked for their case history")
                show("supervisor", {k: decided[k] for k in ("status", "approval_scope", "task_id", "decided_by")})
                desk.wait_for_approval(pending, timeout=30)
                approved = task.exchange(CRM, "crm:export", actor_token=summariser, authorization_details=export,
                                         cache=False)
                show("granted", {"scope": approved.scope, "authorization_details": approved.authorization_details})
                expect(approved.scope == "crm:export", "the approved export is granted")
                try:
                    task.exchange(CRM, "crm:export", actor_token=summariser, authorization_details=export,
                                  cache=False)
                    expect(False, "the approval is spent by the one export it granted")
                except ApprovalPending:
                    expect(True, "the approval is spent by the one export it granted")

            say("4. The window closes")
            time.sleep(max(0.0, token.remaining()) + 1.5)
            expect(call("GET", f"{api.url}/cases/1234", token.access_token).status_code == 401,
                   "case 1234 is refused after the window")
    say("scenario support: ok")


if __name__ == "__main__":
    main()
