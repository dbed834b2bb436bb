//! Findings of the outside security review, each kept closed: lease renewal rechecks the
//! holder's scopes and credit window, the bootstrap admin cannot be demoted, a damaged
//! caller record answers DATA_LOSS, timestamps outside years 1..9999 and oversized
//! request headers are refused with a status that names the problem.

mod support;

use std::sync::Arc;

use credvault::{
    clock::ManualClock,
    store::{StoreExt, Swap, Tree},
};
use support::{Auth, TestServer, active_jobs, leasable, proto};
use tonic::{Code, Request, metadata::MetadataValue};

const SECRET: &str = "a1c0ffee-review-secret-0123456789abcdef";
const START_MS: i64 = 1_767_225_600_000;

fn secs(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

fn acquire(email: &str) -> proto::AcquireLeaseRequest {
    proto::AcquireLeaseRequest {
        provider: "pixverse".into(),
        email: email.into(),
        ttl: secs(60),
        ..Default::default()
    }
}

fn renew(lease: &proto::Lease) -> proto::RenewLeaseRequest {
    proto::RenewLeaseRequest {
        lease_id: lease.lease_id.clone(),
        ttl: secs(60),
    }
}

async fn update(server: &TestServer, request: proto::UpdateCallerRequest) {
    server
        .callers(Auth::admin())
        .await
        .update_caller(request)
        .await
        .expect("the admin updates the caller");
}

/// A server on a manual clock with one leasable account and an unmetered consumer of
/// every pixverse account; returns the consumer's id and auth.
async fn leasing() -> (tempfile::TempDir, TestServer, ManualClock, String, Auth) {
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
    let (id, key) = support::unmetered_consumer(&server, "worker@example.com", SECRET).await;
    (dir, server, clock, id, Auth::api_key(&key, SECRET))
}

#[tokio::test]
async fn a_renewal_outside_the_callers_scopes_ends_the_lease() {
    let (_dir, server, _clock, id, auth) = leasing().await;
    let mut client = server.credentials(auth).await;
    let lease = client
        .acquire_lease(acquire("job@example.com"))
        .await
        .unwrap()
        .into_inner();
    client.renew_lease(renew(&lease)).await.expect("in scope");
    update(
        &server,
        proto::UpdateCallerRequest {
            caller_id: id,
            set_scopes: true,
            scopes: vec!["runway".into()],
            ..Default::default()
        },
    )
    .await;
    let error = client.renew_lease(renew(&lease)).await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");
    assert_eq!(active_jobs(&server, "job@example.com").await, 0);
    let error = client.renew_lease(renew(&lease)).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "the lease is gone: {error:?}");
}

#[tokio::test]
async fn a_renewal_after_the_credits_expired_ends_the_lease() {
    let (_dir, server, clock, id, auth) = leasing().await;
    update(
        &server,
        proto::UpdateCallerRequest {
            caller_id: id,
            unmetered: Some(false),
            add_credits: 10,
            credits_valid_until: Some(prost_types::Timestamp {
                seconds: START_MS / 1000 + 30,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await;
    let mut client = server.credentials(auth).await;
    let lease = client
        .acquire_lease(acquire("job@example.com"))
        .await
        .unwrap()
        .into_inner();
    clock.advance(20_000);
    client
        .renew_lease(renew(&lease))
        .await
        .expect("within the window");
    clock.advance(20_000);
    let error = client.renew_lease(renew(&lease)).await.unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
    assert!(
        error.message().starts_with("credits expired at "),
        "{}",
        error.message()
    );
    assert_eq!(active_jobs(&server, "job@example.com").await, 0);
}

#[tokio::test]
async fn the_bootstrap_admin_cannot_be_demoted_or_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &support::new_key()).await;
    let mut admin = server.callers(Auth::admin()).await;
    for request in [
        proto::UpdateCallerRequest {
            caller_id: "admin".into(),
            set_roles: true,
            roles: vec![proto::Role::Consumer as i32],
            ..Default::default()
        },
        proto::UpdateCallerRequest {
            caller_id: "admin".into(),
            disabled: Some(true),
            ..Default::default()
        },
    ] {
        let error = admin.update_caller(request).await.unwrap_err();
        assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
        assert!(
            error
                .message()
                .starts_with("the bootstrap admin keeps the admin role and cannot be disabled"),
            "{}",
            error.message()
        );
    }
    let me = admin
        .get_caller_info(proto::GetCallerInfoRequest::default())
        .await
        .expect("the admin still gets in")
        .into_inner();
    assert!(me.roles.contains(&(proto::Role::Admin as i32)));
}

#[tokio::test]
async fn a_damaged_caller_record_is_data_loss_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let key = support::new_key();
    let server = TestServer::start(dir.path(), &key).await;
    let (id, api_key) = support::unmetered_consumer(&server, "victim@example.com", SECRET).await;
    server.stop().await;
    {
        let store = support::open_store(dir.path());
        let old = store
            .value(Tree::Callers, id.as_bytes())
            .await
            .unwrap()
            .unwrap();
        let mut new = old.clone();
        let last = new.len() - 20;
        new[last] ^= 0x01;
        assert_eq!(
            store
                .swap(Tree::Callers, id.as_bytes(), Some(&old), Some(&new))
                .await
                .unwrap(),
            Swap::Done
        );
        store.flush().await.unwrap();
    }
    let server = TestServer::start(dir.path(), &key).await;
    let error = server
        .callers(Auth::api_key(&api_key, SECRET))
        .await
        .get_caller_info(proto::GetCallerInfoRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::DataLoss,
            "the caller's record failed its integrity check and will not be used"
        )
    );
    let error = server
        .callers(Auth::admin())
        .await
        .update_caller(proto::UpdateCallerRequest {
            caller_id: id,
            name: Some("renamed".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::DataLoss, "{error:?}");
    assert!(!error.message().contains(SECRET));
}

#[tokio::test]
async fn timestamps_outside_years_1_to_9999_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &support::new_key()).await;
    let (id, _) = support::unmetered_consumer(&server, "dated@example.com", SECRET).await;
    let mut admin = server.callers(Auth::admin()).await;
    for seconds in [253_402_300_800, -62_135_596_801, i64::MAX, i64::MIN] {
        let error = admin
            .update_caller(proto::UpdateCallerRequest {
                caller_id: id.clone(),
                credits_valid_from: Some(prost_types::Timestamp { seconds, nanos: 0 }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (error.code(), error.message()),
            (
                Code::InvalidArgument,
                "invalid parameter: [credits_valid_from] is not a valid timestamp"
            ),
            "{seconds}"
        );
    }
    for seconds in [253_402_300_799, -62_135_596_800] {
        admin
            .update_caller(proto::UpdateCallerRequest {
                caller_id: id.clone(),
                credits_valid_from: Some(prost_types::Timestamp { seconds, nanos: 0 }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{seconds}: {e:?}"));
    }
}

#[tokio::test]
async fn oversized_request_headers_get_a_named_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &support::new_key()).await;
    let mut admin = server.callers(Auth::admin()).await;
    let call = |filler: usize| {
        let mut request = Request::new(proto::GetCallerInfoRequest::default());
        request.metadata_mut().insert(
            "x-filler",
            MetadataValue::try_from("f".repeat(filler)).unwrap(),
        );
        request
    };
    admin
        .get_caller_info(call(8 * 1024))
        .await
        .expect("8 KiB of headers is fine");
    let error = admin.get_caller_info(call(20 * 1024)).await.unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::ResourceExhausted,
            "the request's headers are larger than 16 KiB"
        )
    );
    admin
        .get_caller_info(call(0))
        .await
        .expect("the connection still serves");
}
