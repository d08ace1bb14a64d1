//! The tunnel end to end with the real daemon: a signed WhatsApp-style POST to the relay's public
//! HTTPS listener travels over the box's outbound tunnel to the daemon's webhook, is answered
//! 200, and the reply reaches the Graph API simulator. MagicLine's webhook calls travel the same
//! way. Paths other than the webhooks never reach the box.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use frontdesk::sandbox::whatsapp::{self as sim, PayloadBuilder, SIM_APP_SECRET};
use frontdesk::tunnel::{start_relay, RelayConfig, TunnelToken};
use frontdesk::whatsapp::signature;
use frontdesk_tests::harness::{Daemon, DaemonSpec};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const BOX_HOST: &str = "studio.test";
const MAGICLINE_KEY: &str = "magicline-partner-key";

fn pki(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).expect("self-signed CA");
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec!["relay.test".into(), BOX_HOST.into()])
        .expect("leaf parameters")
        .signed_by(&key, &ca, &ca_key)
        .expect("leaf certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
    std::fs::write(dir.join("cert.pem"), leaf.pem()).expect("write cert.pem");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write key.pem");
}

async fn https_post(
    addr: std::net::SocketAddr,
    ca: &Path,
    path: &str,
    body: Bytes,
    sig: &str,
) -> u16 {
    https_post_with(addr, ca, path, body, (signature::HEADER, sig)).await
}

async fn https_post_with(
    addr: std::net::SocketAddr,
    ca: &Path,
    path: &str,
    body: Bytes,
    header: (&str, &str),
) -> u16 {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read the CA file") {
        roots
            .add(c.expect("CA certificate"))
            .expect("add the CA to the roots");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the relay");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(BOX_HOST).expect("server name"), tcp)
        .await
        .expect("TLS handshake with the relay");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(conn);
    let req = Request::post(path)
        .header("host", BOX_HOST)
        .header("content-type", "application/json")
        .header(header.0, header.1)
        .body(Full::new(body))
        .expect("request");
    let resp = send.send_request(req).await.expect("send the request");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_through_relay_and_tunnel_reaches_the_daemon() {
    let certs = tempfile::tempdir().unwrap();
    pki(certs.path());
    let token = TunnelToken::generate();
    let relay_cfg = RelayConfig::parse(
        &format!(
            r#"public_listen = "127.0.0.1:0"
tunnel_listen = "127.0.0.1:0"
cert_file = "{d}/cert.pem"
key_file = "{d}/key.pem"
[[box]]
host = "{BOX_HOST}"
token_sha256 = "{hash}"
"#,
            d = certs.path().display(),
            hash = token.sha256_hex()
        ),
        Path::new("relay.toml"),
    )
    .unwrap();
    let relay = start_relay(relay_cfg).await.unwrap();
    let mut changes = relay.changes();

    let graph = sim::start().await;
    let magicline =
        frontdesk::sandbox::magicline::start(frontdesk::sandbox::magicline::SimConfig::default())
            .await;
    let spec = box_spec(
        &graph,
        &magicline,
        relay.tunnel_addr(),
        certs.path(),
        &token,
    );
    let daemon = Daemon::start(spec);
    tokio::time::timeout(Duration::from_secs(60), async {
        while !relay.connected_boxes().contains(&BOX_HOST.to_string()) {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("the box did not connect to the relay");

    let ts = jiff::Timestamp::now().as_second();
    let body = PayloadBuilder::default()
        .text_message(
            "491760000001",
            "wamid.tunnel.1",
            "Hallo über den Tunnel",
            ts,
        )
        .to_string();
    let sig = signature::sign(SIM_APP_SECRET.as_bytes(), body.as_bytes());
    let ca = certs.path().join("ca.pem");
    assert_eq!(
        https_post(
            relay.public_addr(),
            &ca,
            "/webhook",
            Bytes::from(body.clone()),
            &sig
        )
        .await,
        200
    );
    let sent = graph
        .wait_for_sent(1, Duration::from_secs(60))
        .await
        .expect("no reply after a webhook through the tunnel");
    assert_eq!(sent[0].recipient, "491760000001");
    // A signature of the right form but the wrong value passes the relay and is refused by the
    // daemon behind the tunnel; a malformed one is refused by the relay; admin-like paths never
    // pass.
    let wrong = format!("sha256={}", "0".repeat(64));
    assert_eq!(
        https_post(
            relay.public_addr(),
            &ca,
            "/webhook",
            Bytes::from(body.clone()),
            &wrong
        )
        .await,
        401
    );
    assert_eq!(
        https_post(
            relay.public_addr(),
            &ca,
            "/webhook",
            Bytes::from(body),
            "sha256=00"
        )
        .await,
        401
    );
    assert_eq!(
        https_post(relay.public_addr(), &ca, "/metrics", Bytes::new(), "").await,
        404
    );

    magicline_through_the_tunnel(relay.public_addr(), &ca, &daemon).await;
    relay.shutdown().await;
}

/// MagicLine's call with its key reaches the daemon (an event about no booking of frontdesk's:
/// answered and ignored); a wrong key passes the relay and is refused behind it.
async fn magicline_through_the_tunnel(addr: std::net::SocketAddr, ca: &Path, daemon: &Daemon) {
    let event = frontdesk::sandbox::magicline::SimEvent {
        uuid: "0f8e2a4c-1d2b-4c3a-9e8f-7a6b5c4d3e2f".into(),
        entity_id: 501,
        event_type: "CUSTOMER_CHECKIN",
        timestamp_ms: jiff::Timestamp::now().as_millisecond(),
        content: serde_json::json!({}),
    };
    let event = Bytes::from(event.body().to_string());
    let post_magicline = |key: &'static str| {
        https_post_with(
            addr,
            ca,
            "/webhook/magicline",
            event.clone(),
            ("x-api-key", key),
        )
    };
    assert_eq!(post_magicline(MAGICLINE_KEY).await, 200);
    assert_eq!(post_magicline("not-the-key").await, 401);
    let (_, metrics) = tokio::task::spawn_blocking({
        let addr = daemon.metrics;
        move || frontdesk_tests::harness::http_get(addr, "/metrics")
    })
    .await
    .expect("the metrics request task");
    for line in [
        "frontdesk_magicline_events_total{outcome=\"ignored\"} 1",
        "frontdesk_magicline_events_total{outcome=\"api_key_wrong\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing");
    }
}

/// The box: the tunnel to the relay, and booking in MagicLine with its webhook key.
fn box_spec(
    graph: &sim::GraphSim,
    magicline: &frontdesk::sandbox::magicline::MagiclineSim,
    relay: std::net::SocketAddr,
    certs: &Path,
    token: &TunnelToken,
) -> DaemonSpec {
    let mut spec = DaemonSpec::with_graph(graph.base_url());
    spec.extra_toml = format!(
        "[tunnel]\nrelay = \"{}\"\nserver_name = \"relay.test\"\nca_file = \"{}\"\n\
         [magicline]\nbase_url = \"{}\"\n",
        relay,
        certs.join("ca.pem").display(),
        magicline.base_url()
    );
    spec.extra_credentials = vec![
        ("tunnel-token".into(), token.expose().to_string()),
        ("magicline-api-key".into(), magicline.api_key()),
        ("magicline-webhook-key".into(), MAGICLINE_KEY.into()),
    ];
    spec
}
