//! The views operators asked for, over real gRPC: ListLeases (who holds which slot:
//! everything for admins and operators, its own for a consumer), RevokeLease (ends a
//! lease, tells its holder on the watch, audited), ListCallers (paged, by role),
//! DeleteCaller (its keys, tokens and leases end with it; audited) and the key ids in
//! GetCallerInfo.

mod support;

use support::{Auth, TestServer, leasable, proto};
use tonic::Code;

const SECRET: &str = "views-client-secret-0123456789abcdef-0123456789";

fn acquire(email: &str) -> proto::AcquireLeaseRequest {
    proto::AcquireLeaseRequest {
        provider: "pixverse".into(),
        email: email.into(),
        ..Default::default()
    }
}

/// A caller with `role` over every pixverse account; its id and API-key auth.
async fn caller(server: &TestServer, email: &str, role: proto::Role) -> (String, Auth) {
    let (id, key) = support::activated_caller(
        server,
        proto::CreateCallerRequest {
            email: email.into(),
            secret: SECRET.into(),
            roles: vec![role as i32],
            scopes: vec!["pixverse".into()],
            ..Default::default()
        },
    )
    .await;
    (id, Auth::api_key(&key, SECRET))
}

async fn leases(
    server: &TestServer,
    auth: Auth,
    caller_id: &str,
) -> Result<Vec<proto::LeaseInfo>, tonic::Status> {
    server
        .credentials(auth)
        .await
        .list_leases(proto::ListLeasesRequest {
            caller_id: caller_id.into(),
            ..Default::default()
        })
        .await
        .map(|answer| answer.into_inner().leases)
}

#[tokio::test]
async fn leases_are_listed_by_who_may_see_them_and_revoked_by_operators() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &support::new_key()).await;
    let mut accounts = server.accounts().await;
    for email in ["a@example.com", "b@example.com"] {
        accounts
            .create_account(leasable(email, "pw-123456", 2))
            .await
            .unwrap();
    }
    let (alice, alice_auth) = caller(&server, "alice@example.com", proto::Role::Consumer).await;
    let (bob, bob_auth) = caller(&server, "bob@example.com", proto::Role::Consumer).await;
    let (_, operator) = caller(&server, "ops@example.com", proto::Role::Operator).await;
    let held_by_alice = server
        .credentials(alice_auth.clone())
        .await
        .acquire_lease(acquire("a@example.com"))
        .await
        .unwrap()
        .into_inner();
    let held_by_bob = server
        .credentials(bob_auth.clone())
        .await
        .acquire_lease(acquire("b@example.com"))
        .await
        .unwrap()
        .into_inner();

    // The operator sees both, oldest first, with holders and accounts (no token).
    let all = leases(&server, operator.clone(), "").await.unwrap();
    let seen: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|l| (l.lease_id.as_str(), l.caller_id.as_str(), l.email.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                held_by_alice.lease_id.as_str(),
                alice.as_str(),
                "a@example.com"
            ),
            (held_by_bob.lease_id.as_str(), bob.as_str(), "b@example.com"),
        ]
    );
    let secs = |t: &Option<prost_types::Timestamp>| t.as_ref().map_or(0, |t| t.seconds);
    assert!(
        all.iter()
            .all(|l| secs(&l.expires_at) > secs(&l.acquired_at))
    );
    assert_eq!(leases(&server, Auth::admin(), &bob).await.unwrap().len(), 1);
    // A consumer sees its own, and not another's.
    let own = leases(&server, alice_auth.clone(), "").await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].lease_id, held_by_alice.lease_id);
    let other = leases(&server, alice_auth.clone(), &bob).await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);

    // A consumer may not revoke; an operator may, and the holder hears it.
    let mut watch = server
        .credentials(bob_auth.clone())
        .await
        .watch_credentials(proto::WatchCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let revoke = |id: &str| proto::RevokeLeaseRequest {
        lease_id: id.into(),
    };
    let refused = server
        .credentials(alice_auth)
        .await
        .revoke_lease(revoke(&held_by_bob.lease_id))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    server
        .credentials(operator.clone())
        .await
        .revoke_lease(revoke(&held_by_bob.lease_id))
        .await
        .unwrap();
    let heard = watch.message().await.unwrap().expect("an event");
    assert_eq!(
        heard.kind,
        proto::credential_event::Kind::LeaseRevoked as i32
    );
    assert_eq!(heard.lease_id, held_by_bob.lease_id);
    let renewed = server
        .credentials(bob_auth)
        .await
        .renew_lease(proto::RenewLeaseRequest {
            lease_id: held_by_bob.lease_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(renewed.code(), Code::NotFound);
    let again = server
        .credentials(operator.clone())
        .await
        .revoke_lease(revoke(&held_by_bob.lease_id))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    assert_eq!(leases(&server, operator, "").await.unwrap().len(), 1);

    // Audited, naming the lease and its account.
    let events = server
        .audit(Auth::admin())
        .await
        .list_events(proto::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    let revoked: Vec<_> = events
        .iter()
        .filter(|e| e.rpc.ends_with("RevokeLease"))
        .map(|e| (e.outcome.as_str(), e.target.as_str(), e.email.as_str()))
        .collect();
    assert!(
        revoked.contains(&("OK", held_by_bob.lease_id.as_str(), "b@example.com")),
        "{revoked:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn callers_are_listed_by_page_and_role_and_deleted_with_everything_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &support::new_key()).await;
    server
        .accounts()
        .await
        .create_account(leasable("a@example.com", "pw-123456", 2))
        .await
        .unwrap();
    let (doomed, doomed_auth) = caller(&server, "doomed@example.com", proto::Role::Consumer).await;
    let (_, consumer_auth) = caller(&server, "other@example.com", proto::Role::Consumer).await;
    caller(&server, "ops@example.com", proto::Role::Operator).await;

    // GetCallerInfo names each key by id, with its times.
    let info = server
        .callers(doomed_auth.clone())
        .await
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.keys.len(), 1);
    assert!(info.keys[0].key_id.len() >= 8 && info.keys[0].activated_at.is_some());

    // Paged in id order, every caller once; the role filter keeps consumers.
    let mut admin = server.callers(Auth::admin()).await;
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_callers(proto::ListCallersRequest {
                page_size: 1,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.callers.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        ids.len(),
        4,
        "the bootstrap admin and three callers: {ids:?}"
    );
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let consumers = admin
        .list_callers(proto::ListCallersRequest {
            role: proto::Role::Consumer as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .callers;
    let mut emails: Vec<_> = consumers.iter().map(|c| c.email.as_str()).collect();
    emails.sort();
    assert_eq!(emails, ["doomed@example.com", "other@example.com"]);
    let refused = server
        .callers(consumer_auth.clone())
        .await
        .list_callers(proto::ListCallersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // The doomed caller holds a JWT and a lease, and watches.
    let jwt = server
        .callers(doomed_auth.clone())
        .await
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jwt;
    server
        .credentials(doomed_auth.clone())
        .await
        .acquire_lease(acquire("a@example.com"))
        .await
        .unwrap();
    let refused = server
        .callers(consumer_auth)
        .await
        .delete_caller(proto::DeleteCallerRequest {
            caller_id: doomed.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    admin
        .delete_caller(proto::DeleteCallerRequest {
            email: "doomed@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for auth in [doomed_auth, Auth::bearer(&jwt)] {
        let gone = server
            .callers(auth)
            .await
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::Unauthenticated, "{gone:?}");
    }
    assert!(
        leases(&server, Auth::admin(), &doomed)
            .await
            .unwrap()
            .is_empty()
    );
    let listed = admin
        .list_callers(proto::ListCallersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .callers;
    assert!(listed.iter().all(|c| c.id != doomed));
    let again = admin
        .delete_caller(proto::DeleteCallerRequest {
            caller_id: doomed.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    let bootstrap = admin
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .id;
    let kept = admin
        .delete_caller(proto::DeleteCallerRequest {
            caller_id: bootstrap,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(kept.code(), Code::FailedPrecondition, "{kept:?}");
    // Its email is free again.
    caller(&server, "doomed@example.com", proto::Role::Consumer).await;

    let events = server
        .audit(Auth::admin())
        .await
        .list_events(proto::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(
        events
            .iter()
            .any(|e| e.rpc.ends_with("DeleteCaller") && e.outcome == "OK" && e.target == doomed),
        "the deletion is audited"
    );
    server.stop().await;
}
