"""Scenario 3: a CI assistant hands a release verifier a deploy-verification token for one repository and
environment, from a GitHub Actions OIDC assertion. It cannot deploy, and cannot be used for another
repository."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common import Api, Issuer, ORCHESTRATOR_SECRET, RESOURCE_API_SECRET, Tessera, call, expect, say, show
from tessera_client import Broker, ClientSecret, OAuthError, Verifier
from tessera_client.starlette import require

FLEET = "https://deploy.example/octo-org/agent-fleet/production"
PAYMENTS = "https://deploy.example/octo-org/payments/production"


def github_oidc(issuer: Issuer, repository: str, environment: str, ref: str = "refs/heads/main") -> str:
    """A GitHub Actions OIDC token, with the claims GitHub sets for a job in an environment."""
    owner = repository.split("/")[0]
    return issuer.mint({
        "sub": f"repo:{repository}:environment:{environment}", "repository": repository,
        "repository_owner": owner, "ref": ref, "ref_type": "branch", "environment": environment,
        "workflow": "release", "event_name": "push", "run_id": "9876543210", "run_attempt": "1",
        "job_workflow_ref": f"{repository}/.github/workflows/release.yml@{ref}", "runner_environment": "github-hosted",
    })


def deploy_api(broker_url: str) -> Starlette:
    creds = ClientSecret("deploy-api", RESOURCE_API_SECRET)
    targets = {}
    for audience in (FLEET, PAYMENTS):
        verifier = Verifier(broker_url, audience, credentials=creds)
        targets[audience] = (require(verifier, ["deploy:verify"]), require(verifier, ["deploy:write"]))

    def audience(request: Request) -> str:
        p = request.path_params
        return f"https://deploy.example/{p['owner']}/{p['repo']}/{p['env']}"

    async def verify(request: Request) -> JSONResponse:
        token = await targets[audience(request)][0](request)
        return JSONResponse({"release": "v2.4.0", "healthy": True, "checked_by": token.sub})

    async def deploy(request: Request) -> JSONResponse:
        await targets[audience(request)][1](request)
        return JSONResponse({"deployed": "v2.4.1"})

    base = "/{owner}/{repo}/{env}"
    return Starlette(routes=[Route(base + "/verify", verify), Route(base + "/deploy", deploy, methods=["POST"])])


def main() -> None:
    github = Issuer("github", "https://token.actions.githubusercontent.com")
    with Tessera(__file__, github) as tessera, Api(deploy_api(tessera.url)) as api:
        oidc = github_oidc(github, "octo-org/agent-fleet", "production")
        assistant = Broker(tessera.url, ClientSecret("ci-assistant", ORCHESTRATOR_SECRET), subject_token=oidc)

        say("1. The CI assistant exchanges the workflow's OIDC token for a verification token")
        token = assistant.exchange(FLEET, "deploy:verify", task_id="release-v2.4.0")
        show("granted", {"scope": token.scope, "audience": FLEET, "expires_in": token.expires_in})

        say("2. The release verifier uses it")
        expect(call("GET", f"{api.url}/octo-org/agent-fleet/production/verify", token.access_token).status_code == 200,
               "it verifies the agent-fleet production release")
        expect(call("POST", f"{api.url}/octo-org/agent-fleet/production/deploy", token.access_token).status_code == 403,
               "it cannot deploy (insufficient_scope)")
        expect(call("GET", f"{api.url}/octo-org/payments/production/verify", token.access_token).status_code == 401,
               "it cannot be used for another repository (another audience)")

        say("3. What the broker refuses")
        for audience, scope, what, subject in [
            (FLEET, "deploy:write", "a deploy token", oidc),
            (PAYMENTS, "deploy:verify", "a token for another repository", oidc),
            (FLEET, "deploy:verify", "a token for the workflow of another branch",
             github_oidc(github, "octo-org/agent-fleet", "production", ref="refs/heads/feature")),
            (FLEET, "deploy:verify", "a token from a job in another environment",
             github_oidc(github, "octo-org/agent-fleet", "staging")),
        ]:
            try:
                assistant.exchange(audience, scope, subject_token=subject, task_id="release-v2.4.0")
                expect(False, f"the broker refuses {what}")
            except OAuthError as e:
                show("broker", f"{e.error}: {e.description}")
                expect(e.error == "invalid_scope", f"the broker refuses {what}")
    say("scenario ci: ok")


if __name__ == "__main__":
    main()
