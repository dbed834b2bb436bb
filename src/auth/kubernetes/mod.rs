//! Kubernetes ServiceAccount tokens as a credential (`[kubernetes_auth]`).
//!
//! A pod presents the projected, audience-bound token the kubelet mounts for it; the
//! token is verified offline against the issuer's keys ([`jwks`]), by the API server's
//! TokenReview ([`review`]), or both, and its ServiceAccount is mapped to a caller by
//! the configured [`bindings`]. Results are remembered by the token's SHA-256 for at
//! most `cache_secs` and never past the token's `exp`. The token is never logged,
//! kept, or named in an error.

pub mod bindings;
pub mod claims;
mod fetch;
mod jwks;
mod review;
pub mod settings;

use std::sync::Arc;

use crate::{
    cache::{Digest, Expiring, Remembered},
    clock::Clock,
};
use bindings::Binding;
pub use claims::ServiceAccount;
use fetch::Fetcher;
use jwks::Jwks;
use review::Review;
pub use settings::{KubernetesAuthConfig, KubernetesAuthSettings, SettingsError};

/// Verified tokens (and the API server's refusals) remembered at once.
const CAPACITY: usize = 8192;
/// Verifications that may run at once (one per stripe): the same token presented by
/// many calls together is verified once, and a flood of new tokens cannot have more
/// than this many TokenReviews or key fetches in flight.
const STRIPES: usize = 32;

/// Why a ServiceAccount token was refused. The wording names the check that failed,
/// never the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    NotServiceAccount,
    Legacy,
    Audience,
    Expired,
    NotYetValid,
    Algorithm,
    UnknownKey,
    Signature,
    Issuer,
    NotAuthenticated,
    Mismatch,
}

impl Refusal {
    /// The refusal in words (what every error and log line about it says).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Malformed => "it is not a JWT",
            Refusal::NotServiceAccount => "it does not name a ServiceAccount",
            Refusal::Legacy => {
                "it is a legacy Secret-based token (no expiry, no audience); send a projected token (allow_legacy_tokens is off)"
            }
            Refusal::Audience => "its audience does not include this server's",
            Refusal::Expired => "it has expired",
            Refusal::NotYetValid => "it is not valid yet (nbf)",
            Refusal::Algorithm => "its algorithm is not RS256 or ES256",
            Refusal::UnknownKey => "no key of the cluster's issuer has its kid",
            Refusal::Signature => "its signature does not verify against the cluster's keys",
            Refusal::Issuer => "its issuer is not the cluster's",
            Refusal::NotAuthenticated => "the Kubernetes API server did not authenticate it",
            Refusal::Mismatch => {
                "the API server's review names another ServiceAccount or pod than the token"
            }
        }
    }
}

/// A token that could not be accepted: refused, or not verifiable right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Refused(Refusal),
    /// The API server or the issuer's keys could not be reached.
    Unavailable,
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        Failure::Refused(refusal)
    }
}

pub struct KubernetesAuth {
    audience: String,
    cache_for_ms: i64,
    allow_legacy_tokens: bool,
    jwks: Option<Jwks>,
    review: Option<Review>,
    bindings: Vec<Binding>,
    remembered: Remembered<Entry>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    clock: Arc<dyn Clock>,
}

#[derive(Clone)]
struct Entry {
    outcome: Result<ServiceAccount, Refusal>,
    until_ms: i64,
}

impl Expiring for Entry {
    fn expired(&self, now_ms: i64) -> bool {
        self.until_ms <= now_ms
    }
}

impl KubernetesAuth {
    pub fn new(settings: &KubernetesAuthSettings, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let jwks = match &settings.jwks {
            Some(jwks) => {
                let fetcher =
                    Fetcher::new(jwks.ca_pem.as_deref(), std::time::Duration::from_secs(5))
                        .map_err(|e| format!("kubernetes_auth.jwks: {e}"))?;
                Some(Jwks::new(jwks, fetcher))
            }
            None => None,
        };
        let review = match &settings.token_review {
            Some(review) => {
                let fetcher = Fetcher::new(review.ca_pem.as_deref(), review.timeout)
                    .map_err(|e| format!("kubernetes_auth.token_review: {e}"))?;
                Some(Review::new(review, fetcher))
            }
            None => None,
        };
        Ok(Self {
            audience: settings.audience.clone(),
            cache_for_ms: i64::try_from(settings.cache_for.as_millis()).unwrap_or(i64::MAX),
            allow_legacy_tokens: settings.allow_legacy_tokens,
            jwks,
            review,
            bindings: settings.bindings.clone(),
            remembered: Remembered::new(CAPACITY),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            clock,
        })
    }

    /// The caller id bound to `account`, if any.
    pub fn caller_for(&self, account: &ServiceAccount) -> Option<&str> {
        bindings::caller_for(&self.bindings, &account.namespace, &account.name)
    }

    /// The ServiceAccount `token` proves, from what was remembered or verified afresh.
    pub async fn verify(&self, token: &str) -> Result<ServiceAccount, Failure> {
        let key = Remembered::<Entry>::digest(token);
        if let Some(outcome) = self.remembered_outcome(&key) {
            return outcome;
        }
        let _stripe = self.stripes[usize::from(key[0]) % STRIPES].lock().await;
        // Verified by the call this one waited for.
        if let Some(outcome) = self.remembered_outcome(&key) {
            return outcome;
        }
        let now_ms = self.clock.now_ms();
        let verified = self.verify_afresh(token, now_ms).await;
        let until_ms = now_ms.saturating_add(self.cache_for_ms);
        let entry = match &verified {
            Ok((account, exp)) => Some(Entry {
                outcome: Ok(account.clone()),
                until_ms: exp.map_or(until_ms, |exp| until_ms.min(exp.saturating_mul(1000))),
            }),
            // The API server's word, which costs a round trip to ask again.
            Err(Failure::Refused(refusal @ (Refusal::NotAuthenticated | Refusal::Mismatch))) => {
                Some(Entry {
                    outcome: Err(*refusal),
                    until_ms,
                })
            }
            Err(_) => None,
        };
        if let Some(entry) = entry.filter(|e| e.until_ms > now_ms) {
            self.remembered.insert(key, entry, now_ms);
        }
        verified.map(|(account, _)| account)
    }

    /// What is remembered about the token filed under `key`, while it holds.
    fn remembered_outcome(&self, key: &Digest) -> Option<Result<ServiceAccount, Failure>> {
        let entry = self.remembered.get(key)?;
        if entry.expired(self.clock.now_ms()) {
            self.remembered.remove(key);
            return None;
        }
        Some(entry.outcome.map_err(Failure::Refused))
    }

    /// Every check, in order of cost; answers the ServiceAccount and the token's `exp`.
    async fn verify_afresh(
        &self,
        token: &str,
        now_ms: i64,
    ) -> Result<(ServiceAccount, Option<i64>), Failure> {
        let (header, claims) = claims::peek(token)?;
        let legacy = claims.is_legacy();
        if legacy && !self.allow_legacy_tokens {
            return Err(Refusal::Legacy.into());
        }
        let mut account = claims.service_account()?;
        claims.check_time(now_ms.div_euclid(1000))?;
        if !legacy && !claims.has_audience(&self.audience) {
            return Err(Refusal::Audience.into());
        }
        if let Some(jwks) = &self.jwks {
            jwks.verify(token, &header, &claims, &self.audience, now_ms)
                .await?;
        }
        if let Some(review) = &self.review {
            let audience = (!legacy).then_some(self.audience.as_str());
            let reviewed = review.review(token, audience).await?;
            if !same_pod(&reviewed, &account)
                || reviewed.namespace != account.namespace
                || reviewed.name != account.name
            {
                return Err(Refusal::Mismatch.into());
            }
            account.pod = reviewed.pod.or(account.pod);
        }
        Ok((account, claims.exp))
    }
}

/// The review's pod extras agree with the token's pod claim, where both name one.
fn same_pod(reviewed: &ServiceAccount, token: &ServiceAccount) -> bool {
    match (&reviewed.pod, &token.pod) {
        (Some((name, uid)), Some((token_name, token_uid))) => {
            name == token_name
                && match (uid, token_uid) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
        }
        _ => true,
    }
}
