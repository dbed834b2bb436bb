//! Pools in bulk: `credvault accounts import FILE` and `credvault accounts export`.
//!
//! Import reads JSON Lines (one CreateAccount-shaped object a line, in proto3 JSON as
//! grpcurl takes it) or CSV with a header naming those fields (`provider,email,
//! password,maxJobs,…`; `jwt` holds the session token). Each line is one account:
//! created, or with `--upsert` updated with compare-and-set (its version read first),
//! or skipped when it exists; a line that fails is reported with why and the rest go
//! on. Nothing it prints carries a secret: lines are named by number and account.
//!
//! Export writes the same JSON Lines: without secrets by default (the fields are left
//! out, so the file re-imports without overwriting anything secret), or with them via
//! RevealAccount, one audited and charged reveal per account, refused on a terminal
//! unless `--yes`.

use std::io::IsTerminal;

use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage};
use serde_json::{Map, Value};
use tonic::{Code, service::interceptor::InterceptedService, transport::Channel};

use super::{Failure, connect::Credential, output};
use crate::proto::{self, accounts_client::AccountsClient};

type Accounts = AccountsClient<InterceptedService<Channel, Credential>>;

/// What became of the lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub created: usize,
    pub updated: usize,
    pub skipped: usize,
    pub refused: usize,
}

/// The lines of `text` as CreateAccount requests (or why each is not one), numbered
/// from 1; CSV when `csv`.
pub fn parse(text: &str, csv: bool) -> Vec<(usize, Result<proto::CreateAccountRequest, String>)> {
    let mut rows: Vec<(usize, Result<Value, String>)> = Vec::new();
    if csv {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            return Vec::new();
        };
        let names = split_csv(header);
        for (n, line) in lines {
            let cells = split_csv(line);
            let row = if cells.len() != names.len() {
                Err(format!(
                    "{} fields, the header names {}",
                    cells.len(),
                    names.len()
                ))
            } else {
                Ok(csv_object(&names, &cells))
            };
            rows.push((n + 1, row));
        }
    } else {
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row = serde_json::from_str::<Value>(line).map_err(|e| format!("not JSON: {e}"));
            rows.push((n + 1, row));
        }
    }
    rows.into_iter()
        .map(|(n, row)| (n, row.and_then(|value| request(&value))))
        .collect()
}

/// A CSV row as the JSON object a JSON Lines file would hold: numbers and booleans
/// where the field is one, `jwt` as the session token.
fn csv_object(names: &[String], cells: &[String]) -> Value {
    let mut object = Map::new();
    for (name, cell) in names.iter().zip(cells) {
        if cell.is_empty() {
            continue;
        }
        let value = match name.as_str() {
            "maxJobs" | "max_jobs" => cell
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(cell.clone())),
            "disabled" => Value::Bool(cell.eq_ignore_ascii_case("true")),
            "jwt" => serde_json::json!({ "token": cell }),
            _ => Value::from(cell.clone()),
        };
        object.insert(name.clone(), value);
    }
    Value::Object(object)
}

/// One CSV line's fields: commas separate, double quotes quote (`""` is a quote).
fn split_csv(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        let cell = cells.last_mut().expect("one cell at least");
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => cells.push(String::new()),
            (c, _) => cell.push(c),
        }
    }
    cells.iter().map(|c| c.trim().to_owned()).collect()
}

/// A JSON object as a CreateAccount request, read by the proto3 JSON rules (so the
/// names and forms are grpcurl's); unknown fields are refused.
fn request(value: &Value) -> Result<proto::CreateAccountRequest, String> {
    let descriptor = output::descriptor("credvault.v1.CreateAccountRequest")
        .ok_or("the CreateAccountRequest schema is missing from this build")?;
    let dynamic = DynamicMessage::deserialize_with_options(
        descriptor,
        value,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| {
        format!(
            "not a CreateAccount request: {}",
            without_values(&e.to_string())
        )
    })?;
    proto::CreateAccountRequest::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| format!("not a CreateAccount request: {e}"))
}

/// A parser's message without the values it quotes between backticks (a mistyped
/// field could be a password).
fn without_values(message: &str) -> String {
    let mut out = String::new();
    for (n, part) in message.split('`').enumerate() {
        out.push_str(if n % 2 == 1 { "`…`" } else { part });
    }
    out
}

/// Imports every line; prints a line of report per line, and the totals.
pub async fn import(
    client: &mut Accounts,
    lines: Vec<(usize, Result<proto::CreateAccountRequest, String>)>,
    dry_run: bool,
    upsert: bool,
) -> Report {
    let mut report = Report::default();
    // A bar on stderr when the report goes elsewhere (a file) and stderr is a terminal.
    let mut progress = (!std::io::stdout().is_terminal())
        .then(|| crate::ops::progress::Progress::new("import", lines.len() as u64));
    for (n, line) in lines {
        if let Some(progress) = progress.as_mut() {
            progress.advance(1);
        }
        let request = match line {
            Ok(request) => request,
            Err(why) => {
                report.refused += 1;
                println!("line {n}: refused: {why}");
                continue;
            }
        };
        let name = format!("{}/{}", request.provider, request.email);
        // A dry run checks here what it can of what the server would check on create.
        if dry_run && let Err(why) = crate::validate::email(&request.email) {
            report.refused += 1;
            println!("line {n}: refused: {name}: {why}");
            continue;
        }
        let existing = client
            .get_account(proto::GetAccountRequest {
                provider: request.provider.clone(),
                email: request.email.clone(),
            })
            .await;
        let outcome = match (existing, dry_run, upsert) {
            (Err(status), _, _) if status.code() != Code::NotFound => Err(status),
            (Err(_), true, _) => Ok("would be created"),
            (Err(_), false, _) => client.create_account(request).await.map(|_| "created"),
            (Ok(_), _, false) => Ok("exists, skipped"),
            (Ok(_), true, true) => Ok("would be updated"),
            (Ok(found), false, true) => client
                .update_account(update(request, found.get_ref().version))
                .await
                .map(|_| "updated"),
        };
        match outcome {
            Ok(done) => {
                match done {
                    "created" | "would be created" => report.created += 1,
                    "updated" | "would be updated" => report.updated += 1,
                    _ => report.skipped += 1,
                }
                println!("line {n}: {done}: {name}");
            }
            Err(status) => {
                report.refused += 1;
                println!(
                    "line {n}: refused: {name}: {:?}: {}",
                    status.code(),
                    status.message()
                );
            }
        }
    }
    if let Some(progress) = progress.as_mut() {
        progress.finish();
    }
    let mode = if dry_run {
        " (dry run: nothing written)"
    } else {
        ""
    };
    println!(
        "{} created, {} updated, {} skipped, {} refused{mode}",
        report.created, report.updated, report.skipped, report.refused
    );
    report
}

/// The update that makes an existing account what the line says, if it is still at
/// `version`.
fn update(line: proto::CreateAccountRequest, version: u64) -> proto::UpdateAccountRequest {
    let given = |text: String| (!text.is_empty()).then_some(text);
    proto::UpdateAccountRequest {
        provider: line.provider,
        email: line.email,
        max_jobs: (line.max_jobs != 0).then_some(line.max_jobs),
        password: given(line.password),
        disabled: Some(line.disabled),
        labels: line.labels,
        api_key: given(line.api_key),
        secret: given(line.secret),
        jwt: line.jwt,
        expected_version: Some(version),
        ..Default::default()
    }
}

/// Every account (of `provider`), masked, read a page at a time.
pub async fn all_accounts(
    accounts: &mut Accounts,
    provider: Option<String>,
) -> Result<Vec<proto::Account>, Failure> {
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = accounts
            .list_accounts(proto::ListAccountsRequest {
                provider: provider.clone().unwrap_or_default(),
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await
            .map_err(|s| output::refusal(&s))?
            .into_inner();
        listed.extend(page.accounts);
        if page.next_page_token.is_empty() {
            return Ok(listed);
        }
        page_token = page.next_page_token;
    }
}

/// Writes every account (of `provider`) as JSON Lines on stdout: without secrets, or
/// with them revealed one audited call at a time.
pub async fn export(
    accounts: &mut Accounts,
    reveal: Option<
        &mut proto::credentials_client::CredentialsClient<InterceptedService<Channel, Credential>>,
    >,
    provider: Option<String>,
    yes: bool,
) -> Result<usize, Failure> {
    if reveal.is_some() && std::io::stdout().is_terminal() && !yes {
        return Err(Failure::usage(
            "an export with secrets would print them on this terminal: redirect it to a file, or add --yes",
        ));
    }
    let listed = all_accounts(accounts, provider).await?;
    let mut reveal = reveal;
    for account in &listed {
        let mut line = proto::CreateAccountRequest {
            provider: account.provider.clone(),
            email: account.email.clone(),
            max_jobs: account.max_jobs,
            labels: account.labels.clone(),
            disabled: account.disabled,
            ..Default::default()
        };
        if let Some(credentials) = reveal.as_mut() {
            let open = credentials
                .reveal_account(proto::RevealAccountRequest {
                    provider: account.provider.clone(),
                    email: account.email.clone(),
                })
                .await
                .map_err(|s| output::refusal(&s))?
                .into_inner();
            line.password = open.password;
            line.api_key = open.api_key;
            line.secret = open.secret;
            line.jwt = open
                .jwt
                .filter(|j| !j.token.is_empty())
                .map(|j| proto::JwtInput {
                    token: j.token,
                    account_id: j.account_id,
                    username: j.username,
                    expire_time: j.expire_time,
                });
        }
        let value = output::json(&line, "credvault.v1.CreateAccountRequest");
        println!("{}", serde_json::to_string(&value).unwrap_or_default());
    }
    Ok(listed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_and_csv_read_the_same_and_bad_lines_say_why() {
        let jsonl = concat!(
            r#"{"provider":"pixverse","email":"a@example.com","password":"pw-1","maxJobs":3}"#,
            "\n\n",
            r#"{"provider":"pixverse","email":"b@example.com","colour":"red"}"#,
            "\nnot json\n"
        );
        let parsed = parse(jsonl, false);
        assert_eq!(parsed.len(), 3);
        let first = parsed[0].1.as_ref().unwrap();
        assert_eq!((first.email.as_str(), first.max_jobs), ("a@example.com", 3));
        assert_eq!(parsed[1].0, 3);
        assert!(parsed[1].1.as_ref().unwrap_err().contains("colour"));
        assert!(parsed[2].1.as_ref().unwrap_err().starts_with("not JSON"));
        // A value of the wrong type is not echoed (it could be a password).
        let typed = parse(
            r#"{"provider":"p","email":"e@x.com","password":12345678}"#,
            false,
        );
        let why = typed[0].1.as_ref().unwrap_err();
        assert!(!why.contains("12345678"), "{why}");

        let csv = "provider,email,password,maxJobs,jwt,disabled\n\
                   pixverse,a@example.com,\"pw,1\"\"x\",3,eyJ.a.b,true\n\
                   pixverse,short@example.com\n";
        let parsed = parse(csv, true);
        let first = parsed[0].1.as_ref().unwrap();
        assert_eq!(first.password, "pw,1\"x");
        assert_eq!(first.max_jobs, 3);
        assert!(first.disabled);
        assert_eq!(first.jwt.as_ref().unwrap().token, "eyJ.a.b");
        assert_eq!(parsed[1].0, 3);
        assert!(parsed[1].1.is_err());
    }
}
