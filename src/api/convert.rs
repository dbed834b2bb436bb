//! Domain values to protobuf messages, and request fields to domain input.

use std::collections::BTreeSet;

use prost_types::Timestamp;

use crate::{
    accounts::{Account, SessionInput, Status, mask},
    auth::Caller,
    callers::{CallerRecord, Role, TokenEntry},
    crypto::SecretString,
    proto,
    timefmt::rfc3339_millis,
    validate::FieldError,
};

/// The operator's view: every secret masked. `active_jobs`: leases holding its slots.
pub fn masked_account(account: &Account, active_jobs: usize) -> proto::Account {
    account_view(account, active_jobs, Secrets::Masked)
}

/// The unmasked view, for RevealAccount only.
pub fn revealed_account(account: &Account, active_jobs: usize) -> proto::Account {
    account_view(account, active_jobs, Secrets::Revealed)
}

#[derive(Clone, Copy)]
enum Secrets {
    Masked,
    Revealed,
}

fn account_view(account: &Account, active_jobs: usize, shown: Secrets) -> proto::Account {
    let meta = &account.meta;
    let secrets = &account.secrets;
    let show = |secret: &Option<SecretString>, mask: fn(&str) -> String| match (secret, shown) {
        (None, _) => String::new(),
        (Some(secret), Secrets::Masked) => mask(secret.expose()),
        (Some(secret), Secrets::Revealed) => secret.expose().to_owned(),
    };
    let secured = |_: &str| mask::SECURED.to_owned();
    proto::Account {
        provider: meta.provider.clone(),
        email: meta.email.clone(),
        password: show(&secrets.password, secured),
        api_key: show(&secrets.api_key, secured),
        secret: show(&secrets.secret, secured),
        max_jobs: meta.max_jobs as i32,
        jwt: meta.session.as_ref().map(|session| proto::Jwt {
            account_id: session.account_id.clone(),
            expire_time: session.expire_time,
            expire_time_utc: match session.expire_time {
                0 => String::new(),
                secs => rfc3339_millis(secs.saturating_mul(1000)),
            },
            username: session.username.clone(),
            token: show(&secrets.token, mask::token),
            generation: session.generation,
        }),
        status: status(meta.effective_status()) as i32,
        status_reason: meta.status_reason.clone(),
        credits: meta.credits.as_ref().map(|credits| proto::Credits {
            total: credits.total,
            remaining: credits.remaining,
            valid_from: credits.valid_from_ms.map(timestamp),
            valid_until: credits.valid_until_ms.map(timestamp),
        }),
        active_jobs: i32::try_from(active_jobs).unwrap_or(i32::MAX),
        created_at: Some(timestamp(meta.created_at_ms)),
        updated_at: Some(timestamp(meta.updated_at_ms)),
        version: meta.version,
        last_refresh_at: meta
            .session
            .as_ref()
            .filter(|s| s.last_refresh_at_ms > 0)
            .map(|s| timestamp(s.last_refresh_at_ms)),
        disabled: meta.disabled,
        labels: meta.labels.clone().into_iter().collect(),
    }
}

fn status(status: Status) -> proto::account::Status {
    match status {
        Status::Active => proto::account::Status::Active,
        Status::Refreshing => proto::account::Status::Refreshing,
        Status::NeedsAttention => proto::account::Status::NeedsAttention,
        Status::Disabled => proto::account::Status::Disabled,
    }
}

pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A secret request field: empty means "not given". The string moves into the secret
/// type without a copy, so the only plaintext left is the decoder's buffer.
pub fn secret(value: String) -> Option<SecretString> {
    (!value.is_empty()).then(|| SecretString::from(value))
}

pub fn session(input: Option<proto::JwtInput>) -> Option<SessionInput> {
    input.map(|jwt| SessionInput {
        token: SecretString::from(jwt.token),
        account_id: jwt.account_id,
        username: jwt.username,
        expire_time: jwt.expire_time,
    })
}

pub fn caller_info(record: &CallerRecord, now_ms: i64) -> proto::CallerInfo {
    proto::CallerInfo {
        id: record.id.clone(),
        email: record.email.clone(),
        name: record.name.clone(),
        created_at: Some(timestamp(record.created_at_ms)),
        roles: record.roles.iter().map(|r| role(*r) as i32).collect(),
        scopes: record.scopes.clone(),
        balance: record.credits.as_ref().map_or(0, |c| c.balance(now_ms)),
        credits: record.credits.as_ref().map(|c| proto::CallerCredits {
            total: c.total,
            remaining: c.remaining,
            valid_from: c.valid_from_ms.map(timestamp),
            valid_until: c.valid_until_ms.map(timestamp),
        }),
        unmetered: record.credits.is_none(),
        groups: record.groups.clone(),
        disabled: record.disabled,
        api_keys: record.keys.len() as i32,
        activated_keys: record.activated_keys() as i32,
        version: record.version,
        keys: record
            .keys
            .iter()
            .map(|key| proto::ApiKeyInfo {
                key_id: key.key_id.clone(),
                created_at: Some(timestamp(key.created_at_ms)),
                activated_at: key.activated_at_ms.map(timestamp),
            })
            .collect(),
    }
}

pub fn profile(record: &CallerRecord, caller: &Caller) -> proto::Profile {
    proto::Profile {
        id: record.id.clone(),
        email: record.email.clone(),
        name: record.name.clone(),
        status: Some(proto::SessionStatus {
            invited: true,
            approved: !record.roles.is_empty(),
            registered: record.secret_mac.is_some(),
            confirmed: record.activated_keys() > 0,
        }),
        roles: record.roles.iter().map(|r| role(*r) as i32).collect(),
        permissions: caller
            .permissions()
            .iter()
            .map(|p| p.name().to_owned())
            .collect(),
        groups: record.groups.clone(),
        // credvault has no second factor; these say so rather than being left out.
        two_factor_verified: false,
        has_enforced_2fa: false,
    }
}

pub fn token_info(entry: &TokenEntry) -> proto::TokenInfo {
    proto::TokenInfo {
        jti: entry.jti.clone(),
        kind: entry.kind.name().to_owned(),
        issued_at: Some(timestamp(entry.issued_at_ms)),
        expires_at: Some(timestamp(entry.expires_at_ms)),
        revoked: entry.revoked_at_ms.is_some(),
    }
}

pub fn role(role: Role) -> proto::Role {
    match role {
        Role::Admin => proto::Role::Admin,
        Role::Operator => proto::Role::Operator,
        Role::Consumer => proto::Role::Consumer,
    }
}

pub fn roles(values: &[i32]) -> Result<BTreeSet<Role>, FieldError> {
    values
        .iter()
        .map(|value| match proto::Role::try_from(*value) {
            Ok(proto::Role::Admin) => Ok(Role::Admin),
            Ok(proto::Role::Operator) => Ok(Role::Operator),
            Ok(proto::Role::Consumer) => Ok(Role::Consumer),
            Ok(proto::Role::Unspecified) | Err(_) => Err(FieldError::UnknownRole(*value)),
        })
        .collect()
}

/// google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z. A
/// time outside it could be stored, but then not rendered as proto3 JSON by clients.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

pub fn timestamp_ms(field: &'static str, ts: Option<Timestamp>) -> Result<Option<i64>, FieldError> {
    ts.map(|ts| {
        ts.seconds
            .checked_mul(1000)
            .and_then(|ms| ms.checked_add(i64::from(ts.nanos / 1_000_000)))
            .filter(|_| (0..1_000_000_000).contains(&ts.nanos))
            .filter(|_| TIMESTAMP_SECONDS.contains(&ts.seconds))
            .ok_or(FieldError::Timestamp(field))
    })
    .transpose()
}
