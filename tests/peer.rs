//! Peer-credential callers: on the Unix socket, a connection from a uid that
//! `socket_peers` maps is that caller without a token; an unmapped uid, a connection
//! over TCP, or a request that carries its own credential follows the token rules.

mod support;

use std::{collections::BTreeMap, os::unix::fs::MetadataExt, path::PathBuf};

use hyper_util::rt::TokioIo;
use support::{Auth, Bearer, TestServer, proto};
use tonic::{
    Code,
    transport::{Channel, Endpoint, Uri},
};

async fn over_socket(path: PathBuf) -> Channel {
    Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap()
}

async fn whoami(channel: Channel, auth: Auth) -> Result<String, tonic::Status> {
    proto::callers_client::CallersClient::with_interceptor(channel, auth)
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .map(|info| info.into_inner().id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_uid_on_the_socket_is_its_caller_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let key = support::new_key();
    let socket = dir.path().join("credvault.sock");
    // This process's own uid, as the kernel reports it for the peer.
    let my_uid = std::fs::metadata(dir.path()).unwrap().uid();

    // First a caller to map to.
    let server = TestServer::start(&dir.path().join("data"), &key).await;
    let (consumer, _) = support::activated_caller(
        &server,
        proto::CreateCallerRequest {
            email: "app@example.com".into(),
            secret: "peer-client-secret-0123456789abcdef-0123456789".into(),
            roles: vec![proto::Role::Consumer as i32],
            scopes: vec!["pixverse".into()],
            ..Default::default()
        },
    )
    .await;
    server.stop().await;

    let start = |peers: BTreeMap<String, String>| {
        let mut config = support::config(&dir.path().join("data"), &key);
        config.socket = Some(socket.clone());
        config.socket_peers = peers;
        TestServer::start_with(config)
    };

    // Mapped: the app container's uid is the consumer, no token needed.
    let server = start(BTreeMap::from([(my_uid.to_string(), consumer.clone())])).await;
    let unix = over_socket(socket.clone()).await;
    assert_eq!(
        whoami(unix.clone(), Auth::default()).await.unwrap(),
        consumer
    );
    // A credential on the request wins over the peer mapping.
    assert_eq!(whoami(unix.clone(), Auth::admin()).await.unwrap(), "admin");
    let wrong = whoami(unix.clone(), Auth::bearer("not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    // The mapping holds on the socket only: over TCP the same process needs a token.
    let tcp = whoami(server.channel().await, Auth::default())
        .await
        .unwrap_err();
    assert_eq!(tcp.code(), Code::Unauthenticated);
    // The consumer's own permissions apply: no admin RPC through the mapping.
    let denied = proto::accounts_client::AccountsClient::with_interceptor(unix, Bearer(None))
        .create_account(support::pixverse("x@example.com", "pw-123456"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    server.stop().await;

    // Unmapped (another uid in the map): the normal token rules.
    let server = start(BTreeMap::from([(
        my_uid.wrapping_add(1).to_string(),
        consumer.clone(),
    )]))
    .await;
    let unix = over_socket(socket.clone()).await;
    let refused = whoami(unix.clone(), Auth::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(whoami(unix, Auth::admin()).await.unwrap(), "admin");
    server.stop().await;
}

#[test]
fn socket_peers_must_map_uids() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), &support::new_key());
    config.socket_peers = BTreeMap::from([("app".to_owned(), "c_x".to_owned())]);
    let error = config.resolve().unwrap_err().to_string();
    assert!(error.contains("socket_peers"), "{error}");
}
