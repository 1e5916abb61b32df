//! Gateways in front of resources: forward-auth answered directly, and a real nginx from the distribution's
//! packages using `auth_request` in front of a small upstream — a valid token passes, the same request after
//! the token (or its task, or an ancestor) is revoked gets 401 with the RFC 6750 challenge and
//! `resource_metadata`, a token without the route's scope gets 403, a DPoP-bound token passes only with a
//! fresh proof for that request, a token for one case's record passes that case's path only (RFC 9396
//! details against a `[[routes]]` path parameter); and the RFC 9728 metadata the challenge points at.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera::grpc::pb::{self, revoke_request::Target};

use crate::support::redis::free_port;
use crate::support::*;

async fn http_face(broker: &TestBroker) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tessera::http::serve(listener, Arc::clone(&broker.broker), None, std::future::pending()));
    format!("http://{addr}")
}

async fn issue(broker: &TestBroker, subject: &str, audience: &str, scope: &str, tessera_subject: bool) -> String {
    let mut r = request(subject, audience, scope);
    if tessera_subject {
        r.subject_token_type = ACCESS_TOKEN.into();
        r.task_id.clear();
    }
    broker.client().await.exchange_token(r).await.unwrap().into_inner().access_token
}

async fn revoke(broker: &TestBroker, target: Target) {
    let r = pb::RevokeRequest { target: Some(target), reason: "test".into() };
    broker.client().await.revoke(r).await.unwrap();
}

/// A forward-auth check as a gateway makes it.
async fn check(base: &str, token: Option<&str>, audience: &str, scope: &str) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .get(format!("{base}/forward-auth"))
        .header("x-tessera-audience", audience)
        .header("x-tessera-scope", scope);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.send().await.unwrap()
}

fn challenge(r: &reqwest::Response) -> String {
    r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn forward_auth_answers_what_gateways_need() {
    let broker = TestBroker::start().await;
    let base = http_face(&broker).await;
    let token = issue(&broker, &k8s_assertion(600), CRM, "crm:read", false).await;

    let ok = check(&base, Some(&token), CRM, "crm:read").await;
    assert_eq!(ok.status(), 200);
    let h = ok.headers();
    assert_eq!(h["x-tessera-sub"], ORCHESTRATOR);
    assert_eq!(h["x-tessera-sub-iss"], K8S_ISS);
    assert_eq!(
        (h["x-tessera-task-id"].to_str().unwrap(), h["x-tessera-scope"].to_str().unwrap()),
        ("task-42", "crm:read")
    );
    assert_eq!(h["x-tessera-jti"], decode(&token).jti.as_str());

    let metadata = format!(
        "resource_metadata=\"{BROKER}/oauth2/resource-metadata?resource={}\"",
        form_urlencoded::byte_serialize(CRM.as_bytes()).collect::<String>()
    );
    // No token: a bare challenge (RFC 6750 §3.1), pointing at the resource's metadata.
    let none = check(&base, None, CRM, "crm:read").await;
    assert_eq!(none.status(), 401);
    assert!(
        challenge(&none).starts_with("Bearer realm=\"tessera\"") && challenge(&none).contains(&metadata),
        "{}",
        challenge(&none)
    );
    assert!(!challenge(&none).contains("error="));
    // A token that is not one, and a token for another audience.
    for bad in ["not-a-token".to_string(), issue(&broker, &k8s_assertion(600), BROKER, "crm:read", false).await] {
        let r = check(&base, Some(&bad), CRM, "crm:read").await;
        assert_eq!(r.status(), 401);
        assert!(
            challenge(&r).contains("error=\"invalid_token\"") && challenge(&r).contains(&metadata),
            "{}",
            challenge(&r)
        );
    }
    // Missing a scope: 403, naming every scope the route needs.
    let r = check(&base, Some(&token), CRM, "crm:read crm:write").await;
    assert_eq!(r.status(), 403);
    assert!(
        challenge(&r).contains("error=\"insufficient_scope\"")
            && challenge(&r).contains("scope=\"crm:read crm:write\"")
    );
    // A gateway that names no audience and forwards no routed path gets a refusal, never a pass.
    let r = reqwest::Client::new().get(format!("{base}/forward-auth")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // A gateway with wrong credentials of its own is refused, whatever the token.
    let r = reqwest::Client::new()
        .get(format!("{base}/forward-auth"))
        .header("x-tessera-audience", CRM)
        .header("x-tessera-client-authorization", "Basic Z2F0ZXdheTp3cm9uZw==")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);

    // Revoked: 401.
    revoke(&broker, Target::Token(token.clone())).await;
    assert_eq!(check(&base, Some(&token), CRM, "crm:read").await.status(), 401);

    // The metadata the challenge points at (RFC 9728), from the catalog.
    let m: Value =
        reqwest::get(format!("{base}/oauth2/resource-metadata?resource={CRM}")).await.unwrap().json().await.unwrap();
    assert_eq!(m["resource"], CRM);
    assert_eq!(m["authorization_servers"], serde_json::json!([BROKER]));
    assert_eq!(m["scopes_supported"], serde_json::json!(["crm:read", "crm:write", "crm:export"]));
    assert_eq!(m["bearer_methods_supported"], serde_json::json!(["header"]));
    let unknown =
        reqwest::get(format!("{base}/oauth2/resource-metadata?resource=https://unknown.example")).await.unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn configured_routes_decide_when_the_gateway_forwards_the_path() {
    let routes = format!(
        "\n[[routes]]\npath_prefix = \"/crm/\"\naudience = \"{CRM}\"\nscopes = [\"crm:read\"]\n\n\
         [[routes]]\npath_prefix = \"/crm/admin/\"\naudience = \"{CRM}\"\nscopes = [\"crm:read\", \"crm:write\"]\n"
    );
    let broker = TestBroker::builder().extra_toml(&routes).start().await;
    let base = http_face(&broker).await;
    let token = issue(&broker, &k8s_assertion(600), CRM, "crm:read", false).await;
    let check = async |uri_header: &str, uri: &str| {
        reqwest::Client::new()
            .get(format!("{base}/forward-auth"))
            .header(uri_header, uri)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(check("x-original-uri", "/crm/accounts?page=2").await.status(), 200, "nginx's header");
    assert_eq!(check("x-forwarded-uri", "/crm/accounts").await.status(), 200, "Traefik's header");
    // The longest prefix decides: the admin route needs crm:write too.
    let r = check("x-original-uri", "/crm/admin/users").await;
    assert_eq!(r.status(), 403);
    assert!(challenge(&r).contains("scope=\"crm:read crm:write\""), "{}", challenge(&r));
    // A path no route covers is refused.
    assert_eq!(check("x-original-uri", "/billing/").await.status(), 403);

    // Routes are checked against the catalog when the config is.
    for (bad, expected) in [
        (format!("[[routes]]\npath_prefix = \"crm\"\naudience = \"{CRM}\"\nscopes = []\n"), "path_prefix"),
        (
            "[[routes]]\npath_prefix = \"/x/\"\naudience = \"https://unknown.example\"\nscopes = []\n".to_string(),
            "not in the catalog",
        ),
        (
            format!("[[routes]]\npath_prefix = \"/x/\"\naudience = \"{CRM}\"\nscopes = [\"other:read\"]\n"),
            "not offered",
        ),
    ] {
        let dir = TestBroker::builder().extra_toml(&format!("\n{bad}")).write_config();
        let errors = tessera::config::ConfigBuilder::load(&dir.path().join("tessera.toml"))
            .and_then(|b| b.build(dir.path()))
            .expect_err("the route must be refused");
        assert!(errors.to_string().contains(expected), "{errors}");
    }
}

#[tokio::test]
async fn resource_metadata_names_the_resources_public_url() {
    let mcp = "\n[[audiences]]\nid = \"https://search.internal\"\nscopes = [\"search:query\"]\nresource_url = \"https://tools.example/mcp\"\n";
    let broker = TestBroker::builder().extra_toml(mcp).start().await;
    let base = http_face(&broker).await;
    let m: Value = reqwest::get(format!("{base}/oauth2/resource-metadata?resource=https://search.internal"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["resource"], "https://tools.example/mcp");
    assert_eq!(m["scopes_supported"], serde_json::json!(["search:query"]));
    let bad = TestBroker::builder()
        .extra_toml(
            "\n[[audiences]]\nid = \"https://x.internal\"\nscopes = [\"a\"]\nresource_url = \"tools.example\"\n",
        )
        .write_config();
    let errors = tessera::config::ConfigBuilder::load(&bad.path().join("tessera.toml"))
        .and_then(|b| b.build(bad.path()))
        .expect_err("a resource_url that is not a URL");
    assert!(errors.to_string().contains("resource_url"), "{errors}");
}

/// An upstream that answers who nginx says is calling.
async fn upstream() -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                let sub =
                    head.lines().find_map(|l| l.strip_prefix("x-tessera-sub: ")).unwrap_or("nobody").trim().to_string();
                let body = format!("hello {sub}");
                let response =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

/// nginx, from the distribution's packages (`bash scripts/test` installs it), on a port of its own: one process
/// (`master_process off`), so stopping it leaves no worker behind.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn start(tessera_http: &str, upstream: u16) -> Nginx {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("nginx is not installed: run the suite with `bash scripts/test`, which installs it")
            });
        for _ in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let d = dir.path().display();
            let tessera = tessera_http.trim_start_matches("http://");
            let config = format!(
                r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location /crm/ {{
      auth_request /_tessera;
      auth_request_set $tessera_challenge $upstream_http_www_authenticate;
      auth_request_set $tessera_sub $upstream_http_x_tessera_sub;
      add_header WWW-Authenticate $tessera_challenge always;
      proxy_set_header X-Tessera-Sub $tessera_sub;
      proxy_pass http://127.0.0.1:{upstream};
    }}
    # RFC 9396: the configured [[routes]] decide from the original URI and method (docs/rar.md).
    location /cases/ {{
      auth_request /_tessera_routes;
      auth_request_set $tessera_challenge $upstream_http_www_authenticate;
      auth_request_set $tessera_sub $upstream_http_x_tessera_sub;
      add_header WWW-Authenticate $tessera_challenge always;
      proxy_set_header X-Tessera-Sub $tessera_sub;
      proxy_pass http://127.0.0.1:{upstream};
    }}
    location = /_tessera_routes {{
      internal;
      proxy_pass http://{tessera}/forward-auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-URI $request_uri;
    }}
    location = /_tessera {{
      internal;
      proxy_pass http://{tessera}/forward-auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Tessera-Audience "{CRM}";
      proxy_set_header X-Tessera-Scope "crm:read";
      # For DPoP: the original request, as nginx received it (set here, never taken from the caller).
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
    }}
  }}
}}
"#
            );
            std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
            let child = Command::new(binary)
                .args(["-e", "stderr", "-p"])
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            let mut nginx = Nginx { child, port, _dir: dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if nginx.child.try_wait().ok().flatten().is_some() {
                    break; // it could not have the port: another one
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return nginx;
                }
                assert!(Instant::now() < deadline, "nginx did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nginx did not start on any of 10 free ports");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_in_front_of_an_upstream() {
    let broker = TestBroker::start().await;
    let base = http_face(&broker).await;
    let upstream = upstream().await;
    let nginx = tokio::task::spawn_blocking(move || Nginx::start(&base, upstream)).await.unwrap();
    let url = format!("http://127.0.0.1:{}/crm/accounts", nginx.port);
    let get = async |token: &str| reqwest::Client::new().get(&url).bearer_auth(token).send().await.unwrap();

    // A task token, and a CRM token derived from it.
    let task = issue(&broker, &k8s_assertion(600), BROKER, "crm:read crm:write", false).await;
    let token = issue(&broker, &task, CRM, "crm:read", true).await;
    let ok = get(&token).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), format!("hello {ORCHESTRATOR}"), "nginx passes the subject upstream");

    // Without the route's scope: 403.
    let write_only = issue(&broker, &task, CRM, "crm:write", true).await;
    let r = get(&write_only).await;
    assert_eq!(r.status(), 403);
    assert!(challenge(&r).contains("insufficient_scope"), "{}", challenge(&r));

    // Revoking the ancestor (the task token) ends the CRM token at once: 401 with the challenge.
    revoke(&broker, Target::Token(task.clone())).await;
    let r = get(&token).await;
    assert_eq!(r.status(), 401);
    assert!(
        challenge(&r).contains("invalid_token") && challenge(&r).contains("resource_metadata="),
        "{}",
        challenge(&r)
    );

    // A fresh chain, revoked by task.
    let mut fresh = request(&k8s_assertion(600), CRM, "crm:read");
    fresh.task_id = "nginx-task".into();
    let token = broker.client().await.exchange_token(fresh).await.unwrap().into_inner().access_token;
    assert_eq!(get(&token).await.status(), 200);
    revoke(&broker, Target::TaskId("nginx-task".into())).await;
    assert_eq!(get(&token).await.status(), 401);
    drop(nginx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_verifies_dpop_proofs() {
    use crate::dpop::DpopKey;
    let broker = TestBroker::start().await;
    let base = http_face(&broker).await;
    let upstream = upstream().await;
    let nginx = tokio::task::spawn_blocking(move || Nginx::start(&base, upstream)).await.unwrap();
    let htu = format!("http://127.0.0.1:{}/crm/accounts", nginx.port);
    let url = format!("{htu}?page=2");
    let key = DpopKey::ec();
    let token = crate::dpop::bound_token(&broker, &key).await;
    let send = async |method: reqwest::Method, authorization: String, proof: &str| {
        reqwest::Client::new()
            .request(method, &url)
            .header("authorization", authorization)
            .header("dpop", proof)
            .send()
            .await
            .unwrap()
    };

    let proof = key.proof("GET", &htu, Some(&token));
    let ok = send(reqwest::Method::GET, format!("DPoP {token}"), &proof).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), format!("hello {ORCHESTRATOR}"));
    // The same proof again, a proof for another method, a proof by another key, a Bearer presentation: 401.
    let refusals = [
        ("a replayed proof", reqwest::Method::GET, format!("DPoP {token}"), proof.clone()),
        ("another method", reqwest::Method::DELETE, format!("DPoP {token}"), key.proof("GET", &htu, Some(&token))),
        ("another key", reqwest::Method::GET, format!("DPoP {token}"), DpopKey::ed().proof("GET", &htu, Some(&token))),
        ("as Bearer", reqwest::Method::GET, format!("Bearer {token}"), key.proof("GET", &htu, Some(&token))),
    ];
    for (what, method, authorization, proof) in refusals {
        let r = send(method, authorization, &proof).await;
        assert_eq!(r.status(), 401, "{what}");
        assert!(
            challenge(&r).contains("DPoP ") && challenge(&r).contains("invalid_dpop_proof"),
            "{what}: {}",
            challenge(&r)
        );
    }
    drop(nginx);
}

/// A support agent's token for case 1234 through a real nginx: `/cases/1234` passes, `/cases/5678` and a write
/// to `/cases/1234` are refused 403 `insufficient_scope` (the route's RFC 9396 requirement, docs/rar.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_matches_authorization_details_against_the_path() {
    let broker = crate::rar::rar_broker().await;
    let base = http_face(&broker).await;
    let upstream = upstream().await;
    let nginx = tokio::task::spawn_blocking(move || Nginx::start(&base, upstream)).await.unwrap();
    let mut r = request(&k8s_assertion(600), CRM, "crm:read");
    r.authorization_details = r#"[{"type":"crm_case","actions":["read"],"identifier":"1234"}]"#.into();
    let token = broker.client().await.exchange_token(r).await.unwrap().into_inner().access_token;
    let send = async |method: reqwest::Method, path: &str| {
        let url = format!("http://127.0.0.1:{}{path}", nginx.port);
        reqwest::Client::new().request(method, url).bearer_auth(&token).send().await.unwrap()
    };
    let ok = send(reqwest::Method::GET, "/cases/1234").await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), format!("hello {ORCHESTRATOR}"));
    for (method, path) in [(reqwest::Method::GET, "/cases/5678"), (reqwest::Method::POST, "/cases/1234")] {
        let r = send(method.clone(), path).await;
        assert_eq!(r.status(), 403, "{method} {path}");
        assert!(challenge(&r).contains("insufficient_scope"), "{}", challenge(&r));
    }
}
