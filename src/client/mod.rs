//! `credvault` as a client of a running daemon, for operators who would rather not
//! write JSON: `credvault accounts list`, `credvault leases acquire pixverse`, … Each
//! command is one RPC (two for a rotation it follows), over TCP, TLS or the Unix
//! socket ([`connect`]), printed as a table or as grpcurl's JSON ([`output`]).
//!
//! Secrets are never flag values: an account's password, a caller's secret or a value
//! to hash is read from a file (`-` for stdin) or a named environment variable.
//! Exit codes: 0 done, 1 refused by the server, 64 usage, 69 the daemon unreachable or
//! not serving.

mod args;
pub mod connect;
pub mod output;
pub mod transfer;

use std::process::ExitCode;

use crate::proto;
pub use args::*;
use connect::{Connection, Credential};

/// Why a client command did not succeed, and its exit code.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    text: String,
}

impl Failure {
    pub fn usage(text: impl Into<String>) -> Self {
        Self {
            code: 64,
            text: text.into(),
        }
    }

    pub fn refused(text: impl Into<String>) -> Self {
        Self {
            code: 1,
            text: text.into(),
        }
    }

    pub fn unavailable(text: impl Into<String>) -> Self {
        Self {
            code: 69,
            text: text.into(),
        }
    }
}

type Outcome = Result<(), Failure>;

/// A client command.
pub enum Request {
    Accounts(Group<AccountsAction>),
    Leases(Group<LeasesAction>),
    Callers(Group<CallersAction>),
    Tokens(Group<TokensAction>),
    Audit(Group<AuditAction>),
    Keys(Group<KeysAction>),
    Reveal(Reveal),
    Watch(Watch),
    Health(Health),
}

/// Runs a client command on a runtime of its own.
pub fn run(request: Request) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("credvault: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(request)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("credvault: {}", failure.text);
            ExitCode::from(failure.code)
        }
    }
}

/// The channel and credential of a command, ready for a generated client.
async fn connect(conn: &Connection) -> Result<(tonic::transport::Channel, Credential), Failure> {
    let credential = conn.credential()?;
    Ok((conn.channel().await?, credential))
}

async fn dispatch(request: Request) -> Outcome {
    match request {
        Request::Accounts(group) => accounts(group).await,
        Request::Leases(group) => leases(group).await,
        Request::Callers(group) => callers(group).await,
        Request::Tokens(group) => tokens(group).await,
        Request::Audit(group) => audit(group).await,
        Request::Keys(group) => keys(group).await,
        Request::Reveal(reveal) => {
            let (channel, credential) = connect(&reveal.conn).await?;
            let answer =
                proto::credentials_client::CredentialsClient::with_interceptor(channel, credential)
                    .reveal_account(proto::RevealAccountRequest {
                        provider: reveal.provider,
                        email: reveal.email,
                    })
                    .await
                    .map_err(|s| output::refusal(&s))?;
            output::print(reveal.conn.output, answer.get_ref(), "credvault.v1.Account");
            Ok(())
        }
        Request::Watch(watch) => watch_events(watch).await,
        Request::Health(health) => health_check(health).await,
    }
}

/// Prints an answer or turns a refusal into a failure.
fn answered<M: prost::Message>(
    conn: &Connection,
    answer: Result<tonic::Response<M>, tonic::Status>,
    name: &str,
) -> Outcome {
    let answer = answer.map_err(|s| output::refusal(&s))?;
    output::print(conn.output, answer.get_ref(), name);
    Ok(())
}

async fn accounts(group: Group<AccountsAction>) -> Outcome {
    use proto::accounts_client::AccountsClient;
    let (channel, credential) = connect(&group.conn).await?;
    let mut client = AccountsClient::with_interceptor(channel.clone(), credential.clone());
    let conn = &group.conn;
    const ACCOUNT: &str = "credvault.v1.Account";
    match group.action {
        AccountsAction::Import {
            file,
            csv,
            dry_run,
            upsert,
        } => {
            let text = read_secret(&file)?;
            let csv = csv
                || file
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
            let lines = transfer::parse(&text, csv);
            let report = transfer::import(&mut client, lines, dry_run, upsert).await;
            match report.refused {
                0 => Ok(()),
                n => Err(Failure::refused(format!("{n} line(s) were not imported"))),
            }
        }
        AccountsAction::Export {
            provider,
            with_secrets,
            yes,
        } => {
            let mut reveal = with_secrets.then(|| {
                proto::credentials_client::CredentialsClient::with_interceptor(
                    channel.clone(),
                    credential.clone(),
                )
            });
            let written = transfer::export(&mut client, reveal.as_mut(), provider, yes).await?;
            eprintln!("{written} account(s) exported");
            Ok(())
        }
        AccountsAction::List { provider } => {
            let all = proto::ListAccountsResponse {
                accounts: transfer::all_accounts(&mut client, provider).await?,
                next_page_token: String::new(),
            };
            output::print(conn.output, &all, "credvault.v1.ListAccountsResponse");
            Ok(())
        }
        AccountsAction::Get { provider, email } => answered(
            conn,
            client
                .get_account(proto::GetAccountRequest { provider, email })
                .await,
            ACCOUNT,
        ),
        AccountsAction::Create {
            provider,
            email,
            secrets,
            max_jobs,
            disabled,
        } => {
            let request = proto::CreateAccountRequest {
                provider,
                email,
                password: secrets.password()?.unwrap_or_default(),
                api_key: read_optional(secrets.api_key_file.as_deref())?.unwrap_or_default(),
                secret: read_optional(secrets.secret_file.as_deref())?.unwrap_or_default(),
                max_jobs,
                jwt: read_optional(secrets.jwt_file.as_deref())?.map(|token| proto::JwtInput {
                    token,
                    ..Default::default()
                }),
                disabled,
                ..Default::default()
            };
            answered(conn, client.create_account(request).await, ACCOUNT)
        }
        AccountsAction::Update {
            provider,
            email,
            max_jobs,
            disabled,
            secrets,
            expected_version,
        } => {
            let request = proto::UpdateAccountRequest {
                provider,
                email,
                max_jobs,
                disabled,
                password: secrets.password()?,
                api_key: read_optional(secrets.api_key_file.as_deref())?,
                secret: read_optional(secrets.secret_file.as_deref())?,
                jwt: read_optional(secrets.jwt_file.as_deref())?.map(|token| proto::JwtInput {
                    token,
                    ..Default::default()
                }),
                expected_version,
                ..Default::default()
            };
            answered(conn, client.update_account(request).await, ACCOUNT)
        }
        AccountsAction::Delete { provider, email } => answered(
            conn,
            client
                .delete_account(proto::DeleteAccountRequest {
                    provider,
                    email,
                    expected_version: None,
                })
                .await,
            "google.protobuf.Empty",
        ),
        AccountsAction::Refresh {
            provider,
            email,
            force,
        } => answered(
            conn,
            client
                .refresh_account(proto::RefreshAccountRequest {
                    provider,
                    email,
                    force,
                })
                .await,
            ACCOUNT,
        ),
    }
}

async fn leases(group: Group<LeasesAction>) -> Outcome {
    use proto::credentials_client::CredentialsClient;
    let (channel, credential) = connect(&group.conn).await?;
    let mut client = CredentialsClient::with_interceptor(channel, credential);
    let conn = &group.conn;
    const EMPTY: &str = "google.protobuf.Empty";
    match group.action {
        LeasesAction::List {
            provider,
            caller_id,
        } => answered(
            conn,
            client
                .list_leases(proto::ListLeasesRequest {
                    provider: provider.unwrap_or_default(),
                    caller_id: caller_id.unwrap_or_default(),
                })
                .await,
            "credvault.v1.ListLeasesResponse",
        ),
        LeasesAction::Acquire {
            provider,
            email,
            ttl,
            wait,
        } => {
            let request = proto::AcquireLeaseRequest {
                provider,
                email: email.unwrap_or_default(),
                ttl: Some(duration(&ttl)?),
                wait_timeout: Some(duration(&wait)?),
                ..Default::default()
            };
            answered(
                conn,
                client.acquire_lease(request).await,
                "credvault.v1.Lease",
            )
        }
        LeasesAction::Renew { lease_id, ttl } => {
            let request = proto::RenewLeaseRequest {
                lease_id,
                ttl: Some(duration(&ttl)?),
            };
            answered(
                conn,
                client.renew_lease(request).await,
                "credvault.v1.Lease",
            )
        }
        LeasesAction::Release { lease_id } => answered(
            conn,
            client
                .release_lease(proto::ReleaseLeaseRequest { lease_id })
                .await,
            EMPTY,
        ),
        LeasesAction::Revoke { lease_id } => answered(
            conn,
            client
                .revoke_lease(proto::RevokeLeaseRequest { lease_id })
                .await,
            EMPTY,
        ),
    }
}

async fn callers(group: Group<CallersAction>) -> Outcome {
    use proto::callers_client::CallersClient;
    let (channel, credential) = connect(&group.conn).await?;
    let mut client = CallersClient::with_interceptor(channel, credential);
    let conn = &group.conn;
    const INFO: &str = "credvault.v1.CallerInfo";
    match group.action {
        CallersAction::List { role: wanted } => {
            let role = wanted.as_deref().map(role).transpose()?;
            let mut all = proto::ListCallersResponse::default();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_callers(proto::ListCallersRequest {
                        page_size: 1000,
                        page_token: page_token.clone(),
                        role: role.map_or(0, |r| r as i32),
                    })
                    .await
                    .map_err(|s| output::refusal(&s))?
                    .into_inner();
                all.callers.extend(page.callers);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            output::print(conn.output, &all, "credvault.v1.ListCallersResponse");
            Ok(())
        }
        CallersAction::Create {
            email,
            secret_file,
            role: roles,
            scope,
        } => {
            let roles = roles
                .iter()
                .map(|r| role(r).map(|r| r as i32))
                .collect::<Result<Vec<_>, _>>()?;
            let request = proto::CreateCallerRequest {
                email,
                secret: read_secret(&secret_file)?,
                roles,
                scopes: scope,
                ..Default::default()
            };
            answered(
                conn,
                client.create_caller(request).await,
                "credvault.v1.CreateCallerResponse",
            )
        }
        CallersAction::Activate => answered(
            conn,
            client
                .activate_caller(proto::ActivateCallerRequest {})
                .await,
            INFO,
        ),
        CallersAction::Update {
            caller_id,
            email,
            add_credits,
            disabled,
            remove_api_key,
        } => {
            let request = proto::UpdateCallerRequest {
                caller_id: caller_id.unwrap_or_default(),
                email: email.unwrap_or_default(),
                add_credits: add_credits.unwrap_or_default(),
                disabled,
                remove_api_keys: remove_api_key,
                ..Default::default()
            };
            answered(conn, client.update_caller(request).await, INFO)
        }
        CallersAction::Delete { caller_id, email } => answered(
            conn,
            client
                .delete_caller(proto::DeleteCallerRequest {
                    caller_id: caller_id.unwrap_or_default(),
                    email: email.unwrap_or_default(),
                })
                .await,
            "google.protobuf.Empty",
        ),
        CallersAction::Whoami => answered(
            conn,
            client.get_caller_info(proto::GetCallerInfoRequest {}).await,
            INFO,
        ),
    }
}

async fn tokens(group: Group<TokensAction>) -> Outcome {
    use proto::callers_client::CallersClient;
    let (channel, credential) = connect(&group.conn).await?;
    let mut client = CallersClient::with_interceptor(channel, credential);
    let conn = &group.conn;
    match group.action {
        TokensAction::Issue => answered(
            conn,
            client
                .issue_token(proto::IssueTokenRequest::default())
                .await,
            "credvault.v1.IssueTokenResponse",
        ),
        TokensAction::List => answered(
            conn,
            client
                .list_tokens(proto::ListTokensRequest::default())
                .await,
            "credvault.v1.ListTokensResponse",
        ),
        TokensAction::Revoke { jti } => answered(
            conn,
            client
                .revoke_token(proto::RevokeTokenRequest {
                    jti,
                    ..Default::default()
                })
                .await,
            "google.protobuf.Empty",
        ),
    }
}

async fn audit(group: Group<AuditAction>) -> Outcome {
    use proto::audit_client::AuditClient;
    let (channel, credential) = connect(&group.conn).await?;
    let mut client = AuditClient::with_interceptor(channel, credential);
    let conn = &group.conn;
    match group.action {
        AuditAction::List {
            page_size,
            caller_id,
        } => answered(
            conn,
            client
                .list_events(proto::ListEventsRequest {
                    page_size,
                    caller_id: caller_id.unwrap_or_default(),
                    ..Default::default()
                })
                .await,
            "credvault.v1.ListEventsResponse",
        ),
        AuditAction::Hash { value_file } => answered(
            conn,
            client
                .audit_hash(proto::AuditHashRequest {
                    value: read_secret(&value_file)?,
                })
                .await,
            "credvault.v1.AuditHashResponse",
        ),
    }
}

async fn keys(group: Group<KeysAction>) -> Outcome {
    use proto::{key_rotation::Phase, keys_client::KeysClient};
    let (channel, credential) = connect(&group.conn).await?;
    let mut client = KeysClient::with_interceptor(channel, credential);
    let conn = &group.conn;
    const ROTATION: &str = "credvault.v1.KeyRotation";
    match group.action {
        KeysAction::Status => answered(
            conn,
            client
                .rotation_status(proto::RotationStatusRequest {})
                .await,
            ROTATION,
        ),
        KeysAction::Rotate { new_key_file } => {
            let mut status = client
                .rotate_master_key(proto::RotateMasterKeyRequest { new_key_file })
                .await
                .map_err(|s| output::refusal(&s))?
                .into_inner();
            // Followed to its end: redrawn in place on a terminal, else a line whenever
            // the counts move.
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut shown = None;
            while status.phase == Phase::Running as i32 {
                let counts = (status.records_examined, status.records_resealed);
                if shown != Some(counts) {
                    let line = format!(
                        "key rotation: {} records examined, {} re-sealed",
                        counts.0, counts.1
                    );
                    match terminal {
                        true => eprint!("\r{line}"),
                        false => eprintln!("{line}"),
                    }
                    shown = Some(counts);
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                status = client
                    .rotation_status(proto::RotationStatusRequest {})
                    .await
                    .map_err(|s| output::refusal(&s))?
                    .into_inner();
            }
            if terminal && shown.is_some() {
                eprintln!();
            }
            output::print(conn.output, &status, ROTATION);
            if status.phase == Phase::Failed as i32 {
                return Err(Failure::refused(
                    "the rotation failed; see the daemon's log",
                ));
            }
            Ok(())
        }
    }
}

async fn watch_events(watch: Watch) -> Outcome {
    let (channel, credential) = connect(&watch.conn).await?;
    let mut stream =
        proto::credentials_client::CredentialsClient::with_interceptor(channel, credential)
            .watch_credentials(proto::WatchCredentialsRequest {
                provider: watch.provider.unwrap_or_default(),
                email: watch.email.unwrap_or_default(),
            })
            .await
            .map_err(|s| output::refusal(&s))?
            .into_inner();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            event = stream.message() => match event {
                Ok(Some(event)) => output::print(watch.conn.output, &event, "credvault.v1.CredentialEvent"),
                Ok(None) => return Ok(()),
                Err(status) => return Err(output::refusal(&status)),
            },
        }
    }
}

async fn health_check(health: Health) -> Outcome {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let channel = health.conn.channel().await?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: health.service.clone(),
        })
        .await
        .map_err(|s| output::refusal(&s))?
        .into_inner();
    output::print(
        health.conn.output,
        &answer,
        "grpc.health.v1.HealthCheckResponse",
    );
    match ServingStatus::try_from(answer.status) {
        Ok(ServingStatus::Serving) => Ok(()),
        _ => Err(Failure::unavailable(format!(
            "{:?} is not serving",
            health.service
        ))),
    }
}
