//! Roles and scopes: every role tried on every RPC, the whole matrix asserted, each
//! refusal naming what was missing.

mod support;

use support::{Auth, TestServer, pixverse, proto};
use tonic::{Code, Status};

const SECRET: &str = "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";

#[derive(Clone, Copy, Debug)]
enum Rpc {
    CreateAccount,
    GetAccount,
    ListAccounts,
    UpdateAccount,
    DeleteAccount,
    RevealAccount,
    CreateCaller,
    UpdateCaller,
    IssueTokenForSelf,
    IssueTokenForOther,
    ListTokensOfOther,
    GetCallerInfo,
}

const RPCS: [Rpc; 12] = [
    Rpc::CreateAccount,
    Rpc::GetAccount,
    Rpc::ListAccounts,
    Rpc::UpdateAccount,
    Rpc::DeleteAccount,
    Rpc::RevealAccount,
    Rpc::CreateCaller,
    Rpc::UpdateCaller,
    Rpc::IssueTokenForSelf,
    Rpc::IssueTokenForOther,
    Rpc::ListTokensOfOther,
    Rpc::GetCallerInfo,
];

struct Actor {
    name: &'static str,
    auth: Auth,
}

async fn attempt(
    server: &TestServer,
    actor: &Actor,
    rpc: Rpc,
    bystander: &str,
) -> Result<(), Status> {
    let team = |who: &str| format!("{who}-{}@team.example.com", actor.name);
    let auth = actor.auth.clone();
    match rpc {
        Rpc::CreateAccount => {
            let mut c = server.accounts_with(auth).await;
            c.create_account(pixverse(&team("new"), "pw-123456"))
                .await
                .map(drop)
        }
        Rpc::GetAccount => {
            let mut c = server.accounts_with(auth).await;
            c.get_account(proto::GetAccountRequest {
                provider: "pixverse".into(),
                email: "x@team.example.com".into(),
            })
            .await
            .map(drop)
        }
        Rpc::ListAccounts => {
            let mut c = server.accounts_with(auth).await;
            c.list_accounts(proto::ListAccountsRequest::default())
                .await
                .map(drop)
        }
        Rpc::UpdateAccount => {
            let mut c = server.accounts_with(auth).await;
            c.update_account(proto::UpdateAccountRequest {
                provider: "pixverse".into(),
                email: "x@team.example.com".into(),
                labels: [("touched-by".to_owned(), actor.name.to_owned())].into(),
                ..Default::default()
            })
            .await
            .map(drop)
        }
        Rpc::DeleteAccount => {
            let mut c = server.accounts_with(auth).await;
            c.delete_account(proto::DeleteAccountRequest {
                provider: "pixverse".into(),
                email: team("del"),
                expected_version: None,
            })
            .await
            .map(drop)
        }
        Rpc::RevealAccount => {
            let mut c = server.credentials(auth).await;
            c.reveal_account(proto::RevealAccountRequest {
                provider: "pixverse".into(),
                email: "x@team.example.com".into(),
            })
            .await
            .map(drop)
        }
        Rpc::CreateCaller => {
            let mut c = server.callers(auth).await;
            c.create_caller(proto::CreateCallerRequest {
                email: team("caller"),
                secret: SECRET.into(),
                ..Default::default()
            })
            .await
            .map(drop)
        }
        Rpc::UpdateCaller => {
            let mut c = server.callers(auth).await;
            c.update_caller(proto::UpdateCallerRequest {
                caller_id: bystander.into(),
                add_credits: 1,
                ..Default::default()
            })
            .await
            .map(drop)
        }
        Rpc::IssueTokenForSelf => {
            let mut c = server.callers(auth).await;
            c.issue_token(proto::IssueTokenRequest::default())
                .await
                .map(drop)
        }
        Rpc::IssueTokenForOther => {
            let mut c = server.callers(auth).await;
            c.issue_token(proto::IssueTokenRequest {
                caller_id: bystander.into(),
            })
            .await
            .map(drop)
        }
        Rpc::ListTokensOfOther => {
            let mut c = server.callers(auth).await;
            c.list_tokens(proto::ListTokensRequest {
                caller_id: bystander.into(),
            })
            .await
            .map(drop)
        }
        Rpc::GetCallerInfo => {
            let mut c = server.callers(auth).await;
            c.get_caller_info(proto::GetCallerInfoRequest {})
                .await
                .map(drop)
        }
    }
}

/// What each role gets: `None` allowed, else the PERMISSION_DENIED message.
fn expected(actor: &str, rpc: Rpc) -> Option<String> {
    let scope = |rpc: &str, scope: &str, roles: &str| {
        Some(format!(
            "permission denied: {rpc} needs the \"{scope}\" scope ({roles})"
        ))
    };
    let accounts_write = |rpc| scope(rpc, "accounts:write", "role operator or role admin");
    let accounts_read = |rpc| scope(rpc, "accounts:read", "role operator or role admin");
    let other = Some("permission denied: only an admin may act for another caller".to_owned());
    let callers_admin = |rpc| scope(rpc, "callers:admin", "role admin");
    match (actor, rpc) {
        ("admin", _) | (_, Rpc::IssueTokenForSelf | Rpc::GetCallerInfo) => None,
        ("operator", Rpc::CreateAccount | Rpc::GetAccount | Rpc::ListAccounts | Rpc::UpdateAccount | Rpc::DeleteAccount) => None,
        ("consumer", Rpc::RevealAccount) => None,
        ("outsider", Rpc::RevealAccount) => {
            Some("permission denied: account pixverse/x@team.example.com is outside this caller's scopes".to_owned())
        }
        (_, Rpc::RevealAccount) => scope("RevealAccount", "credentials", "role consumer or role admin"),
        (_, Rpc::CreateAccount) => accounts_write("CreateAccount"),
        (_, Rpc::UpdateAccount) => accounts_write("UpdateAccount"),
        (_, Rpc::DeleteAccount) => accounts_write("DeleteAccount"),
        (_, Rpc::GetAccount) => accounts_read("GetAccount"),
        (_, Rpc::ListAccounts) => accounts_read("ListAccounts"),
        (_, Rpc::CreateCaller) => callers_admin("CreateCaller"),
        (_, Rpc::UpdateCaller) => callers_admin("UpdateCaller"),
        (_, Rpc::IssueTokenForOther | Rpc::ListTokensOfOther) => other,
    }
}

#[tokio::test]
async fn every_role_on_every_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &support::new_key()).await;
    let mut admin_accounts = server.accounts().await;
    let mut emails = vec!["x@team.example.com".to_owned()];
    for role in ["admin", "operator", "consumer", "outsider"] {
        emails.push(format!("del-{role}@team.example.com"));
    }
    for email in &emails {
        admin_accounts
            .create_account(pixverse(email, "pw-123456"))
            .await
            .unwrap();
    }

    let make = async |email: &str, role: proto::Role, scopes: &[&str]| {
        let request = proto::CreateCallerRequest {
            email: email.into(),
            secret: SECRET.into(),
            roles: vec![role as i32],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let (id, key) = support::activated_caller(&server, request).await;
        (id, Auth::api_key(&key, SECRET))
    };
    let (_, operator) = make("operator@example.com", proto::Role::Operator, &[]).await;
    let (_, consumer) = make(
        "consumer@example.com",
        proto::Role::Consumer,
        &["pixverse/*@team.example.com"],
    )
    .await;
    let (_, outsider) = make(
        "outsider@example.com",
        proto::Role::Consumer,
        &["dataapi", "pixverse/*@other.example.com"],
    )
    .await;
    let (bystander, _) = make("bystander@example.com", proto::Role::Consumer, &[]).await;

    let actors = [
        Actor {
            name: "admin",
            auth: Auth::admin(),
        },
        Actor {
            name: "operator",
            auth: operator,
        },
        Actor {
            name: "consumer",
            auth: consumer,
        },
        Actor {
            name: "outsider",
            auth: outsider,
        },
    ];
    let mut checked = 0;
    for actor in &actors {
        for rpc in RPCS {
            let outcome = attempt(&server, actor, rpc, &bystander).await;
            match (expected(actor.name, rpc), outcome) {
                (None, Ok(())) => {}
                (Some(message), Err(status)) => {
                    assert_eq!(
                        (status.code(), status.message()),
                        (Code::PermissionDenied, message.as_str()),
                        "{} on {rpc:?}",
                        actor.name
                    );
                }
                (want, got) => panic!("{} on {rpc:?}: expected {want:?}, got {got:?}", actor.name),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 48);
    server.stop().await;
}
