//! WatchCredentials after it opened: the caller is proven again on every event and
//! within a second when none flows (revoked or expired JWT, disabled caller, narrowed
//! scopes end the stream with the status a new call would get), and a rotated token
//! leaves unmasked only to a lease holder (audited against the lease) or to a caller
//! that pays for it as a reveal (metered, audited); anyone else sees it masked.

mod support;

use std::{sync::Arc, time::Duration};

use credvault::clock::ManualClock;
use support::{Auth, TestServer, leasable, proto, upstream_jwt};
use tonic::{Code, Status, Streaming};

const SECRET: &str = "watch-review-secret-0123456789abcdef";
const START_MS: i64 = 1_767_225_600_000;
const WATCH_RPC: &str = "credvault.v1.Credentials/WatchCredentials";
/// The longest a stream may outlive its caller's right to it.
const WITHIN: Duration = Duration::from_secs(1);

struct Setup {
    _dir: tempfile::TempDir,
    server: TestServer,
    clock: ManualClock,
    caller_id: String,
    key: String,
}

/// A server on a manual clock with one leasable account and a consumer of every
/// pixverse account holding `credits`.
async fn setup(credits: i64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START_MS);
    let config = support::config(dir.path(), &support::new_key());
    let server = TestServer::start_with_clock(config, Arc::new(clock.clone())).await;
    server
        .accounts()
        .await
        .create_account(leasable("job@example.com", "pw-123456", 2))
        .await
        .unwrap();
    // A new caller starts with 100 credits (the default).
    let terms = proto::UpdateCallerRequest {
        add_credits: credits - 100,
        ..Default::default()
    };
    let (caller_id, key) =
        support::pixverse_consumer(&server, "watcher@example.com", SECRET, terms).await;
    Setup {
        _dir: dir,
        server,
        clock,
        caller_id,
        key,
    }
}

impl Setup {
    fn auth(&self) -> Auth {
        Auth::api_key(&self.key, SECRET)
    }

    async fn watch(&self, auth: Auth, email: &str) -> Streaming<proto::CredentialEvent> {
        self.server
            .credentials(auth)
            .await
            .watch_credentials(proto::WatchCredentialsRequest {
                provider: "pixverse".into(),
                email: email.into(),
            })
            .await
            .expect("the watch opens")
            .into_inner()
    }

    async fn update(&self, request: proto::UpdateCallerRequest) {
        self.server
            .callers(Auth::admin())
            .await
            .update_caller(proto::UpdateCallerRequest {
                caller_id: self.caller_id.clone(),
                ..request
            })
            .await
            .expect("the admin updates the caller");
    }

    /// An operator replaces the account's token; answers the new one.
    async fn rotate(&self, filler: &str) -> String {
        let token = upstream_jwt(1_950_000_000, filler);
        self.server
            .accounts()
            .await
            .update_account(proto::UpdateAccountRequest {
                provider: "pixverse".into(),
                email: "job@example.com".into(),
                jwt: Some(proto::JwtInput {
                    token: token.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        token
    }

    async fn remaining(&self) -> i64 {
        self.server
            .callers(self.auth())
            .await
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .credits
            .unwrap()
            .remaining
    }

    /// The watch hand-outs the audit trail holds for this secret value.
    async fn watch_hand_outs(&self, value: &str) -> Vec<proto::AuditEvent> {
        self.server
            .audit(Auth::admin())
            .await
            .audit_hash(proto::AuditHashRequest {
                value: value.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .matches
            .into_iter()
            .filter(|event| event.rpc == WATCH_RPC)
            .collect()
    }
}

async fn next_event(events: &mut Streaming<proto::CredentialEvent>) -> proto::CredentialEvent {
    tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("an event arrives")
        .expect("the stream is healthy")
        .expect("the stream is open")
}

/// The status the stream ends with, which must come within [`WITHIN`] without any event
/// flowing.
async fn ended_within_a_second(events: &mut Streaming<proto::CredentialEvent>) -> Status {
    match tokio::time::timeout(WITHIN, events.message()).await {
        Ok(Err(status)) => status,
        Ok(Ok(event)) => panic!("expected the stream to end, got {event:?}"),
        Err(_) => panic!("the stream was still open a second after the change"),
    }
}

#[tokio::test]
async fn a_revoked_jwt_ends_an_idle_stream() {
    let setup = setup(10).await;
    let issued = setup
        .server
        .callers(setup.auth())
        .await
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut events = setup.watch(Auth::bearer(&issued.jwt), "").await;
    setup
        .server
        .callers(setup.auth())
        .await
        .revoke_token(proto::RevokeTokenRequest {
            jti: issued.jti,
            ..Default::default()
        })
        .await
        .unwrap();
    let status = ended_within_a_second(&mut events).await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "JWT revoked")
    );
}

#[tokio::test]
async fn an_expired_jwt_ends_an_idle_stream() {
    let setup = setup(10).await;
    let issued = setup
        .server
        .callers(setup.auth())
        .await
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut events = setup.watch(Auth::bearer(&issued.jwt), "").await;
    let lifetime_ms = issued.expires_at.unwrap().seconds * 1000 - START_MS;
    setup.clock.advance(lifetime_ms + 1_000);
    let status = ended_within_a_second(&mut events).await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "JWT expired")
    );
}

#[tokio::test]
async fn a_disabled_caller_loses_its_stream() {
    let setup = setup(10).await;
    let mut events = setup.watch(setup.auth(), "").await;
    setup
        .update(proto::UpdateCallerRequest {
            disabled: Some(true),
            ..Default::default()
        })
        .await;
    let status = ended_within_a_second(&mut events).await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, "caller is disabled")
    );
}

#[tokio::test]
async fn narrowed_scopes_end_the_stream() {
    let setup = setup(10).await;
    let mut one = setup.watch(setup.auth(), "job@example.com").await;
    let mut all = setup.watch(setup.auth(), "").await;
    setup
        .update(proto::UpdateCallerRequest {
            set_scopes: true,
            scopes: vec!["pixverse/other@example.com".into()],
            ..Default::default()
        })
        .await;
    let status = ended_within_a_second(&mut one).await;
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            "permission denied: account pixverse/job@example.com is outside this caller's scopes"
        )
    );
    let status = ended_within_a_second(&mut all).await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().starts_with(
            "permission denied: this caller's scopes were narrowed since the watch opened"
        ),
        "{}",
        status.message()
    );
    // A new watch of the account is refused the same way.
    let error = setup
        .server
        .credentials(setup.auth())
        .await
        .watch_credentials(proto::WatchCredentialsRequest {
            provider: "pixverse".into(),
            email: "job@example.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_caller_without_credits_or_lease_sees_the_token_masked() {
    let setup = setup(0).await;
    assert_eq!(setup.remaining().await, 0);
    let mut events = setup.watch(setup.auth(), "").await;
    let token = setup.rotate("masked").await;
    let event = next_event(&mut events).await;
    assert_eq!(
        event.kind,
        proto::credential_event::Kind::TokenRotated as i32
    );
    assert_eq!(event.generation, 2, "the generation says what changed");
    assert!(event.token_masked);
    assert_eq!(
        event.token,
        format!("{}…secured…{}", &token[..3], &token[token.len() - 3..])
    );
    assert!(
        event.masked_reason.starts_with("no credits remaining"),
        "{}",
        event.masked_reason
    );
    assert!(setup.watch_hand_outs(&token).await.is_empty());
    assert_eq!(setup.remaining().await, 0);
}

#[tokio::test]
async fn a_paying_caller_sees_the_token_and_pays_as_a_reveal() {
    let setup = setup(5).await;
    let mut events = setup.watch(setup.auth(), "job@example.com").await;
    let token = setup.rotate("paid").await;
    let event = next_event(&mut events).await;
    assert_eq!(
        (event.token.as_str(), event.token_masked),
        (token.as_str(), false)
    );
    assert_eq!(setup.remaining().await, 4, "one reveal's cost");
    let audited = setup.watch_hand_outs(&token).await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(
        (
            audited[0].caller_id.as_str(),
            audited[0].email.as_str(),
            audited[0].outcome.as_str()
        ),
        (setup.caller_id.as_str(), "job@example.com", "OK")
    );
}

#[tokio::test]
async fn a_lease_holder_sees_the_token_free_and_audited_against_its_lease() {
    let setup = setup(0).await;
    setup
        .update(proto::UpdateCallerRequest {
            unmetered: Some(true),
            ..Default::default()
        })
        .await;
    let mut client = setup.server.credentials(setup.auth()).await;
    let lease = client
        .acquire_lease(proto::AcquireLeaseRequest {
            provider: "pixverse".into(),
            email: "job@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Metered again with nothing left: only the lease can pay for the token now.
    setup
        .update(proto::UpdateCallerRequest {
            unmetered: Some(false),
            ..Default::default()
        })
        .await;
    assert_eq!(setup.remaining().await, 0);
    let mut events = setup.watch(setup.auth(), "").await;
    let token = setup.rotate("leased").await;
    let event = next_event(&mut events).await;
    assert_eq!(
        (event.token.as_str(), event.token_masked),
        (token.as_str(), false)
    );
    assert_eq!(setup.remaining().await, 0, "the lease already paid");
    let audited = setup.watch_hand_outs(&token).await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0].target, lease.lease_id);

    // Released, the lease no longer pays: the next token is masked.
    client
        .release_lease(proto::ReleaseLeaseRequest {
            lease_id: lease.lease_id,
        })
        .await
        .unwrap();
    let next = setup.rotate("after-release").await;
    let event = next_event(&mut events).await;
    assert!(event.token_masked, "{event:?}");
    assert_ne!(event.token, next);
}
