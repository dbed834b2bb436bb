//! Authentication, encryption at rest, tamper detection, key checks and redaction.

mod support;

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use credvault::{
    accounts::{AccountSecrets, NewAccount, SessionInput},
    clock::SystemClock,
    config::Config,
    crypto::SecretString,
    store::{Store, StoreExt, Swap, Tree},
    vault::OpenError,
};
use support::{ADMIN_TOKEN, TestServer, pixverse, proto, upstream_jwt};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const PASSWORD: &str = "PLAINTEXT-PASSWORD-7f3a9c";
const TOKEN_FILLER: &str = "PLAINTEXT-TOKEN-SIGNATURE-51be";
const API_KEY: &str = "PLAINTEXT-API-KEY-0c2d44";

fn get(email: &str) -> proto::GetAccountRequest {
    proto::GetAccountRequest {
        provider: "pixverse".into(),
        email: email.into(),
    }
}

#[tokio::test]
async fn every_call_but_health_needs_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &support::new_key()).await;
    let wrong = format!("{ADMIN_TOKEN}x");
    for token in [
        None,
        Some(""),
        Some(wrong.as_str()),
        Some("Basic dXNlcjpwYXNz"),
    ] {
        let mut client = server.accounts_as(token).await;
        let error = client.get_account(get("a@example.com")).await.unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated, "{token:?}");
        // (accounts_as sends each as a bearer token, "Bearer Basic …" included.)
        assert_eq!(
            error.message(),
            "JWT is missing or invalid, check Authorization header"
        );
        let error = client
            .create_account(pixverse("a@example.com", PASSWORD))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated);
    }
    // Health answers without a token: kubelet probes carry none.
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "credvault.v1.Accounts"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    // Nothing was created by the refused calls.
    let mut admin = server.accounts().await;
    assert_eq!(
        admin
            .get_account(get("a@example.com"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    server.stop().await;
}

#[tokio::test]
async fn the_unix_socket_serves_the_same_api() {
    use hyper_util::rt::TokioIo;
    use tonic::transport::{Endpoint, Uri};

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("credvault.sock");
    let mut config = support::config(&dir.path().join("data"), &support::new_key());
    config.listen = "none".into();
    config.socket = Some(socket.clone());
    let server = TestServer::start_with(config).await;
    assert_eq!(server.addr, None);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o660
    );

    let path = socket.clone();
    let channel = Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();
    let mut client = proto::accounts_client::AccountsClient::with_interceptor(
        channel,
        support::Bearer(Some(ADMIN_TOKEN.into())),
    );
    let created = client
        .create_account(pixverse("uds@example.com", PASSWORD))
        .await
        .unwrap();
    assert_eq!(created.into_inner().password, "…secured…");
    drop(client);
    server.stop().await;
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

#[tokio::test]
async fn accounts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = support::new_key();
    let server = TestServer::start(dir.path(), &key).await;
    let mut client = server.accounts().await;
    let created = client
        .create_account(proto::CreateAccountRequest {
            jwt: Some(proto::JwtInput {
                token: upstream_jwt(1_900_000_000, TOKEN_FILLER),
                ..Default::default()
            }),
            ..pixverse("persist@example.com", PASSWORD)
        })
        .await
        .unwrap()
        .into_inner();
    drop(client);
    server.stop().await;

    let server = TestServer::start(dir.path(), &key).await;
    let mut client = server.accounts().await;
    let read = client
        .get_account(get("persist@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.version, created.version);
    assert_eq!(read.jwt, created.jwt);
    assert_eq!(read.created_at, created.created_at);
    drop(client);
    server.stop().await;

    // And the secrets themselves decrypt to what was stored.
    let settings = support::config(dir.path(), &key).resolve().unwrap();
    let vault = support::open_vault(&settings, Arc::new(SystemClock)).await;
    let account = vault
        .accounts
        .get("pixverse", "persist@example.com")
        .await
        .unwrap();
    assert_eq!(account.secrets.password.unwrap().expose(), PASSWORD);
}

#[tokio::test]
async fn a_wrong_master_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &support::new_key()).await;
    server.stop().await;

    let settings = support::config(dir.path(), &support::new_key())
        .resolve()
        .unwrap();
    let error = support::try_open_vault(&settings, Arc::new(SystemClock))
        .await
        .err()
        .expect("wrong key is refused");
    assert!(matches!(error, OpenError::WrongKey(_)));
    assert!(error.is_configuration());
    assert_eq!(
        error.to_string(),
        format!(
            "the master key does not match the data in {} (key check failed); start with the key it is sealed under now (after a master-key rotation, the new one)",
            dir.path().display()
        )
    );
}

#[tokio::test]
async fn an_unknown_store_format_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = support::new_key();
    TestServer::start(dir.path(), &key).await.stop().await;
    {
        let store = support::open_store(dir.path());
        let current = store.value(Tree::Meta, b"format").await.unwrap();
        assert_eq!(current.as_deref(), Some(&b"2"[..]));
        store
            .swap(Tree::Meta, b"format", current.as_deref(), Some(b"99"))
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let settings = support::config(dir.path(), &key).resolve().unwrap();
    let error = support::try_open_vault(&settings, Arc::new(SystemClock))
        .await
        .err()
        .expect("refused");
    assert!(
        error
            .to_string()
            .contains("has store format 99, this build reads formats 1 to 2"),
        "{error}"
    );
}

#[tokio::test]
async fn a_format_1_store_opens_and_is_marked_as_format_2_after_the_key_check() {
    let dir = tempfile::tempdir().unwrap();
    let key = support::new_key();
    TestServer::start(dir.path(), &key).await.stop().await;
    let mark = async |format: &[u8]| {
        let store = support::open_store(dir.path());
        let current = store.value(Tree::Meta, b"format").await.unwrap();
        store
            .swap(Tree::Meta, b"format", current.as_deref(), Some(format))
            .await
            .unwrap();
        store
    };
    let read = async || {
        support::open_store(dir.path())
            .value(Tree::Meta, b"format")
            .await
            .unwrap()
            .unwrap()
    };
    mark(b"1").await.flush().await.unwrap();
    // The wrong key is refused before anything is marked.
    let settings = support::config(dir.path(), &support::new_key())
        .resolve()
        .unwrap();
    assert!(
        support::try_open_vault(&settings, Arc::new(SystemClock))
            .await
            .is_err()
    );
    assert_eq!(read().await, b"1");
    let settings = support::config(dir.path(), &key).resolve().unwrap();
    drop(
        support::try_open_vault(&settings, Arc::new(SystemClock))
            .await
            .expect("opens"),
    );
    assert_eq!(read().await, b"2");
}

/// Creates two accounts, stops, and hands the raw store to `tamper`; returns the
/// restarted server.
async fn tampered(dir: &Path, key: &str, tamper: impl AsyncFnOnce(&dyn Store)) -> TestServer {
    let server = TestServer::start(dir, key).await;
    let mut client = server.accounts().await;
    for email in ["victim@example.com", "donor@example.com"] {
        client
            .create_account(pixverse(email, PASSWORD))
            .await
            .unwrap();
    }
    drop(client);
    server.stop().await;
    {
        let store = support::open_store(dir);
        tamper(store.as_ref()).await;
        store.flush().await.unwrap();
    }
    TestServer::start(dir, key).await
}

async fn replace(store: &dyn Store, key: &[u8], new: Vec<u8>) {
    let old = store.value(Tree::Accounts, key).await.unwrap().unwrap();
    assert_eq!(
        store
            .swap(Tree::Accounts, key, Some(&old), Some(&new))
            .await
            .unwrap(),
        Swap::Done
    );
}

const VICTIM: &[u8] = b"pixverse\0victim@example.com";
const DONOR: &[u8] = b"pixverse\0donor@example.com";

async fn assert_victim_is_data_loss(server: TestServer) {
    let mut client = server.accounts().await;
    let error = client
        .get_account(get("victim@example.com"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::DataLoss);
    assert!(
        error.message().starts_with(
            "account pixverse/victim@example.com failed its integrity check and will not be served"
        ),
        "{}",
        error.message()
    );
    assert!(!error.message().contains(PASSWORD));
    let error = client
        .list_accounts(proto::ListAccountsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::DataLoss);
    let error = client
        .update_account(proto::UpdateAccountRequest {
            provider: "pixverse".into(),
            email: "victim@example.com".into(),
            max_jobs: Some(2),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::DataLoss);
    // The untouched account is still served, and the damaged one can be cleared.
    assert_eq!(
        client
            .get_account(get("donor@example.com"))
            .await
            .unwrap()
            .into_inner()
            .email,
        "donor@example.com"
    );
    client
        .delete_account(proto::DeleteAccountRequest {
            provider: "pixverse".into(),
            email: "victim@example.com".into(),
            expected_version: None,
        })
        .await
        .unwrap();
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn a_flipped_ciphertext_byte_is_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let server = tampered(dir.path(), &support::new_key(), async |store| {
        let mut value = store.value(Tree::Accounts, VICTIM).await.unwrap().unwrap();
        let last = value.len() - 20;
        value[last] ^= 0x01;
        replace(store, VICTIM, value).await;
    })
    .await;
    assert_victim_is_data_loss(server).await;
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_record_is_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let server = tampered(dir.path(), &support::new_key(), async |store| {
        // Keep the victim's readable part, splice in the donor's sealed secrets.
        let victim = store.value(Tree::Accounts, VICTIM).await.unwrap().unwrap();
        let donor = store.value(Tree::Accounts, DONOR).await.unwrap().unwrap();
        let meta_end =
            |record: &[u8]| 8 + u32::from_be_bytes(record[4..8].try_into().unwrap()) as usize;
        let mut spliced = victim[..meta_end(&victim)].to_vec();
        spliced.extend_from_slice(&donor[meta_end(&donor)..]);
        replace(store, VICTIM, spliced).await;
    })
    .await;
    assert_victim_is_data_loss(server).await;
}

#[tokio::test]
async fn a_whole_record_copied_under_another_key_is_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let server = tampered(dir.path(), &support::new_key(), async |store| {
        let donor = store.value(Tree::Accounts, DONOR).await.unwrap().unwrap();
        replace(store, VICTIM, donor).await;
    })
    .await;
    assert_victim_is_data_loss(server).await;
}

#[tokio::test]
async fn an_edited_readable_field_is_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let server = tampered(dir.path(), &support::new_key(), async |store| {
        let value = store.value(Tree::Accounts, VICTIM).await.unwrap().unwrap();
        let pos = value
            .windows(12)
            .position(|w| w == b"\"max_jobs\":4")
            .unwrap();
        let mut edited = value.clone();
        edited[pos + 11] = b'8';
        replace(store, VICTIM, edited).await;
    })
    .await;
    assert_victim_is_data_loss(server).await;
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn no_plaintext_secret_reaches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &support::new_key()).await;
    let mut client = server.accounts().await;
    for i in 0..20 {
        client
            .create_account(proto::CreateAccountRequest {
                jwt: Some(proto::JwtInput {
                    token: upstream_jwt(1_900_000_000, TOKEN_FILLER),
                    ..Default::default()
                }),
                ..pixverse(&format!("disk{i}@example.com"), PASSWORD)
            })
            .await
            .unwrap();
    }
    client
        .create_account(proto::CreateAccountRequest {
            provider: "dataapi".into(),
            api_key: API_KEY.into(),
            ..pixverse("key@example.com", "")
        })
        .await
        .unwrap();
    drop(client);
    server.stop().await;

    let token = upstream_jwt(1_900_000_000, TOKEN_FILLER);
    let files = files_under(dir.path());
    let mut email_seen = false;
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        email_seen |= bytes.windows(17).any(|w| w == b"disk7@example.com");
        for needle in [
            PASSWORD,
            API_KEY,
            token.as_str(),
            token.split('.').nth(2).unwrap(),
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} found in {}",
                file.display()
            );
        }
    }
    // The emails (not secret) are readable on disk, so the scan did read the records.
    assert!(email_seen);
}

#[test]
fn debug_output_never_holds_a_secret() {
    let token = upstream_jwt(1_900_000_000, TOKEN_FILLER);
    let request = proto::CreateAccountRequest {
        api_key: API_KEY.into(),
        secret: API_KEY.into(),
        jwt: Some(proto::JwtInput {
            token: token.clone(),
            ..Default::default()
        }),
        ..pixverse("dbg@example.com", PASSWORD)
    };
    let update = proto::UpdateAccountRequest {
        password: Some(PASSWORD.into()),
        api_key: Some(API_KEY.into()),
        jwt: request.jwt.clone(),
        ..Default::default()
    };
    let account = proto::Account {
        password: PASSWORD.into(),
        api_key: API_KEY.into(),
        jwt: Some(proto::Jwt {
            token: token.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let secret = |s: &str| Some(SecretString::from(s.to_owned()));
    let domain = NewAccount {
        password: secret(PASSWORD),
        api_key: secret(API_KEY),
        session: Some(SessionInput {
            token: SecretString::from(token.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let secrets = AccountSecrets {
        password: secret(PASSWORD),
        api_key: secret(API_KEY),
        secret: secret(API_KEY),
        token: secret(&token),
        previous_token: secret(TOKEN_FILLER),
    };
    let config = Config {
        admin_token: secret(ADMIN_TOKEN),
        master_key: secret(&support::new_key()),
        ..Config::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = support::config(dir.path(), &support::new_key())
        .resolve()
        .unwrap();
    let printed = format!(
        "{request:?} {update:?} {account:?} {domain:?} {secrets:?} {config:?} {settings:?} {:?}",
        Some(&account)
    );
    for needle in [PASSWORD, API_KEY, token.as_str(), TOKEN_FILLER, ADMIN_TOKEN] {
        assert!(!printed.contains(needle), "{needle} in {printed}");
    }
    assert!(
        printed.contains("dbg@example.com"),
        "identifying fields still print"
    );
}
