//! The Accounts service over real gRPC on 127.0.0.1:0: CRUD, masking, paging,
//! compare-and-set, and every error an operator can see, word for word.

mod support;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use support::{TestServer, pixverse, proto, upstream_jwt};
use tonic::Code;

async fn server() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &support::new_key()).await;
    (dir, server)
}

fn get(email: &str) -> proto::GetAccountRequest {
    proto::GetAccountRequest {
        provider: "pixverse".into(),
        email: email.into(),
    }
}

#[tokio::test]
async fn crud_round_trip_masks_every_secret() {
    let (_dir, server) = server().await;
    let mut client = server.accounts().await;
    // exp = 2025-01-01T12:13:14Z
    let token = upstream_jwt(1_735_733_594, "signature-bytes-xyz");
    let created = client
        .create_account(proto::CreateAccountRequest {
            jwt: Some(proto::JwtInput {
                token: token.clone(),
                account_id: "349".into(),
                username: "ops".into(),
                expire_time: 0,
            }),
            labels: [("team".to_owned(), "video".to_owned())].into(),
            ..pixverse("Ops@Example.com", "correct horse battery")
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(created.email, "ops@example.com");
    assert_eq!(created.password, "…secured…");
    assert_eq!(created.api_key, "");
    assert_eq!(created.max_jobs, 4);
    assert_eq!(created.version, 1);
    assert_eq!(created.status, proto::account::Status::Active as i32);
    let jwt = created.jwt.clone().unwrap();
    assert_eq!(
        jwt.token,
        format!("eyJ…secured…{}", &token[token.len() - 3..])
    );
    assert_eq!(jwt.expire_time, 1_735_733_594);
    assert_eq!(jwt.expire_time_utc, "2025-01-01T12:13:14.000Z");
    assert_eq!(
        (
            jwt.account_id.as_str(),
            jwt.username.as_str(),
            jwt.generation
        ),
        ("349", "ops", 1)
    );

    let read = client
        .get_account(get("OPS@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.password, "…secured…");
    assert_eq!(read.jwt.unwrap().token, jwt.token);
    assert_eq!(read.labels.get("team").map(String::as_str), Some("video"));

    let updated = client
        .update_account(proto::UpdateAccountRequest {
            provider: "pixverse".into(),
            email: "ops@example.com".into(),
            max_jobs: Some(8),
            disabled: Some(true),
            password: Some("new password".into()),
            remove_labels: vec!["team".into()],
            labels: [("tier".to_owned(), "gold".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.max_jobs, 8);
    assert_eq!(updated.version, 2);
    assert_eq!(updated.status, proto::account::Status::Disabled as i32);
    assert_eq!(updated.password, "…secured…");
    assert_eq!(
        updated.labels,
        [("tier".to_owned(), "gold".to_owned())].into()
    );

    let listed = client
        .list_accounts(proto::ListAccountsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.accounts.len(), 1);
    assert_eq!(listed.accounts[0].password, "…secured…");
    assert_eq!(listed.next_page_token, "");

    client
        .delete_account(proto::DeleteAccountRequest {
            provider: "pixverse".into(),
            email: "ops@example.com".into(),
            expected_version: Some(2),
        })
        .await
        .unwrap();
    let gone = client
        .get_account(get("ops@example.com"))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(
        gone.message(),
        "Configuration not found. To create configuration use CreateAccount (account: pixverse/ops@example.com)"
    );
    server.stop().await;
}

#[tokio::test]
async fn api_key_accounts_mask_key_and_secret() {
    let (_dir, server) = server().await;
    let mut client = server.accounts().await;
    let created = client
        .create_account(proto::CreateAccountRequest {
            provider: "dataapi".into(),
            email: "svc@data.io".into(),
            api_key: "ak_live_0123456789".into(),
            secret: "f".repeat(64),
            max_jobs: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (created.api_key.as_str(), created.secret.as_str()),
        ("…secured…", "…secured…")
    );
    assert_eq!(created.password, "");
    assert_eq!(created.jwt, None);
    server.stop().await;
}

#[tokio::test]
async fn listing_pages_in_order_and_filters_by_provider() {
    let (_dir, server) = server().await;
    let mut client = server.accounts().await;
    for i in 0..5 {
        client
            .create_account(pixverse(&format!("user{i}@example.com"), "pw-123456"))
            .await
            .unwrap();
    }
    for i in 0..2 {
        client
            .create_account(proto::CreateAccountRequest {
                provider: "dataapi".into(),
                ..pixverse(&format!("svc{i}@example.com"), "pw-123456")
            })
            .await
            .unwrap();
    }

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_accounts(proto::ListAccountsRequest {
                provider: "pixverse".into(),
                page_size: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.accounts.len() <= 2);
        seen.extend(page.accounts.into_iter().map(|a| a.email));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let expected: Vec<String> = (0..5).map(|i| format!("user{i}@example.com")).collect();
    assert_eq!(seen, expected);

    let all = client
        .list_accounts(proto::ListAccountsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let providers: Vec<&str> = all.accounts.iter().map(|a| a.provider.as_str()).collect();
    assert_eq!(
        providers,
        [
            "dataapi", "dataapi", "pixverse", "pixverse", "pixverse", "pixverse", "pixverse"
        ]
    );

    for (request, message) in [
        (
            proto::ListAccountsRequest {
                page_size: -1,
                ..Default::default()
            },
            "invalid parameter: [page_size] must be between 0 and 1000, got -1",
        ),
        (
            proto::ListAccountsRequest {
                page_size: 1001,
                ..Default::default()
            },
            "invalid parameter: [page_size] must be between 0 and 1000, got 1001",
        ),
        (
            proto::ListAccountsRequest {
                page_token: "%%%".into(),
                ..Default::default()
            },
            "invalid parameter: [page_token] is not a token returned by ListAccounts",
        ),
    ] {
        let error = client.list_accounts(request).await.unwrap_err();
        assert_eq!(
            (error.code(), error.message()),
            (Code::InvalidArgument, message)
        );
    }
    // A token from one provider's listing does not page through another's.
    let first = client
        .list_accounts(proto::ListAccountsRequest {
            provider: "pixverse".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let error = client
        .list_accounts(proto::ListAccountsRequest {
            provider: "dataapi".into(),
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    // Without a provider filter too, only a token that listing gave out is taken: not
    // one made under a filter, nor made-up bytes (base64 of a NUL byte, of a key).
    let unfiltered = client
        .list_accounts(proto::ListAccountsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for page_token in [
        "AA".to_owned(),
        URL_SAFE_NO_PAD.encode(b"pixverse\0user1@example.com"),
        URL_SAFE_NO_PAD.encode(b"\0\0"),
        first.next_page_token.clone(),
    ] {
        let error = client
            .list_accounts(proto::ListAccountsRequest {
                page_token,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (error.code(), error.message()),
            (
                Code::InvalidArgument,
                "invalid parameter: [page_token] is not a token returned by ListAccounts"
            )
        );
    }
    let error = client
        .list_accounts(proto::ListAccountsRequest {
            provider: "pixverse".into(),
            page_token: unfiltered.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let second = client
        .list_accounts(proto::ListAccountsRequest {
            page_size: 1,
            page_token: unfiltered.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.accounts[0].email, "svc1@example.com");
    server.stop().await;
}

#[tokio::test]
async fn compare_and_set_refuses_a_stale_version() {
    let (_dir, server) = server().await;
    let mut client = server.accounts().await;
    client
        .create_account(pixverse("cas@example.com", "pw-123456"))
        .await
        .unwrap();
    let update = |expected_version, max_jobs| proto::UpdateAccountRequest {
        provider: "pixverse".into(),
        email: "cas@example.com".into(),
        max_jobs: Some(max_jobs),
        expected_version: Some(expected_version),
        ..Default::default()
    };
    let v2 = client
        .update_account(update(1, 5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v2.version, 2);

    let stale = client.update_account(update(1, 6)).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert_eq!(
        stale.message(),
        "version mismatch: account pixverse/cas@example.com is at version 2, the request expected 1"
    );
    let stale_delete = client
        .delete_account(proto::DeleteAccountRequest {
            provider: "pixverse".into(),
            email: "cas@example.com".into(),
            expected_version: Some(1),
        })
        .await
        .unwrap_err();
    assert_eq!(stale_delete.code(), Code::Aborted);
    let still = client
        .get_account(get("cas@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((still.max_jobs, still.version), (5, 2));
    server.stop().await;
}

#[tokio::test]
async fn concurrent_updates_lose_nothing() {
    let (_dir, server) = server().await;
    let mut client = server.accounts().await;
    client
        .create_account(pixverse("race@example.com", "pw-123456"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .update_account(proto::UpdateAccountRequest {
                    provider: "pixverse".into(),
                    email: "race@example.com".into(),
                    labels: [(format!("writer-{i}"), "done".to_owned())].into(),
                    ..Default::default()
                })
                .await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let account = client
        .get_account(get("race@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.labels.len(), 16, "every writer's label survived");
    assert_eq!(account.version, 17);
    server.stop().await;
}

#[tokio::test]
async fn every_invalid_argument_names_its_field() {
    let (_dir, server) = server().await;
    let mut client = server.accounts().await;
    client
        .create_account(pixverse("taken@example.com", "pw-123456"))
        .await
        .unwrap();

    let cases: Vec<(proto::CreateAccountRequest, Code, &str)> = vec![
        (
            pixverse("", "pw"),
            Code::InvalidArgument,
            "missing parameter: [email]",
        ),
        (
            pixverse("not-an-address", "pw"),
            Code::InvalidArgument,
            "invalid parameter: [email] is not a valid email address",
        ),
        (
            pixverse("name@unknown", "pw"),
            Code::InvalidArgument,
            "invalid email domain for \"name@unknown\"",
        ),
        (
            pixverse("name@unknown.ext", "pw"),
            Code::InvalidArgument,
            "invalid email domain for \"name@unknown.ext\"",
        ),
        (
            pixverse("name@host.invalid", "pw"),
            Code::InvalidArgument,
            "invalid email domain for \"name@host.invalid\"",
        ),
        (
            pixverse("a\tb@example.com", "pw"),
            Code::InvalidArgument,
            "invalid parameter: [email] contains control characters",
        ),
        (
            pixverse("nopw@example.com", ""),
            Code::InvalidArgument,
            "missing parameter: [password]",
        ),
        (
            proto::CreateAccountRequest {
                max_jobs: 9,
                ..pixverse("big@example.com", "pw")
            },
            Code::InvalidArgument,
            "invalid parameter: [max_jobs] must be between 1 and 8 for provider \"pixverse\", got 9",
        ),
        (
            proto::CreateAccountRequest {
                max_jobs: 0,
                ..pixverse("zero@example.com", "pw")
            },
            Code::InvalidArgument,
            "invalid parameter: [max_jobs] must be between 1 and 8 for provider \"pixverse\", got 0",
        ),
        (
            proto::CreateAccountRequest {
                provider: "dataapi".into(),
                max_jobs: 51,
                ..pixverse("big@example.com", "pw")
            },
            Code::InvalidArgument,
            "invalid parameter: [max_jobs] must be between 1 and 50 for provider \"dataapi\", got 51",
        ),
        (
            proto::CreateAccountRequest {
                provider: "nosuch".into(),
                ..pixverse("p@example.com", "pw")
            },
            Code::InvalidArgument,
            "invalid parameter: [provider] unknown provider \"nosuch\" (configured: dataapi, pixverse)",
        ),
        (
            proto::CreateAccountRequest {
                provider: String::new(),
                ..pixverse("p@example.com", "pw")
            },
            Code::InvalidArgument,
            "missing parameter: [provider]",
        ),
        (
            proto::CreateAccountRequest {
                secret: "s".repeat(40),
                ..pixverse("s@example.com", "pw")
            },
            Code::InvalidArgument,
            "invalid parameter: [secret] is only used together with [api_key]",
        ),
        (
            pixverse("long@example.com", &"p".repeat(5000)),
            Code::InvalidArgument,
            "invalid parameter: [password] is longer than 4096 bytes",
        ),
        (
            pixverse("ctl@example.com", "pass\u{0}word"),
            Code::InvalidArgument,
            "invalid parameter: [password] contains control characters",
        ),
        (
            proto::CreateAccountRequest {
                labels: [("Bad Key".to_owned(), "v".to_owned())].into(),
                ..pixverse("l@example.com", "pw")
            },
            Code::InvalidArgument,
            "invalid parameter: [labels] keys are 1 to 63 characters of a-z, 0-9, '.', '_', '-' and '/'",
        ),
        (
            proto::CreateAccountRequest {
                jwt: Some(proto::JwtInput {
                    expire_time: -5,
                    token: "t".repeat(20),
                    ..Default::default()
                }),
                ..pixverse("j@example.com", "pw")
            },
            Code::InvalidArgument,
            "invalid parameter: [jwt.expire_time] must not be negative",
        ),
        (
            pixverse("Taken@example.com", "pw"),
            Code::AlreadyExists,
            "account pixverse/taken@example.com already exists",
        ),
    ];
    for (request, code, message) in cases {
        let error = client.create_account(request).await.unwrap_err();
        assert_eq!((error.code(), error.message()), (code, message));
    }

    let update = |max_jobs| proto::UpdateAccountRequest {
        provider: "pixverse".into(),
        email: "taken@example.com".into(),
        max_jobs: Some(max_jobs),
        ..Default::default()
    };
    let error = client.update_account(update(-1)).await.unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::InvalidArgument,
            "invalid parameter: [max_jobs] must be between 1 and 8 for provider \"pixverse\", got -1"
        )
    );
    let error = client
        .update_account(proto::UpdateAccountRequest {
            email: "ghost@example.com".into(),
            ..update(2)
        })
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::NotFound,
            "Configuration not found. To create configuration use CreateAccount (account: pixverse/ghost@example.com)"
        )
    );
    let error = client
        .delete_account(proto::DeleteAccountRequest {
            provider: "pixverse".into(),
            email: "ghost@example.com".into(),
            expected_version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = client
        .get_account(proto::GetAccountRequest {
            provider: "pixverse".into(),
            email: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (Code::InvalidArgument, "missing parameter: [email]")
    );
    server.stop().await;
}

#[tokio::test]
async fn token_expiry_comes_from_the_request_when_given() {
    let (_dir, server) = server().await;
    let mut client = server.accounts().await;
    let created = client
        .create_account(proto::CreateAccountRequest {
            jwt: Some(proto::JwtInput {
                token: "opaque-session-token-not-a-jwt".into(),
                expire_time: 1_700_000_000,
                ..Default::default()
            }),
            ..pixverse("opaque@example.com", "pw-123456")
        })
        .await
        .unwrap()
        .into_inner();
    let jwt = created.jwt.unwrap();
    assert_eq!(jwt.token, "opa…secured…jwt");
    assert_eq!(jwt.expire_time_utc, "2023-11-14T22:13:20.000Z");

    // A replacement token bumps the generation.
    let updated = client
        .update_account(proto::UpdateAccountRequest {
            provider: "pixverse".into(),
            email: "opaque@example.com".into(),
            jwt: Some(proto::JwtInput {
                token: upstream_jwt(1_800_000_000, "next"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let jwt = updated.jwt.unwrap();
    assert_eq!((jwt.generation, jwt.expire_time), (2, 1_800_000_000));
    server.stop().await;
}
