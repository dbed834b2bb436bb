//! credvault's own callers over real gRPC: API keys and activation, JWT issue and
//! revocation, the 3-token and 3-key limits, Basic-auth sessions, credits.

mod support;

use std::sync::Arc;

use credvault::clock::{Clock, ManualClock};
use support::{Auth, TestServer, pixverse, proto};
use tonic::Code;
use tonic_types::StatusExt;

pub const SECRET: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
/// 2026-01-01T00:00:00Z
const START_MS: i64 = 1_767_225_600_000;

async fn server() -> (tempfile::TempDir, TestServer, ManualClock) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START_MS);
    let server = TestServer::start_with_clock(
        support::config(dir.path(), &support::new_key()),
        Arc::new(clock.clone()),
    )
    .await;
    (dir, server, clock)
}

/// Creates a consumer of `pixverse` and activates its key; returns (id, api key).
async fn consumer(server: &TestServer, email: &str) -> (String, String) {
    support::activated_caller(
        server,
        proto::CreateCallerRequest {
            email: email.into(),
            secret: SECRET.into(),
            name: "render worker".into(),
            roles: vec![proto::Role::Consumer as i32],
            scopes: vec!["pixverse".into()],
        },
    )
    .await
}

fn unauthenticated(status: &tonic::Status, message: &str) {
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, message)
    );
}

#[tokio::test]
async fn create_activate_issue_use_revoke_refused() {
    let (_dir, server, _clock) = server().await;
    let mut admin = server.callers(Auth::admin()).await;
    let created = admin
        .create_caller(proto::CreateCallerRequest {
            email: "Worker@Example.com".into(),
            secret: SECRET.into(),
            name: "render worker".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        created
            .api_key
            .starts_with(&format!("cvk_{}_", created.key_id))
    );
    let info = created.caller.unwrap();
    assert_eq!(
        (info.email.as_str(), info.activated_keys, info.api_keys),
        ("worker@example.com", 0, 1)
    );
    assert_eq!(
        info.roles,
        [proto::Role::Consumer as i32],
        "consumer by default"
    );

    // Before activation a key can do nothing but activate.
    let mut own = server
        .callers(Auth::api_key(&created.api_key, SECRET))
        .await;
    let refused = own
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::FailedPrecondition, "account not activated")
    );
    let activated = own
        .activate_caller(proto::ActivateCallerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(activated.activated_keys, 1);

    let me = own
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.email, "worker@example.com");
    assert_eq!((me.balance, me.unmetered), (100, false));
    let credits = me.credits.unwrap();
    assert_eq!((credits.total, credits.remaining), (100, 100));
    assert!(me.created_at.is_some());

    // The secret is part of every key call; each refusal names the credential sent.
    for (auth, refusal) in [
        (
            Auth(vec![(
                "authorization",
                format!("Bearer {}", created.api_key),
            )]),
            "an API key is sent with its secret, in the x-credvault-secret header",
        ),
        (
            Auth::api_key(&created.api_key, &SECRET.replace('9', "8")),
            "API key or secret is invalid",
        ),
        (
            Auth::api_key(&format!("{}x", created.api_key), SECRET),
            "API key or secret is invalid",
        ),
    ] {
        let mut client = server.callers(auth).await;
        let error = client
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await
            .unwrap_err();
        unauthenticated(&error, refusal);
    }

    let issued = own
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner();
    let expires = issued.expires_at.unwrap().seconds;
    assert_eq!(expires, START_MS / 1000 + 365 * 24 * 3600, "one year");
    let mut with_jwt = server.callers(Auth::bearer(&issued.jwt)).await;
    let me = with_jwt
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, created.caller_id);

    let listed = own
        .list_tokens(proto::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
    assert_eq!(
        (
            listed.tokens[0].jti.as_str(),
            listed.tokens[0].kind.as_str(),
            listed.tokens[0].revoked
        ),
        (issued.jti.as_str(), "access", false)
    );

    with_jwt
        .revoke_token(proto::RevokeTokenRequest {
            jwt: issued.jwt.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let error = with_jwt
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap_err();
    unauthenticated(&error, "JWT revoked");
    let listed = own
        .list_tokens(proto::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tokens[0].revoked);
    server.stop().await;
}

#[tokio::test]
async fn the_fourth_token_and_the_fourth_key_are_refused() {
    let (_dir, server, _clock) = server().await;
    let (_id, key) = consumer(&server, "limits@example.com").await;
    let mut own = server.callers(Auth::api_key(&key, SECRET)).await;

    let mut jtis = Vec::new();
    for _ in 0..3 {
        jtis.push(
            own.issue_token(proto::IssueTokenRequest::default())
                .await
                .unwrap()
                .into_inner()
                .jti,
        );
    }
    let fourth = own
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (fourth.code(), fourth.message()),
        (
            Code::AlreadyExists,
            "JWT limit exceeded, please revoke an existing JWT to create a new one"
        )
    );
    own.revoke_token(proto::RevokeTokenRequest {
        jti: jtis[0].clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    own.issue_token(proto::IssueTokenRequest::default())
        .await
        .expect("revoking one frees a slot");

    // Keys: the caller adds its own, with its secret, up to three.
    let more = |secret: &str| proto::CreateCallerRequest {
        email: "limits@example.com".into(),
        secret: secret.into(),
        ..Default::default()
    };
    let second = own.create_caller(more(SECRET)).await.unwrap().into_inner();
    assert_eq!(second.caller.unwrap().api_keys, 2);
    let wrong = own.create_caller(more(&"0".repeat(64))).await.unwrap_err();
    assert_eq!(
        (wrong.code(), wrong.message()),
        (
            Code::PermissionDenied,
            "permission denied: the secret does not match this caller's secret"
        )
    );
    own.create_caller(more(SECRET)).await.unwrap();
    let fourth = own.create_caller(more(SECRET)).await.unwrap_err();
    assert_eq!(
        (fourth.code(), fourth.message()),
        (Code::ResourceExhausted, "Too many Requests")
    );
    let info = fourth.get_details_error_info().expect("ErrorInfo details");
    assert_eq!(info.reason, "MAX_KEYS_PER_ACCOUNT");
    assert_eq!(
        info.metadata
            .get("max_keys_per_account")
            .map(String::as_str),
        Some("3")
    );

    // An admin removes a key; its slot is free and the removed key no longer works.
    let mut admin = server.callers(Auth::admin()).await;
    admin
        .update_caller(proto::UpdateCallerRequest {
            email: "limits@example.com".into(),
            remove_api_keys: vec![second.key_id.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut removed = server.callers(Auth::api_key(&second.api_key, SECRET)).await;
    let error = removed
        .activate_caller(proto::ActivateCallerRequest {})
        .await
        .unwrap_err();
    unauthenticated(&error, "API key or secret is invalid");
    own.create_caller(more(SECRET))
        .await
        .expect("removing a key frees a slot");
    server.stop().await;
}

#[tokio::test]
async fn create_caller_validates_every_field() {
    let (_dir, server, _clock) = server().await;
    let mut admin = server.callers(Auth::admin()).await;
    let request = |email: &str, secret: &str| proto::CreateCallerRequest {
        email: email.into(),
        secret: secret.into(),
        ..Default::default()
    };
    let cases = [
        (request("", SECRET), "missing parameter: [email]"),
        (request("a@example.com", ""), "missing parameter: [secret]"),
        (
            request("name@unknown.e1t", SECRET),
            "invalid email domain for \"name@unknown.e1t\"",
        ),
        // The reference's own example: `ext` is not on the public suffix list.
        (
            request("name@unknown.ext", SECRET),
            "invalid email domain for \"name@unknown.ext\"",
        ),
        (
            request("no-at-sign", SECRET),
            "invalid parameter: [email] is not a valid email address",
        ),
        (
            request("a@example.com", "short"),
            "invalid parameter: [secret] must be at least 32 characters",
        ),
        (
            proto::CreateCallerRequest {
                roles: vec![42],
                ..request("a@example.com", SECRET)
            },
            "invalid parameter: [roles] 42 is not a role (admin, operator, consumer)",
        ),
        (
            proto::CreateCallerRequest {
                scopes: vec!["*".into()],
                ..request("a@example.com", SECRET)
            },
            "invalid parameter: [scopes] \"*\" is not \"provider\" or \"provider/email-glob\"",
        ),
    ];
    for (request, message) in cases {
        let error = admin.create_caller(request).await.unwrap_err();
        assert_eq!(
            (error.code(), error.message()),
            (Code::InvalidArgument, message)
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn basic_auth_creates_a_short_session_with_a_profile() {
    let (_dir, server, clock) = server().await;
    let (id, _key) = consumer(&server, "session@example.com").await;

    let mut basic = server
        .callers(Auth::basic("session@example.com", SECRET))
        .await;
    let response = basic
        .create_session(proto::CreateSessionRequest {})
        .await
        .unwrap();
    let session = response.into_inner();
    assert_eq!(
        session.expires_at.unwrap().seconds,
        START_MS / 1000 + 3600,
        "one hour"
    );
    let profile = session.profile.clone().unwrap();
    assert_eq!(
        (
            profile.id.as_str(),
            profile.email.as_str(),
            profile.name.as_str()
        ),
        (id.as_str(), "session@example.com", "render worker")
    );
    let status = profile.status.unwrap();
    assert!(status.invited && status.approved && status.registered && status.confirmed);
    assert_eq!(profile.roles, [proto::Role::Consumer as i32]);
    assert_eq!(profile.permissions, ["credentials"]);
    assert!(!profile.two_factor_verified && !profile.has_enforced_2fa);
    // Nothing secret comes back, in any encoding of the response.
    let bytes = prost::Message::encode_to_vec(&proto::Session {
        jwt: String::new(),
        ..session.clone()
    });
    assert!(!String::from_utf8_lossy(&bytes).contains(SECRET));

    let mut with_session = server.callers(Auth::bearer(&session.jwt)).await;
    assert_eq!(
        with_session
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .id,
        id
    );
    let kinds = with_session
        .list_tokens(proto::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds
            .tokens
            .iter()
            .map(|t| t.kind.as_str())
            .collect::<Vec<_>>(),
        ["session"]
    );
    // A session is not a way to make more sessions.
    let error = with_session
        .create_session(proto::CreateSessionRequest {})
        .await
        .unwrap_err();
    unauthenticated(
        &error,
        "CreateSession needs authorization: Basic base64(email:secret)",
    );

    clock.advance(3600 * 1000);
    let error = with_session
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap_err();
    unauthenticated(&error, "JWT expired");

    for auth in [
        Auth::basic(
            "session@example.com",
            "wrong-secret-wrong-secret-wrong-secret",
        ),
        Auth::basic("nobody@example.com", SECRET),
        Auth::raw("Basic %%%not-base64%%%"),
        Auth::raw("Basic"),
    ] {
        let mut client = server.callers(auth).await;
        let error = client
            .create_session(proto::CreateSessionRequest {})
            .await
            .unwrap_err();
        // One answer for a wrong secret and an unknown email.
        unauthenticated(&error, "email or secret is invalid");
    }
    // Basic works for CreateSession only.
    let error = basic
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap_err();
    unauthenticated(
        &error,
        "Basic credentials (email:secret) are for Callers/CreateSession only; send authorization: Bearer with an API key or a JWT",
    );
    server.stop().await;
}

#[tokio::test]
async fn a_caller_without_an_activated_key_gets_no_session() {
    let (_dir, server, _clock) = server().await;
    let mut admin = server.callers(Auth::admin()).await;
    admin
        .create_caller(proto::CreateCallerRequest {
            email: "new@example.com".into(),
            secret: SECRET.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut basic = server.callers(Auth::basic("new@example.com", SECRET)).await;
    let error = basic
        .create_session(proto::CreateSessionRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (Code::FailedPrecondition, "account not activated")
    );
    server.stop().await;
}

async fn reveal(
    server: &TestServer,
    key: &str,
) -> proto::credentials_client::CredentialsClient<support::Authed> {
    server.credentials(Auth::api_key(key, SECRET)).await
}

fn reveal_request() -> proto::RevealAccountRequest {
    proto::RevealAccountRequest {
        provider: "pixverse".into(),
        email: "pool@example.com".into(),
    }
}

#[tokio::test]
async fn two_hundred_concurrent_debits_on_a_balance_of_one_hundred() {
    let (_dir, server, _clock) = server().await;
    server
        .accounts()
        .await
        .create_account(pixverse("pool@example.com", "pool-password"))
        .await
        .unwrap();
    let (id, key) = consumer(&server, "spender@example.com").await;
    let client = reveal(&server, &key).await;

    let mut tasks = Vec::new();
    for _ in 0..200 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.reveal_account(reveal_request()).await
        }));
    }
    let (mut ok, mut exhausted) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(account) => {
                assert_eq!(account.into_inner().password, "pool-password");
                ok += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert_eq!(
                    status.message(),
                    "no credits remaining: the balance is 0, this call costs 1; ask an admin to top up"
                );
                assert_eq!(
                    status.get_details_error_info().unwrap().reason,
                    "CREDITS_EXHAUSTED"
                );
                exhausted += 1;
            }
        }
    }
    assert_eq!((ok, exhausted), (100, 100));
    let mut admin = server.callers(Auth::admin()).await;
    let info = admin
        .update_caller(proto::UpdateCallerRequest {
            caller_id: id,
            add_credits: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let credits = info.credits.unwrap();
    assert_eq!(
        (credits.total, credits.remaining, info.balance),
        (105, 5, 5),
        "never below zero; top-up lands"
    );
    server.stop().await;
}

#[tokio::test]
async fn credits_are_spent_only_inside_their_validity_window() {
    let (_dir, server, clock) = server().await;
    server
        .accounts()
        .await
        .create_account(pixverse("pool@example.com", "pool-password"))
        .await
        .unwrap();
    let (id, key) = consumer(&server, "window@example.com").await;
    let hour = 3600;
    let mut admin = server.callers(Auth::admin()).await;
    admin
        .update_caller(proto::UpdateCallerRequest {
            caller_id: id.clone(),
            credits_valid_from: Some(prost_types::Timestamp {
                seconds: START_MS / 1000 + hour,
                nanos: 0,
            }),
            credits_valid_until: Some(prost_types::Timestamp {
                seconds: START_MS / 1000 + 2 * hour,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut client = reveal(&server, &key).await;

    let early = client.reveal_account(reveal_request()).await.unwrap_err();
    assert_eq!(
        (early.code(), early.message()),
        (
            Code::ResourceExhausted,
            "credits are not valid until 2026-01-01T01:00:00.000Z"
        )
    );
    let mut own = server.callers(Auth::api_key(&key, SECRET)).await;
    assert_eq!(
        own.get_caller_info(proto::GetCallerInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .balance,
        0
    );

    clock.advance(hour * 1000);
    client
        .reveal_account(reveal_request())
        .await
        .expect("inside the window");
    assert_eq!(
        own.get_caller_info(proto::GetCallerInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .balance,
        99
    );

    clock.advance(hour * 1000);
    let late = client.reveal_account(reveal_request()).await.unwrap_err();
    assert_eq!(
        (late.code(), late.message()),
        (
            Code::ResourceExhausted,
            "credits expired at 2026-01-01T02:00:00.000Z"
        )
    );
    assert_eq!(
        late.get_details_error_info().unwrap().reason,
        "CREDITS_EXPIRED"
    );
    server.stop().await;
}

#[tokio::test]
async fn revocations_and_tokens_survive_a_restart_and_a_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let key = support::new_key();
    let server = TestServer::start(dir.path(), &key).await;
    let (_id, api_key) = consumer(&server, "restart@example.com").await;
    let mut own = server.callers(Auth::api_key(&api_key, SECRET)).await;
    let kept = own
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner();
    let revoked = own
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner();
    own.revoke_token(proto::RevokeTokenRequest {
        jti: revoked.jti.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    drop(own);
    server.stop().await;

    // Rotate the signing key while stopped, as an operator would.
    {
        let settings = support::config(dir.path(), &key).resolve().unwrap();
        let vault = support::open_vault(&settings, Arc::new(credvault::clock::SystemClock)).await;
        vault.callers.rotate_signing_key().await.unwrap();
    }

    let server = TestServer::start(dir.path(), &key).await;
    let mut with_kept = server.callers(Auth::bearer(&kept.jwt)).await;
    with_kept
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .expect("signed by the previous key, still valid");
    let fresh = with_kept
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner();
    let kid = |jwt: &str| jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap();
    assert_ne!(
        kid(&fresh.jwt),
        kid(&kept.jwt),
        "new tokens use the new key"
    );
    let mut with_revoked = server.callers(Auth::bearer(&revoked.jwt)).await;
    let error = with_revoked
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap_err();
    unauthenticated(&error, "JWT revoked");
    drop((with_kept, with_revoked));
    server.stop().await;
}

#[tokio::test]
async fn a_disabled_caller_is_refused() {
    let (_dir, server, _clock) = server().await;
    let (id, key) = consumer(&server, "disabled@example.com").await;
    let mut admin = server.callers(Auth::admin()).await;
    admin
        .update_caller(proto::UpdateCallerRequest {
            caller_id: id.clone(),
            disabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut own = server.callers(Auth::api_key(&key, SECRET)).await;
    let error = own
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (Code::PermissionDenied, "caller is disabled")
    );
    let stale = admin
        .update_caller(proto::UpdateCallerRequest {
            caller_id: id,
            disabled: Some(false),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    server.stop().await;
}

#[tokio::test]
async fn revoke_token_checks_its_input() {
    let (_dir, server, _clock) = server().await;
    let (_id, key) = consumer(&server, "revoker@example.com").await;
    let (_other, other_key) = consumer(&server, "other@example.com").await;
    let mut own = server.callers(Auth::api_key(&key, SECRET)).await;
    let mut other = server.callers(Auth::api_key(&other_key, SECRET)).await;
    let theirs = other
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner();

    let cases = [
        (
            proto::RevokeTokenRequest::default(),
            Code::InvalidArgument,
            "invalid parameter: give one of [jwt] and [jti]".to_owned(),
        ),
        (
            proto::RevokeTokenRequest {
                jwt: "a.b.c".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "invalid parameter: [jwt] is not a JWT issued by this credvault".to_owned(),
        ),
        (
            proto::RevokeTokenRequest {
                jti: "0123".into(),
                ..Default::default()
            },
            Code::NotFound,
            "no JWT with jti 0123 for this caller".to_owned(),
        ),
        (
            proto::RevokeTokenRequest {
                jwt: theirs.jwt.clone(),
                ..Default::default()
            },
            Code::PermissionDenied,
            "permission denied: only an admin may act for another caller".to_owned(),
        ),
    ];
    for (request, code, message) in cases {
        let error = own.revoke_token(request).await.unwrap_err();
        assert_eq!((error.code(), error.message()), (code, message.as_str()));
    }
    // Still live: nothing above revoked it.
    let mut with_theirs = server.callers(Auth::bearer(&theirs.jwt)).await;
    with_theirs
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap();
    server.stop().await;
}

/// A caller that issues and revokes without end keeps a bounded record: only the 16
/// latest revocations are listed, and every revoked token, listed or not, is refused.
#[tokio::test]
async fn revoked_tokens_stay_refused_while_the_record_stays_bounded() {
    let (_dir, server, clock) = server().await;
    let (id, _) = consumer(&server, "churn@acme.com").await;
    let mut admin = server.callers(Auth::admin()).await;
    let mut revoked = Vec::new();
    for _ in 0..40 {
        clock.advance(1_000);
        let issued = admin
            .issue_token(proto::IssueTokenRequest {
                caller_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        admin
            .revoke_token(proto::RevokeTokenRequest {
                jwt: issued.jwt.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        revoked.push(issued.jwt);
    }
    let listed = admin
        .list_tokens(proto::ListTokensRequest {
            caller_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(listed.len(), 16, "only the latest revocations are kept");
    assert!(listed.iter().all(|t| t.revoked));
    for (i, jwt) in revoked.iter().enumerate() {
        let status = server
            .callers(Auth::bearer(jwt))
            .await
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await
            .unwrap_err();
        let message = if i >= 24 {
            "JWT revoked"
        } else {
            "JWT is missing or invalid, check Authorization header"
        };
        unauthenticated(&status, message);
    }
    server.stop().await;
}

/// A JWT's signature is verified once and kept (by hash); revocation, a disabled
/// caller and expiry still refuse the next call at once.
#[tokio::test]
async fn a_token_verified_before_is_still_checked_on_every_call() {
    let (_dir, server, clock) = server().await;
    let (id, api_key) = consumer(&server, "cached@example.com").await;
    let mut own = server.callers(Auth::api_key(&api_key, SECRET)).await;
    let mut issue = async || {
        own.issue_token(proto::IssueTokenRequest::default())
            .await
            .unwrap()
            .into_inner()
    };
    let (revoked, disabled, expiring) = (issue().await, issue().await, issue().await);
    let info = async |jwt: &str| {
        server
            .callers(Auth::bearer(jwt))
            .await
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await
    };
    for token in [&revoked, &disabled, &expiring] {
        for _ in 0..2 {
            assert_eq!(info(&token.jwt).await.unwrap().into_inner().id, id);
        }
    }

    let mut admin = server.callers(Auth::admin()).await;
    admin
        .revoke_token(proto::RevokeTokenRequest {
            jwt: revoked.jwt.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    unauthenticated(&info(&revoked.jwt).await.unwrap_err(), "JWT revoked");

    let disable = |disabled: bool| proto::UpdateCallerRequest {
        caller_id: id.clone(),
        disabled: Some(disabled),
        ..Default::default()
    };
    admin.update_caller(disable(true)).await.unwrap();
    let error = info(&disabled.jwt).await.unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (Code::PermissionDenied, "caller is disabled")
    );
    admin.update_caller(disable(false)).await.unwrap();
    info(&disabled.jwt).await.expect("enabled again");

    let exp_ms = expiring.expires_at.as_ref().unwrap().seconds * 1000;
    clock.advance(exp_ms - clock.now_ms() - 1000);
    info(&expiring.jwt).await.expect("a second before exp");
    clock.advance(1000);
    unauthenticated(&info(&expiring.jwt).await.unwrap_err(), "JWT expired");
    server.stop().await;
}
