//! TLS on both faces and mTLS client identities, with a test PKI made by rcgen: the server certificate and
//! key come from files and a rotated certificate is served without a restart; a client certificate whose URI
//! SAN (a SPIFFE ID) or DNS SAN is mapped to a client is that client, without a secret; an unmapped or foreign
//! certificate is not; `client_auth = "required"` refuses connections without one. Python grpcio and
//! `requests` (clients nobody here wrote) speak to both faces over TLS and mTLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use serde_json::Value;
use tessera::net::tls::{ClientAuth, TlsConfig};

use crate::support::process::Serving;
use crate::support::*;

const AGENT_SPIFFE: &str = "spiffe://tessera.test/ns/agents/sa/orchestrator";
const GATEWAY_DNS: &str = "gateway.tessera.test";

/// A test certificate authority.
pub(crate) struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) ca_pem: String,
}

/// A certificate and its key, as PEM.
pub(crate) struct Leaf {
    cert: String,
    key: String,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca = params.self_signed(&key).unwrap();
        Pki { ca_pem: ca.pem(), issuer: Issuer::new(params, key) }
    }

    fn leaf(&self, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert: cert.pem(), key: key.serialize_pem() }
    }

    pub(crate) fn server(&self) -> Leaf {
        let sans = vec![SanType::DnsName("localhost".try_into().unwrap()), SanType::IpAddress([127, 0, 0, 1].into())];
        self.leaf(sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client_uri(&self, uri: &str) -> Leaf {
        self.leaf(vec![SanType::URI(uri.try_into().unwrap())], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn client_dns(&self, name: &str) -> Leaf {
        self.leaf(vec![SanType::DnsName(name.try_into().unwrap())], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Writes `leaf` as `NAME.crt` and `NAME.key` in `dir` (replacing them by rename, as a Secret volume's
/// symlink swap does: a reader never sees half a file).
pub(crate) fn write_leaf(dir: &Path, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    for (path, text) in [(&cert, &leaf.cert), (&key, &leaf.key)] {
        let staged = path.with_extension("new");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, path).unwrap();
    }
    (cert, key)
}

/// The TOML of the clients these tests add: one known by its SPIFFE ID, one by its DNS name.
fn mtls_clients() -> String {
    format!(
        r#"
[[clients]]
id = "agent-mtls"
tls_identities = ["{AGENT_SPIFFE}"]
rpcs = ["exchange"]

[[clients]]
id = "gateway-mtls"
tls_identities = ["{GATEWAY_DNS}"]
rpcs = ["introspect"]
"#
    )
}

/// Both faces of one broker over TLS, in process: (gRPC address, HTTP address, config dir).
async fn tls_faces(tls: TlsConfig, builder: TestBrokerBuilder) -> (String, String, tempfile::TempDir) {
    // The same files in the broker's config, as `tessera serve` would have them (mTLS clients need them).
    let mut toml = format!("[tls]\ncert_file = {:?}\nkey_file = {:?}\n", tls.cert_file, tls.key_file);
    if let Some(ca) = &tls.client_ca_file {
        toml.push_str(&format!("client_ca_file = {ca:?}\n"));
    }
    let (broker, settings, dir) = builder.extra_toml(&toml).build().await;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap().to_string(), http.local_addr().unwrap().to_string());
    tokio::spawn(tessera::http::serve_with_tls(
        http,
        Arc::clone(&broker),
        None,
        Some(tls.clone()),
        std::future::pending(),
    ));
    tokio::spawn(tessera::serve::run_with_tls(grpc, broker, settings, Some(tls), std::future::pending()));
    (grpc_addr, http_addr, dir)
}

fn tls_config(dir: &Path, pki: &Pki, client_auth: Option<ClientAuth>) -> TlsConfig {
    let (cert_file, key_file) = write_leaf(dir, "server", &pki.server());
    let client_ca_file = client_auth.map(|_| {
        let path = dir.join("clients-ca.pem");
        std::fs::write(&path, &pki.ca_pem).unwrap();
        path
    });
    TlsConfig {
        cert_file,
        key_file,
        client_ca_file,
        client_auth: client_auth.unwrap_or(ClientAuth::Optional),
        reload_interval: Duration::from_secs(1),
    }
}

/// An HTTPS client trusting `ca`, presenting `identity` when given.
fn https(ca: &str, identity: Option<&Leaf>) -> reqwest::Client {
    let mut builder =
        reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()]);
    if let Some(leaf) = identity {
        builder =
            builder.identity(reqwest::Identity::from_pem(format!("{}{}", leaf.cert, leaf.key).as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// POSTs a token exchange form to `https://localhost:PORT/oauth2/token`; (status, JSON body).
async fn exchange_over(client: &reqwest::Client, http: &str, task: &str, basic: Option<&str>) -> (u16, Value) {
    let port = http.rsplit(':').next().unwrap();
    let subject = k8s_assertion(600);
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", subject.as_str()),
            ("subject_token_type", JWT),
            ("audience", CRM),
            ("scope", "crm:read"),
            ("task_id", task),
        ])
        .finish();
    let mut request = client
        .post(format!("https://localhost:{port}/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(b) = basic {
        request = request.header("authorization", b);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn client_id_of(body: &Value) -> String {
    decode(body["access_token"].as_str().unwrap_or_else(|| panic!("no token: {body}"))).client_id
}

/// The leaf certificate the server at `addr` presents now (DER), and whether the handshake worked.
async fn served_leaf(addr: &str, ca: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    tessera::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake with the broker");
    tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref().to_vec()
}

#[tokio::test]
async fn both_faces_serve_tls_and_a_rotated_certificate_without_a_restart() {
    let pki = Pki::new("tessera test CA");
    let files = tempfile::tempdir().unwrap();
    let tls = tls_config(files.path(), &pki, None);
    let (grpc, http, _dir) = tls_faces(tls, TestBroker::builder()).await;

    // HTTP over TLS: the loopback client exchanges; plaintext to the same port gets no answer.
    let (status, body) = exchange_over(&https(&pki.ca_pem, None), &http, "tls-1", None).await;
    assert_eq!(status, 200, "{body}");
    let plain = reqwest::Client::new().get(format!("http://{http}/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "plaintext must not be served");

    // gRPC over TLS (h2 by ALPN): health answers.
    let channel =
        tonic::transport::Channel::from_shared(format!("https://localhost:{}", grpc.rsplit(':').next().unwrap()))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .expect("gRPC over TLS");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health over TLS");

    // cert-manager rotates the certificate on disk: new connections get the new one, on both faces.
    let first = served_leaf(&grpc, &pki.ca_pem).await;
    let rotated = pki.server();
    write_leaf(files.path(), "server", &rotated);
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in [&grpc, &http] {
        loop {
            let served = served_leaf(addr, &pki.ca_pem).await;
            if served == der_of(&rotated.cert) {
                break;
            }
            assert_eq!(served, first, "{addr} served a certificate that is neither the old nor the new one");
            assert!(Instant::now() < deadline, "{addr} still serves the old certificate after 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A broken file (a key that is not the certificate's) is not loaded: the rotated certificate stays.
    std::fs::write(files.path().join("server.key"), pki.server().key).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(served_leaf(&grpc, &pki.ca_pem).await, der_of(&rotated.cert));
}

#[tokio::test]
async fn a_mapped_client_certificate_is_its_client_without_a_secret() {
    let pki = Pki::new("tessera clients CA");
    let files = tempfile::tempdir().unwrap();
    let tls = tls_config(files.path(), &pki, Some(ClientAuth::Optional));
    let builder = TestBroker::builder().extra_toml(&mtls_clients()).without_loopback_client();
    let (grpc, http, _dir) = tls_faces(tls, builder).await;

    let agent = pki.client_uri(AGENT_SPIFFE);
    let (status, body) = exchange_over(&https(&pki.ca_pem, Some(&agent)), &http, "mtls-1", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(client_id_of(&body), "agent-mtls", "the SPIFFE ID in the certificate names the client");

    // Without a certificate (and no other credentials): refused before any work.
    let (status, body) = exchange_over(&https(&pki.ca_pem, None), &http, "mtls-2", None).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");

    // A certificate from the same CA whose identity no client has.
    let stranger = pki.client_uri("spiffe://tessera.test/ns/agents/sa/stranger");
    let (status, body) = exchange_over(&https(&pki.ca_pem, Some(&stranger)), &http, "mtls-3", None).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");

    // A DNS-SAN identity is its client too: the gateway may introspect, not exchange.
    let gateway = pki.client_dns(GATEWAY_DNS);
    let (status, body) = exchange_over(&https(&pki.ca_pem, Some(&gateway)), &http, "mtls-4", None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unauthorized_client")), "{body}");

    // A certificate naming one client and a secret naming another: refused, whichever is right.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("orchestrator:{CLIENT_SECRET}"))
    );
    let (status, body) = exchange_over(&https(&pki.ca_pem, Some(&agent)), &http, "mtls-5", Some(&basic)).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");

    // A certificate from another CA, however named, fails the handshake.
    let foreign = Pki::new("someone else's CA").client_uri(AGENT_SPIFFE);
    let port = http.rsplit(':').next().unwrap();
    let refused = https(&pki.ca_pem, Some(&foreign)).get(format!("https://localhost:{port}/healthz")).send().await;
    assert!(refused.is_err(), "a certificate from another CA must not be accepted");

    // gRPC: the same identity, through tonic's TLS client.
    let channel =
        tonic::transport::Channel::from_shared(format!("https://localhost:{}", grpc.rsplit(':').next().unwrap()))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
                    .identity(tonic::transport::Identity::from_pem(&agent.cert, &agent.key))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .expect("gRPC over mTLS");
    let mut client = tessera::grpc::pb::token_broker_client::TokenBrokerClient::new(channel);
    let issued = client.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.expect("mTLS exchange");
    assert_eq!(decode(&issued.into_inner().access_token).client_id, "agent-mtls");
}

#[tokio::test]
async fn python_grpcio_and_requests_speak_tls_and_mtls() {
    let python =
        std::env::var("TESSERA_TEST_PYTHON").expect("TESSERA_TEST_PYTHON: run the suite with `bash scripts/test`");
    let stubs =
        std::env::var("TESSERA_TEST_PY_STUBS").expect("TESSERA_TEST_PY_STUBS: run the suite with `bash scripts/test`");
    let pki = Pki::new("tessera interop CA");
    let files = tempfile::tempdir().unwrap();
    let tls = tls_config(files.path(), &pki, Some(ClientAuth::Optional));
    let builder = TestBroker::builder().extra_toml(&mtls_clients()).without_loopback_client();
    let (grpc, http, _dir) = tls_faces(tls, builder).await;
    let (cert, key) = write_leaf(files.path(), "agent", &pki.client_uri(AGENT_SPIFFE));
    let ca = files.path().join("clients-ca.pem");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/tls_interop.py");
    let assertion = k8s_assertion(600);
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = std::process::Command::new(python)
            .arg(script)
            .args(["--grpc", &grpc, "--http", &http, "--stubs", &stubs])
            .arg("--ca")
            .arg(ca)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the Python TLS interop client");
        child.stdin.take().unwrap().write_all(assertion.as_bytes()).unwrap();
        child.wait_with_output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let out: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(out["grpc_mtls"]["client_id"], "agent-mtls", "{out}");
    assert_eq!(out["grpc_no_cert"]["error"], "UNAUTHENTICATED", "{out}");
    assert_eq!(out["http_mtls"]["status"], 200, "{out}");
    assert_eq!(out["http_mtls"]["client_id"], "agent-mtls", "{out}");
    assert_eq!(
        (&out["http_no_cert"]["status"], &out["http_no_cert"]["error"]),
        (&Value::from(401), &Value::from("invalid_client")),
        "{out}"
    );
}

#[tokio::test]
async fn required_client_auth_refuses_connections_without_a_certificate() {
    let pki = Pki::new("tessera required CA");
    let files = tempfile::tempdir().unwrap();
    let tls = tls_config(files.path(), &pki, Some(ClientAuth::Required));
    let builder = TestBroker::builder().extra_toml(&mtls_clients()).without_loopback_client();
    let (_grpc, http, _dir) = tls_faces(tls, builder).await;
    let port = http.rsplit(':').next().unwrap();
    let refused = https(&pki.ca_pem, None).get(format!("https://localhost:{port}/healthz")).send().await;
    assert!(refused.is_err(), "without a certificate the handshake must fail");
    let agent = pki.client_uri(AGENT_SPIFFE);
    let (status, body) = exchange_over(&https(&pki.ca_pem, Some(&agent)), &http, "required-1", None).await;
    assert_eq!((status, client_id_of(&body)), (200, "agent-mtls".to_string()));
}

#[test]
fn tessera_serve_reads_tls_from_its_config() {
    let pki = Pki::new("tessera serve CA");
    let dir = TestBroker::builder()
        .extra_toml(&format!(
            "{}\n[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\nclient_ca_file = \"ca.pem\"\n",
            mtls_clients()
        ))
        .write_config();
    write_leaf(dir.path(), "server", &pki.server());
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let config = dir.path().join("tessera.toml");
    let server = Serving::start(&["--config", config.to_str().unwrap()], |c| {
        c.env("TESSERA__LOG__LEVEL", "info").env_remove("RUST_LOG");
    });
    assert!(server.logs().contains("tls=true"), "{}", server.logs());
    // curl, with the CA and the agent's certificate: the HTTP face answers over mTLS.
    let (cert, key) = write_leaf(dir.path(), "agent", &pki.client_uri(AGENT_SPIFFE));
    let port = server.http.rsplit(':').next().unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(dir.path().join("ca.pem"))
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(format!("https://localhost:{port}/healthz"))
        .output()
        .expect("curl (installed by scripts/test)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");

    // The CLI's client commands over mTLS: the certificate is the client, no secret.
    let grpc_port = server.grpc.rsplit(':').next().unwrap().to_string();
    let exchange = |with_cert: bool| {
        use std::io::Write as _;
        let mut command = crate::support::process::tessera();
        command
            .args(["exchange", "--addr", &format!("https://localhost:{grpc_port}"), "--ca-file"])
            .arg(dir.path().join("ca.pem"))
            .args(["--subject-token", "-", "--audience", CRM, "--scope", "crm:read", "--task-id", "cli-mtls"]);
        if with_cert {
            command.arg("--cert-file").arg(&cert).arg("--key-file").arg(&key);
        }
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(k8s_assertion(600).as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = exchange(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(client_id_of(&body), "agent-mtls");
    // Without the certificate, over TLS only: the loopback client of this config stands in.
    let out = exchange(false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(client_id_of(&serde_json::from_slice(&out.stdout).unwrap()), "local");

    // A config whose TLS files are wrong does not start, and says which file.
    std::fs::write(dir.path().join("server.key"), "not a key").unwrap();
    let check = crate::support::process::tessera().args(["config", "check"]).arg(&config).output().unwrap();
    assert!(!check.status.success());
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains("server.key") && !stderr.contains("not a key"), "{stderr}");
}

/// RFC 8705: a token for an audience that requires mTLS binding carries `cnf["x5t#S256"]` of the certificate
/// it was issued over; introspection shows it; forward-auth lets it through only when the gateway vouches for
/// that same certificate (RFC 9440 `Client-Cert`); a re-exchange needs the same certificate.
#[tokio::test]
async fn certificate_bound_tokens_are_useless_over_another_certificate() {
    use base64::Engine as _;
    const LEDGER: &str = "https://ledger.example";
    let pki = Pki::new("tessera binding CA");
    let files = tempfile::tempdir().unwrap();
    let tls = tls_config(files.path(), &pki, Some(ClientAuth::Optional));
    let other_agent = "spiffe://tessera.test/ns/agents/sa/other";
    let extra = format!(
        r#"{clients}
[[clients]]
id = "other-mtls"
tls_identities = ["{other_agent}"]
rpcs = ["exchange"]

[[audiences]]
id = "{LEDGER}"
scopes = ["ledger:read"]
max_ttl = 120
sender_constraint = "mtls"
introspect_clients = ["gateway"]
"#,
        clients = mtls_clients()
    );
    let policy = std::fs::read_to_string(fixtures().join("policy.cedar")).unwrap()
        + "\npermit (principal, action == Tessera::Action::\"exchange\", resource == Tessera::Audience::\"https://ledger.example\")\nwhen { context.scope == \"ledger:read\" };\n";
    let builder = TestBroker::builder().extra_toml(&extra).policy(&policy).without_loopback_client();
    let (_grpc, http, _dir) = tls_faces(tls, builder).await;
    let port = http.rsplit(':').next().unwrap().to_string();
    let agent = pki.client_uri(AGENT_SPIFFE);
    let other = pki.client_uri(other_agent);
    let secret = |id: &str| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{CLIENT_SECRET}")))
    };

    let post = |client: reqwest::Client, form: Vec<(&'static str, String)>, auth: Option<String>| {
        let url = format!("https://localhost:{port}/oauth2/token");
        async move {
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
                .finish();
            let mut request = client.post(url).header("content-type", "application/x-www-form-urlencoded").body(body);
            if let Some(a) = auth {
                request = request.header("authorization", a);
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let ledger_form = |subject: String, task: &str| {
        let subject_type = if task.is_empty() { ACCESS_TOKEN } else { JWT };
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE.to_string()),
            ("subject_token", subject),
            ("subject_token_type", subject_type.to_string()),
            ("audience", LEDGER.to_string()),
            ("scope", "ledger:read".to_string()),
        ];
        if !task.is_empty() {
            form.push(("task_id", task.to_string()));
        }
        form
    };

    // Over mTLS: bound to the agent's certificate.
    let (status, body) = post(https(&pki.ca_pem, Some(&agent)), ledger_form(k8s_assertion(600), "bound-1"), None).await;
    assert_eq!(status, 200, "{body}");
    let bound = body["access_token"].as_str().unwrap().to_string();
    let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der_of(&agent.cert)));
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(bound.split('.').nth(1).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["cnf"]["x5t#S256"], expected.as_str(), "{claims}");

    // Without a certificate (a secret over TLS): this audience refuses, nothing issued.
    let (status, body) =
        post(https(&pki.ca_pem, None), ledger_form(k8s_assertion(600), "bound-2"), Some(secret("orchestrator"))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");
    assert!(body.get("access_token").is_none());

    // Re-exchanged over another certificate: refused; over the same one: still bound to it.
    let (status, body) = post(https(&pki.ca_pem, Some(&other)), ledger_form(bound.clone(), ""), None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    let (status, body) = post(https(&pki.ca_pem, Some(&agent)), ledger_form(bound.clone(), ""), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(decode(body["access_token"].as_str().unwrap()).cnf.and_then(|c| c.x5t_s256), Some(expected.clone()));

    // Introspection shows the binding.
    let introspection = https(&pki.ca_pem, None)
        .post(format!("https://localhost:{port}/oauth2/introspect"))
        .header("authorization", secret("gateway"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={bound}"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(introspection["cnf"]["x5t#S256"], expected.as_str(), "{introspection}");

    // Forward-auth: the gateway vouches for the caller's certificate (RFC 9440 Client-Cert).
    let forward = |cert: Option<String>| {
        let request = https(&pki.ca_pem, None)
            .get(format!("https://localhost:{port}/forward-auth"))
            .header("x-tessera-client-authorization", secret("gateway"))
            .header("x-tessera-audience", LEDGER)
            .header("x-tessera-scope", "ledger:read")
            .header("authorization", format!("Bearer {bound}"));
        let request = match cert {
            Some(c) => request.header("client-cert", c),
            None => request,
        };
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let client_cert =
        |leaf: &Leaf| format!(":{}:", base64::engine::general_purpose::STANDARD.encode(der_of(&leaf.cert)));
    assert_eq!(forward(Some(client_cert(&agent))).await, 200, "the certificate the token is bound to");
    assert_eq!(forward(Some(client_cert(&other))).await, 401, "an mTLS-bound token over another certificate");
    assert_eq!(forward(None).await, 401, "an mTLS-bound token without a certificate");
    assert_eq!(forward(Some("not base64".into())).await, 500, "a gateway that sends a malformed Client-Cert");
}

/// The Python SDK's `MutualTls` against the HTTP face over TLS: the client certificate is the client, no
/// secret; without it the same exchange is `invalid_client`.
#[tokio::test]
async fn the_python_sdk_authenticates_with_its_client_certificate() {
    let python = crate::sdk::python();
    let pki = Pki::new("tessera sdk CA");
    let files = tempfile::tempdir().unwrap();
    let tls = tls_config(files.path(), &pki, Some(ClientAuth::Optional));
    let builder = TestBroker::builder().extra_toml(&mtls_clients()).without_loopback_client();
    let (_grpc, http, _dir) = tls_faces(tls, builder).await;
    let (cert, key) = write_leaf(files.path(), "agent", &pki.client_uri(AGENT_SPIFFE));
    let ca = files.path().join("clients-ca.pem");
    let url = format!("https://localhost:{}", http.rsplit(':').next().unwrap());
    let script = r#"
import json, sys
from tessera_client import Backoff, Broker, MutualTls, OAuthError
url, cert, key, ca, subject = sys.argv[1:6]
token = Broker(url, MutualTls(cert, key, ca_file=ca), subject_token=subject).exchange(
    "https://crm.example", "crm:read", task_id="sdk-mtls")
try:
    Broker(url, verify=ca, subject_token=subject, backoff=Backoff(attempts=1)).exchange(
        "https://crm.example", "crm:read", task_id="sdk-mtls")
    refused = None
except OAuthError as e:
    refused = e.error
print(json.dumps({"token": token.access_token, "without_certificate": refused}))
"#;
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", script, &url])
            .args([&cert, &key, &ca])
            .arg(k8s_assertion(600))
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let out: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(decode(out["token"].as_str().unwrap()).client_id, "agent-mtls", "{out}");
    assert_eq!(out["without_certificate"], "invalid_client", "{out}");
}
