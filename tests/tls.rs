//! TLS on the TCP API (rustls with ring): a client trusting the CA connects; one that
//! does not, or speaks plaintext, is refused; in client-certificate mode only a client
//! presenting a certificate from the configured CA gets through.

mod support;

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use support::{Auth, TestServer, proto};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    stranger_ca: String,
    stranger_client: (String, String),
}

fn authority() -> (CertificateParams, KeyPair, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

fn leaf(names: &[&str], ca: &CertificateParams, ca_key: &KeyPair) -> (String, String) {
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let issuer = Issuer::from_params(ca, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let (ca, ca_key, ca_pem) = authority();
    let (stranger, stranger_key, stranger_pem) = authority();
    Pki {
        server: leaf(&["localhost"], &ca, &ca_key),
        client: leaf(&["app.example.com"], &ca, &ca_key),
        stranger_client: leaf(&["intruder.example.com"], &stranger, &stranger_key),
        ca: ca_pem,
        stranger_ca: stranger_pem,
    }
}

async fn list(addr: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    proto::accounts_client::AccountsClient::with_interceptor(channel, Auth::admin())
        .list_accounts(proto::ListAccountsRequest::default())
        .await
        .map(drop)
        .map_err(|status| format!("call: {status}"))
}

fn trusting(ca: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost")
}

fn write(dir: &Path, name: &str, pem: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_client_certificates_on_the_tcp_api() {
    let dir = tempfile::tempdir().unwrap();
    let key = support::new_key();
    let pki = pki();
    let cert_file = write(dir.path(), "server.pem", &pki.server.0);
    let key_file = write(dir.path(), "server.key", &pki.server.1);
    let ca_file = write(dir.path(), "ca.pem", &pki.ca);

    let mut config = support::config(&dir.path().join("data"), &key);
    config.tls_cert_file = Some(cert_file.clone());
    config.tls_key_file = Some(key_file.clone());
    let server = TestServer::start_with(config).await;
    let addr = server.addr.unwrap();
    list(addr, Some(trusting(&pki.ca)))
        .await
        .expect("a client trusting the CA");
    let untrusting = list(addr, Some(trusting(&pki.stranger_ca))).await;
    assert!(
        untrusting.is_err(),
        "a client that does not trust the CA is refused"
    );
    assert!(list(addr, None).await.is_err(), "plaintext is refused");
    server.stop().await;

    // Client-certificate mode.
    let mut config = support::config(&dir.path().join("data"), &key);
    config.tls_cert_file = Some(cert_file);
    config.tls_key_file = Some(key_file);
    config.tls_client_ca_file = Some(ca_file);
    let server = TestServer::start_with(config).await;
    let addr = server.addr.unwrap();
    let anonymous = list(addr, Some(trusting(&pki.ca))).await;
    assert!(anonymous.is_err(), "no client certificate: refused");
    let stranger = trusting(&pki.ca).identity(Identity::from_pem(
        &pki.stranger_client.0,
        &pki.stranger_client.1,
    ));
    assert!(
        list(addr, Some(stranger)).await.is_err(),
        "a foreign client certificate: refused"
    );
    let known = trusting(&pki.ca).identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    list(addr, Some(known))
        .await
        .expect("the CA's client gets through");
    server.stop().await;
}

#[test]
fn half_a_tls_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), &support::new_key());
    config.tls_cert_file = Some(dir.path().join("server.pem"));
    let error = config.resolve().unwrap_err().to_string();
    assert!(
        error.contains("tls_cert_file and tls_key_file together"),
        "{error}"
    );
}
