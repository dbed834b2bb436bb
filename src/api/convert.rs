//! Domain values to protobuf messages, and request fields to domain input.

use prost_types::Timestamp;

use crate::{
    accounts::{Account, SessionInput, Status, mask},
    crypto::SecretString,
    proto,
    timefmt::rfc3339_millis,
};

/// The operator's view: every secret masked.
pub fn masked_account(account: &Account) -> proto::Account {
    let meta = &account.meta;
    let secrets = &account.secrets;
    let secured = |set: bool| {
        if set {
            mask::SECURED.to_owned()
        } else {
            String::new()
        }
    };
    proto::Account {
        provider: meta.provider.clone(),
        email: meta.email.clone(),
        password: secured(secrets.password.is_some()),
        api_key: secured(secrets.api_key.is_some()),
        secret: secured(secrets.secret.is_some()),
        max_jobs: meta.max_jobs as i32,
        jwt: meta.session.as_ref().map(|session| proto::Jwt {
            account_id: session.account_id.clone(),
            expire_time: session.expire_time,
            expire_time_utc: match session.expire_time {
                0 => String::new(),
                secs => rfc3339_millis(secs.saturating_mul(1000)),
            },
            username: session.username.clone(),
            token: secrets
                .token
                .as_ref()
                .map(|token| mask::token(token.expose()))
                .unwrap_or_default(),
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
        // Leases do not exist yet; no job can be running.
        active_jobs: 0,
        created_at: Some(timestamp(meta.created_at_ms)),
        updated_at: Some(timestamp(meta.updated_at_ms)),
        version: meta.version,
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

fn timestamp(ms: i64) -> Timestamp {
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
