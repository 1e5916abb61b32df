//! Delegation as an attacker probes it: `may_act` travels with every derived token, a tessera token used as
//! an actor brings its whole history along (and its holder becomes the actor), an upstream assertion's own
//! `act` is kept, and whatever a token derives from, revoking it ends the token.

use serde_json::json;
use tessera::grpc::pb::{self, revoke_request::Target};
use tonic::Code;

use crate::support::*;

const SPIFFE_TD: &str = "spiffe://agents.example.org";
const SUMMARISER_SA: &str = "system:serviceaccount:agents:summariser";

/// A Kubernetes assertion with its claims edited.
fn k8s_with(ttl: u64, f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut c = claims("kubernetes", ttl);
    f(&mut c);
    Signer::rs256("kubernetes.key.pem").token(&kid("kubernetes.jwks.json"), &c)
}

fn spiffe_for(sub: &str) -> String {
    let mut c = claims("spiffe", 600);
    c["sub"] = sub.into();
    Signer::es256("spiffe.key.pem").token(&kid("spiffe.jwks.json"), &c)
}

/// An exchange request: a tessera subject token re-exchanged keeps its task; an upstream one gets task-42.
fn req(subject: &str, audience: &str, scope: &str, actor: Option<&str>) -> pb::ExchangeTokenRequest {
    let mut r = request(subject, audience, scope);
    if decode_opt(subject).is_some() {
        r.subject_token_type = ACCESS_TOKEN.into();
        r.task_id.clear();
    }
    if let Some(actor) = actor {
        r.actor_token = actor.into();
        r.actor_token_type = if decode_opt(actor).is_some() { ACCESS_TOKEN.into() } else { JWT.into() };
    }
    r
}

fn decode_opt(token: &str) -> Option<tessera::token::AccessClaims> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<tessera::token::AccessClaims>(&bytes).ok().filter(|c| c.iss == BROKER)
}

async fn exchange(broker: &TestBroker, r: pb::ExchangeTokenRequest) -> Result<String, tonic::Status> {
    broker.client().await.exchange_token(r).await.map(|r| r.into_inner().access_token)
}

async fn active(broker: &TestBroker, token: &str) -> bool {
    let r = pb::IntrospectRequest { token: token.into(), token_type_hint: String::new() };
    broker.client().await.introspect(r).await.expect("introspection answers").into_inner().active
}

async fn revoke(broker: &TestBroker, target: Target) {
    let r = pb::RevokeRequest { target: Some(target), reason: "test".into() };
    broker.client().await.revoke(r).await.expect("revoke");
}

fn party(iss: &str, sub: &str) -> tessera::token::Party {
    tessera::token::Party { iss: iss.into(), sub: sub.into() }
}

#[tokio::test]
async fn may_act_travels_with_every_derived_token() {
    let broker = TestBroker::start().await;
    let only_summariser = k8s_with(600, |c| c["may_act"] = json!({ "sub": SPIFFE_AGENT, "iss": SPIFFE_TD }));

    // Exchanged without an actor, to a downstream token and to a task token: the restriction is carried.
    let crm = exchange(&broker, req(&only_summariser, CRM, "crm:read", None)).await.unwrap();
    let task = exchange(&broker, req(&only_summariser, BROKER, "crm:read", None)).await.unwrap();
    for token in [&crm, &task] {
        assert_eq!(decode(token).may_act, Some(vec![party(SPIFFE_TD, SPIFFE_AGENT)]));
    }
    // A later hop with another actor is refused, from either token, whatever issuer the actor is from.
    for token in [&crm, &task] {
        for actor in [github_assertion(600), spiffe_for("spiffe://agents.example.org/ns/agents/sa/intruder")] {
            let refused = exchange(&broker, req(token, CRM, "crm:read", Some(&actor))).await;
            assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", token);
        }
    }
    // The allowed actor still may; and the restriction is still there one hop further down.
    let delegated = exchange(&broker, req(&task, CRM, "crm:read", Some(&spiffe_assertion(600)))).await.unwrap();
    assert_eq!(decode(&delegated).may_act, Some(vec![party(SPIFFE_TD, SPIFFE_AGENT)]));
    let refused = exchange(&broker, req(&delegated, CRM, "crm:read", Some(&github_assertion(600)))).await;
    assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &delegated);
}

#[tokio::test]
async fn an_unqualified_may_act_means_the_subject_issuer() {
    let broker = TestBroker::start().await;
    // `sub` is unique only within its issuer: an unqualified SPIFFE ID in a Kubernetes assertion's may_act
    // names a Kubernetes principal, not the SPIFFE workload of that name.
    let unqualified = k8s_with(600, |c| c["may_act"] = json!({ "sub": SPIFFE_AGENT }));
    let refused = exchange(&broker, req(&unqualified, CRM, "crm:read", Some(&spiffe_assertion(600)))).await;
    assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &unqualified);

    // A principal of the subject's own issuer matches it unqualified.
    let summariser = k8s_with(600, |c| c["sub"] = SUMMARISER_SA.into());
    let may = k8s_with(600, |c| c["may_act"] = json!([{ "sub": SUMMARISER_SA }]));
    let granted = exchange(&broker, req(&may, CRM, "crm:read", Some(&summariser))).await.unwrap();
    let act = decode(&granted).act.unwrap();
    assert_eq!((act.sub.as_str(), act.iss.as_deref()), (SUMMARISER_SA, Some(K8S_ISS)));

    // A may_act that is not an object or a list of objects is refused, not read as "anyone".
    let malformed = k8s_with(600, |c| c["may_act"] = json!("anyone"));
    let refused = exchange(&broker, req(&malformed, CRM, "crm:read", None)).await;
    assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &malformed);
}

/// A task token for the summariser (SPIFFE) in its own task, issued by tessera: what an agent holds.
async fn summariser_task_token(broker: &TestBroker, actor: Option<&str>) -> String {
    let mut r = req(&spiffe_assertion(600), BROKER, "crm:read", actor);
    r.task_id = "summariser-task".into();
    exchange(broker, r).await.unwrap()
}

#[tokio::test]
async fn a_tessera_actor_token_names_its_holder_and_joins_the_lineage() {
    let broker = TestBroker::start().await;
    // The summariser's task token, delegated once to a GitHub job: the job holds it.
    let held = summariser_task_token(&broker, Some(&github_assertion(600))).await;
    let held_claims = decode(&held);
    let minted = exchange(&broker, req(&k8s_assertion(600), CRM, "crm:read", Some(&held))).await.unwrap();
    let c = decode(&minted);
    let act = c.act.clone().unwrap();
    assert_eq!(act.sub, "repo:octo-org/agent-fleet:ref:refs/heads/main", "the actor is who holds the actor token");
    assert_eq!(act.iss.as_deref(), Some(GITHUB_ISS));
    assert_eq!(c.anc, vec![held_claims.jti.clone()]);
    assert_eq!(c.lin.tasks, vec!["summariser-task".to_string()]);
    assert!(c.lin.parties.contains(&party(SPIFFE_TD, SPIFFE_AGENT)), "{:?}", c.lin);
    assert_eq!(c.depth(), 1);

    // Revoking the actor token ends the minted token and anything exchanged from it.
    let child = exchange(&broker, req(&minted, CRM, "crm:read", None)).await.unwrap();
    assert!(active(&broker, &minted).await && active(&broker, &child).await);
    revoke(&broker, Target::Token(held)).await;
    assert!(!active(&broker, &minted).await, "revoking the actor token ends what it helped mint");
    assert!(!active(&broker, &child).await);
    let refused = exchange(&broker, req(&minted, CRM, "crm:read", None)).await;
    assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &minted);
}

#[tokio::test]
async fn revoking_the_actor_tokens_task_subject_or_actors_ends_the_minted_token() {
    for target in [
        Target::TaskId("summariser-task".into()),
        Target::Subject(pb::Subject { issuer: "spiffe".into(), sub: SPIFFE_AGENT.into() }),
        Target::Subject(pb::Subject {
            issuer: "github".into(),
            sub: "repo:octo-org/agent-fleet:ref:refs/heads/main".into(),
        }),
    ] {
        // A broker each: each revocation also bars its target from new exchanges.
        let broker = TestBroker::start().await;
        let held = summariser_task_token(&broker, Some(&github_assertion(600))).await;
        let minted = exchange(&broker, req(&k8s_assertion(600), CRM, "crm:read", Some(&held))).await.unwrap();
        assert!(active(&broker, &minted).await);
        revoke(&broker, target.clone()).await;
        assert!(!active(&broker, &minted).await, "revoking {target:?} leaves the minted token active");
        let refused = exchange(&broker, req(&minted, CRM, "crm:read", None)).await;
        assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &minted);
    }
}

#[tokio::test]
async fn an_actor_tokens_chain_counts_toward_the_depth_limit() {
    let broker = TestBroker::builder().broker_toml("max_delegation_depth = 2").start().await;
    // A task token two actors deep.
    let t1 = summariser_task_token(&broker, Some(&github_assertion(600))).await;
    let t2 = exchange(&broker, req(&t1, BROKER, "crm:read", Some(&k8s_assertion(600)))).await.unwrap();
    assert_eq!(decode(&t2).depth(), 2);
    // Used as the actor for a fresh subject, it does not restart the chain at depth 1.
    let minted = exchange(&broker, req(&spiffe_assertion(600), CRM, "crm:read", Some(&t2))).await.unwrap();
    assert_eq!(decode(&minted).depth(), 2, "the actor token's depth is counted");
    let refused = exchange(&broker, req(&minted, CRM, "crm:read", Some(&github_assertion(600)))).await;
    let status = assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &minted);
    assert!(status.message().contains("depth"), "{}", status.message());
}

#[tokio::test]
async fn only_task_tokens_are_accepted_as_tessera_actors() {
    let broker = TestBroker::start().await;
    let downstream = exchange(&broker, req(&spiffe_assertion(600), CRM, "crm:read", None)).await.unwrap();
    let refused = exchange(&broker, req(&k8s_assertion(600), CRM, "crm:read", Some(&downstream))).await;
    let status = assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &downstream);
    assert!(status.message().contains("task token"), "{}", status.message());
}

#[tokio::test]
async fn an_upstream_assertions_own_act_is_kept_and_revocable() {
    let broker = TestBroker::start().await;
    let planner = "spiffe://agents.example.org/ns/agents/sa/planner";
    let acted = k8s_with(600, |c| c["act"] = json!({ "sub": planner, "iss": SPIFFE_TD }));
    let plain = exchange(&broker, req(&acted, CRM, "crm:read", None)).await.unwrap();
    let act = decode(&plain).act.unwrap();
    assert_eq!((act.sub.as_str(), act.iss.as_deref(), act.act.is_none()), (planner, Some(SPIFFE_TD), true));

    let nested = exchange(&broker, req(&acted, CRM, "crm:read", Some(&github_assertion(600)))).await.unwrap();
    let act = decode(&nested).act.unwrap();
    assert_eq!(act.iss.as_deref(), Some(GITHUB_ISS));
    let inner = act.act.expect("the assertion's act is nested under the new actor");
    assert_eq!(inner.sub, planner);

    // An unqualified upstream actor is of the assertion's issuer.
    let unqualified = k8s_with(600, |c| c["act"] = json!({ "sub": SUMMARISER_SA }));
    let t = exchange(&broker, req(&unqualified, CRM, "crm:read", None)).await.unwrap();
    assert_eq!(decode(&t).act.unwrap().iss.as_deref(), Some(K8S_ISS));

    revoke(&broker, Target::Subject(pb::Subject { issuer: "spiffe".into(), sub: planner.into() })).await;
    assert!(!active(&broker, &plain).await && !active(&broker, &nested).await);
    let refused = exchange(&broker, req(&acted, CRM, "crm:read", None)).await;
    assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &acted);
}

#[tokio::test]
async fn subject_and_actor_the_same_principal_is_a_clean_refusal() {
    let broker = TestBroker::start().await;
    // The same principal under other tags (another namespace claim): not a server error.
    let same = k8s_with(600, |c| c["kubernetes.io"]["namespace"] = "elsewhere".into());
    let refused = exchange(&broker, req(&k8s_assertion(600), CRM, "crm:read", Some(&same))).await;
    let status = assert_refused(refused.map(tonic::Response::new), Code::InvalidArgument, "invalid_request", &same);
    assert!(status.message().contains("subject itself"), "{}", status.message());
}

#[tokio::test]
async fn revoking_a_client_ends_tokens_derived_from_its_tokens_by_other_clients() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    let basic =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("orchestrator:{CLIENT_SECRET}"));
    let mut r = tonic::Request::new(request(&k8s_assertion(600), CRM, "crm:read"));
    r.metadata_mut().insert("authorization", format!("Basic {basic}").parse().unwrap());
    let parent = client.exchange_token(r).await.unwrap().into_inner().access_token;
    assert_eq!(decode(&parent).client_id, "orchestrator");
    // Re-exchanged by another client (the loopback one).
    let child = exchange(&broker, req(&parent, CRM, "crm:read", None)).await.unwrap();
    assert_eq!(
        (decode(&child).client_id.as_str(), decode(&child).lin.clients),
        ("local", vec!["orchestrator".to_string()])
    );
    revoke(&broker, Target::ClientId("orchestrator".into())).await;
    assert!(!active(&broker, &parent).await);
    assert!(!active(&broker, &child).await, "a client revocation reaches tokens derived from its tokens");
}

#[tokio::test]
async fn subjects_with_control_characters_are_refused_and_others_can_be_revoked() {
    let broker = TestBroker::start().await;
    for sub in ["agent\nevent=revoke decision=revoked", "agent\u{7f}", "tab\there", "nul\u{0}"] {
        let bad = k8s_with(600, |c| c["sub"] = sub.into());
        let refused = exchange(&broker, req(&bad, BROKER, "crm:read", None)).await;
        assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &bad);
    }
    let bad_actor = k8s_with(600, |c| c["act"] = json!({ "sub": "a\r\nb" }));
    let refused = exchange(&broker, req(&bad_actor, CRM, "crm:read", None)).await;
    assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &bad_actor);

    // Whatever is accepted can be revoked by subject: spaces, non-ASCII, the longest allowed.
    for sub in ["agent one ü".to_string(), "a".repeat(512)] {
        let ok = k8s_with(600, |c| c["sub"] = sub.clone().into());
        let token = exchange(&broker, req(&ok, BROKER, "crm:read", None)).await.unwrap();
        revoke(&broker, Target::Subject(pb::Subject { issuer: "kubernetes".into(), sub: sub.clone() })).await;
        assert!(!active(&broker, &token).await, "a subject that was issued a token can be revoked");
    }
    let too_long = k8s_with(600, |c| c["sub"] = "a".repeat(513).into());
    let refused = exchange(&broker, req(&too_long, BROKER, "crm:read", None)).await;
    assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &too_long);

    // Audiences and resources with control characters or spaces are refused at the door.
    for audience in [format!("{CRM}\nevent=revoke"), format!("{CRM} x")] {
        let refused = exchange(&broker, req(&k8s_assertion(600), &audience, "crm:read", None)).await;
        assert_refused(refused.map(tonic::Response::new), Code::InvalidArgument, "invalid_request", "");
    }
}
