//! Field checks for request input. Each failure names the field, in the wording of the
//! reference APIs ("missing parameter: [email]").

use std::collections::BTreeMap;

use crate::{
    crypto::SecretString,
    providers::{ProviderSpec, Providers},
};

pub const MAX_EMAIL_LEN: usize = 254;
pub const MAX_PROVIDER_LEN: usize = 64;
pub const MAX_SECRET_LEN: usize = 4096;
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
pub const MAX_NAME_LEN: usize = 256;
/// Caller ids, token ids, lease ids, page tokens, RPC names.
pub const MAX_ID_LEN: usize = 128;
pub const MAX_PATH_LEN: usize = 4096;
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_LEN: usize = 63;
pub const MAX_LABEL_VALUE_LEN: usize = 256;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("missing parameter: [{0}]")]
    Missing(&'static str),
    #[error("invalid parameter: [{0}] is not a valid email address")]
    MalformedEmail(&'static str),
    #[error("invalid email domain for \"{0}\"")]
    EmailDomain(String),
    #[error("invalid parameter: [provider] unknown provider \"{name}\" (configured: {known})")]
    UnknownProvider { name: String, known: String },
    #[error(
        "invalid parameter: [max_jobs] must be between {min} and {max} for provider \"{provider}\", got {got}"
    )]
    MaxJobs {
        provider: String,
        min: u32,
        max: u32,
        got: i64,
    },
    #[error("invalid parameter: [{field}] is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("invalid parameter: [{0}] contains control characters")]
    ControlCharacters(&'static str),
    #[error("invalid parameter: [secret] is only used together with [api_key]")]
    SecretWithoutApiKey,
    #[error("invalid parameter: [labels] holds more than {MAX_LABELS} labels")]
    TooManyLabels,
    #[error(
        "invalid parameter: [labels] keys are 1 to {MAX_LABEL_KEY_LEN} characters of a-z, 0-9, '.', '_', '-' and '/'"
    )]
    LabelKey,
    #[error("invalid parameter: [jwt.expire_time] must not be negative")]
    NegativeExpiry,
    #[error("invalid parameter: [page_size] must be between 0 and {max}, got {got}")]
    PageSize { max: u32, got: i64 },
    #[error("invalid parameter: [page_token] is not a token returned by ListAccounts")]
    PageToken,
    #[error("invalid parameter: [secret] must be at least {min} characters")]
    SecretTooShort { min: usize },
    #[error("invalid parameter: [roles] {0} is not a role (admin, operator, consumer)")]
    UnknownRole(i32),
    #[error("invalid parameter: [scopes] \"{0}\" is not \"provider\" or \"provider/email-glob\"")]
    Scope(String),
    #[error("invalid parameter: [{0}] holds too many entries")]
    TooMany(&'static str),
    #[error("invalid parameter: give one of [{0}] and [{1}]")]
    OneOf(&'static str, &'static str),
    #[error("invalid parameter: [{field}] must be between {min_ms} ms and {max_ms} ms")]
    Duration {
        field: &'static str,
        min_ms: i64,
        max_ms: i64,
    },
    #[error("invalid parameter: [jwt] is not a JWT issued by this credvault")]
    ForeignJwt,
    #[error("invalid parameter: [{0}] is not a valid timestamp")]
    Timestamp(&'static str),
}

/// A caller's value as an error message may show it: without control characters and
/// at most 64 characters, so that no answer grows with its input.
pub fn shown(value: &str) -> String {
    const MAX_SHOWN: usize = 64;
    let mut shown: String = value
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_SHOWN)
        .collect();
    if value
        .chars()
        .filter(|c| !c.is_control())
        .nth(MAX_SHOWN)
        .is_some()
    {
        shown.push('…');
    }
    shown
}

/// Checks a plain (non-secret) text field: present if `required`, bounded, printable.
pub fn text(
    field: &'static str,
    value: &str,
    max: usize,
    required: bool,
) -> Result<(), FieldError> {
    if required && value.is_empty() {
        return Err(FieldError::Missing(field));
    }
    if value.len() > max {
        return Err(FieldError::TooLong { field, max });
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::ControlCharacters(field));
    }
    Ok(())
}

/// Checks a secret field without ever echoing it.
pub fn secret(field: &'static str, value: &SecretString, max: usize) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::Missing(field));
    }
    text(field, value.expose(), max, true)
}

/// Validates an address and returns it lower-cased, the form accounts are keyed by.
pub fn email(value: &str) -> Result<String, FieldError> {
    text("email", value, MAX_EMAIL_LEN, true)?;
    let Some((local, domain)) = value.rsplit_once('@') else {
        return Err(FieldError::MalformedEmail("email"));
    };
    if !local_part_ok(local) {
        return Err(FieldError::MalformedEmail("email"));
    }
    if !domain_ok(&domain.to_ascii_lowercase()) {
        return Err(FieldError::EmailDomain(shown(value)));
    }
    Ok(value.to_lowercase())
}

fn local_part_ok(local: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+/=?^_`{|}~.-";
    !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || SPECIALS.contains(c))
}

fn domain_ok(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 || domain.len() > 253 {
        return false;
    }
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    labels.iter().all(label_ok) && tld_listed(labels[labels.len() - 1])
}

/// Whether the top-level label is on the public suffix list (embedded by `psl`, so the
/// check runs offline). Reserved names that never receive mail (`example`, `invalid`,
/// `localhost`, `local`, `test`) are not on it; neither are made-up ones (`ext`).
fn tld_listed(tld: &str) -> bool {
    psl::suffix(tld.as_bytes()).is_some_and(|suffix| suffix.is_known())
}

/// Looks a provider up by name; an unknown name lists the configured ones.
pub fn provider<'a>(providers: &'a Providers, name: &str) -> Result<&'a ProviderSpec, FieldError> {
    text("provider", name, MAX_PROVIDER_LEN, true)?;
    providers
        .get(name)
        .ok_or_else(|| FieldError::UnknownProvider {
            name: shown(name),
            known: providers.names().join(", "),
        })
}

pub fn max_jobs(provider: &str, spec: &ProviderSpec, got: i64) -> Result<u32, FieldError> {
    let out_of_range = || FieldError::MaxJobs {
        provider: provider.to_owned(),
        min: spec.min_jobs,
        max: spec.max_jobs,
        got,
    };
    let value = u32::try_from(got).map_err(|_| out_of_range())?;
    if value < spec.min_jobs || value > spec.max_jobs {
        return Err(out_of_range());
    }
    Ok(value)
}

pub fn labels(labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if labels.len() > MAX_LABELS {
        return Err(FieldError::TooManyLabels);
    }
    for (key, value) in labels {
        label_key(key)?;
        text("labels", value, MAX_LABEL_VALUE_LEN, false)?;
    }
    Ok(())
}

pub fn label_key(key: &str) -> Result<(), FieldError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_LABEL_KEY_LEN
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c));
    ok.then_some(()).ok_or(FieldError::LabelKey)
}

#[cfg(test)]
mod tests;
