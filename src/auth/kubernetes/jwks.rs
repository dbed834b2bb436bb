//! Offline verification against the issuer's public keys: a JWKS document on disk
//! (read again when the file changes) or over HTTP (fetched again after `refresh` and
//! on an unknown `kid`, at most every [`UNKNOWN_KID_REFETCH_MS`]). Only RS256 and
//! ES256 are accepted, each key for its own algorithm; symmetric keys in the document
//! are ignored, so `none` and HMAC tokens can never verify.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicI64, Ordering},
    },
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm},
};

use super::{
    Failure, Refusal,
    claims::{Claims, Header, LEGACY_ISSUER},
    fetch::Fetcher,
    settings::{JwksSettings, JwksSource},
};

/// An unknown `kid` fetches the keys again, no more often than this.
const UNKNOWN_KID_REFETCH_MS: i64 = 10_000;

pub struct Jwks {
    issuer: String,
    source: JwksSource,
    token_file: Option<PathBuf>,
    refresh_ms: i64,
    fetcher: Fetcher,
    loaded: RwLock<Option<Arc<Loaded>>>,
    fetching: tokio::sync::Mutex<()>,
    /// When keys were last asked for over HTTP, answered or not: while the issuer is
    /// down, the keys held stay in use and it is asked again at most this often.
    tried_at_ms: AtomicI64,
}

struct Loaded {
    keys: Vec<Key>,
    /// For a file: what it looked like when read.
    stamp: Option<Stamp>,
    at_ms: i64,
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl Jwks {
    pub fn new(settings: &JwksSettings, fetcher: Fetcher) -> Self {
        Self {
            issuer: settings.issuer.clone(),
            source: settings.source.clone(),
            token_file: settings.token_file.clone(),
            refresh_ms: i64::try_from(settings.refresh.as_millis()).unwrap_or(i64::MAX),
            fetcher,
            loaded: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
            tried_at_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// Checks the signature, the issuer, the audience (not for an allowed legacy
    /// token) and the time window.
    pub async fn verify(
        &self,
        token: &str,
        header: &Header,
        claims: &Claims,
        audience: &str,
        now_ms: i64,
    ) -> Result<(), Failure> {
        let algorithm = match header.alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(Refusal::Algorithm.into()),
        };
        let keys = self.keys(now_ms, false).await?;
        let verified = match signed_by(&keys, token, header, algorithm) {
            Err(Refusal::UnknownKey) => {
                let newer = self.keys(now_ms, true).await?;
                signed_by(&newer, token, header, algorithm)
            }
            other => other,
        };
        verified?;
        let legacy = claims.iss.as_deref() == Some(LEGACY_ISSUER);
        if !legacy && claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(Refusal::Issuer.into());
        }
        if !legacy && !claims.has_audience(audience) {
            return Err(Refusal::Audience.into());
        }
        claims.check_time(now_ms.div_euclid(1000))?;
        Ok(())
    }

    /// The keys as last read, read again when they may have changed.
    async fn keys(&self, now_ms: i64, unknown_kid: bool) -> Result<Arc<Loaded>, Failure> {
        let current = self
            .loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(loaded) = &current
            && self.still_good(loaded, now_ms, unknown_kid)
        {
            return Ok(loaded.clone());
        }
        let _one_at_a_time = self.fetching.lock().await;
        let seen = current;
        let current = self
            .loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Another call read them while this one waited.
        let read_meanwhile = match (&seen, &current) {
            (Some(seen), Some(now)) => !Arc::ptr_eq(seen, now),
            (None, now) => now.is_some(),
            (Some(_), None) => false,
        };
        if let Some(loaded) = &current
            && read_meanwhile
            && self.still_good(loaded, now_ms, false)
        {
            return Ok(loaded.clone());
        }
        match self.load(now_ms).await {
            Ok(loaded) => {
                let loaded = Arc::new(loaded);
                *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Some(loaded.clone());
                Ok(loaded)
            }
            Err(reason) => {
                tracing::warn!(%reason, "the ServiceAccount issuer's keys could not be read");
                match current {
                    // Keep verifying with the keys we have; a file's stamp is not
                    // updated, so the next call tries again.
                    Some(loaded) => Ok(loaded),
                    None => Err(Failure::Unavailable),
                }
            }
        }
    }

    fn still_good(&self, loaded: &Loaded, now_ms: i64, unknown_kid: bool) -> bool {
        match &self.source {
            JwksSource::File(path) => loaded.stamp == stamp(path),
            JwksSource::Url(_) | JwksSource::Discovery(_) => {
                let tried = now_ms.saturating_sub(self.tried_at_ms.load(Ordering::Relaxed));
                if (0..UNKNOWN_KID_REFETCH_MS).contains(&tried) {
                    return true;
                }
                let age = now_ms.saturating_sub(loaded.at_ms);
                let refetch_after = match unknown_kid {
                    true => UNKNOWN_KID_REFETCH_MS,
                    false => self.refresh_ms,
                };
                (0..refetch_after).contains(&age)
            }
        }
    }

    async fn load(&self, now_ms: i64) -> Result<Loaded, String> {
        if !matches!(self.source, JwksSource::File(_)) {
            self.tried_at_ms.store(now_ms, Ordering::Relaxed);
        }
        let (bytes, stamp) = match &self.source {
            JwksSource::File(path) => {
                let before = stamp(path);
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|error| format!("reading {}: {error}", path.display()))?;
                (bytes, before)
            }
            JwksSource::Url(url) => (self.fetch_keys(url.clone()).await?, None),
            JwksSource::Discovery(url) => {
                let document = self
                    .fetcher
                    .get("OIDC discovery", url.clone(), self.token_file.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                let jwks_uri = serde_json::from_slice::<serde_json::Value>(&document)
                    .ok()
                    .and_then(|d| d.get("jwks_uri")?.as_str().map(str::to_owned))
                    .ok_or("the discovery document has no jwks_uri")?;
                let jwks_url = url
                    .join(&jwks_uri)
                    .map_err(|_| "the discovery document's jwks_uri is not a URL")?;
                if jwks_url.scheme() != url.scheme() && jwks_url.scheme() != "https" {
                    return Err("the discovery document's jwks_uri is not https".to_owned());
                }
                (self.fetch_keys(jwks_url).await?, None)
            }
        };
        let keys = parse(&bytes)?;
        Ok(Loaded {
            keys,
            stamp,
            at_ms: now_ms,
        })
    }

    async fn fetch_keys(&self, url: reqwest::Url) -> Result<Vec<u8>, String> {
        self.fetcher
            .get("JWKS", url, self.token_file.as_deref())
            .await
            .map_err(|e| e.to_string())
    }
}

/// Whether one of `keys` for the token's algorithm (and `kid`, when it names one)
/// signed it.
fn signed_by(
    loaded: &Loaded,
    token: &str,
    header: &Header,
    algorithm: Algorithm,
) -> Result<(), Refusal> {
    let mut candidates = loaded.keys.iter().filter(|k| {
        k.algorithm == algorithm
            && match (&header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                (Some(_), None) => false,
                (None, _) => true,
            }
    });
    let mut validation = Validation::new(algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let mut any = false;
    let verified = candidates.any(|key| {
        any = true;
        jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation).is_ok()
    });
    match (verified, any) {
        (true, _) => Ok(()),
        (false, true) => Err(Refusal::Signature),
        (false, false) => Err(Refusal::UnknownKey),
    }
}

/// The RS256 and ES256 (P-256) keys of a JWKS document; others are skipped.
fn parse(bytes: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|_| "the JWKS document is not a JWK set")?;
    let keys: Vec<Key> = set.keys.iter().filter_map(key).collect();
    match keys.is_empty() {
        true => Err("the JWKS document holds no RS256 or ES256 key".to_owned()),
        false => Ok(keys),
    }
}

fn key(jwk: &Jwk) -> Option<Key> {
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    let declared = jwk.common.key_algorithm;
    let agrees = match declared {
        None => true,
        Some(KeyAlgorithm::RS256) => algorithm == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => algorithm == Algorithm::ES256,
        Some(_) => false,
    };
    if !agrees {
        return None;
    }
    Some(Key {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rs256_and_es256_keys_are_taken_from_a_document() {
        let document = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
            {"kty": "EC", "crv": "P-384", "kid": "p384",
             "x": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
             "y": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
            {"kty": "RSA", "kid": "rsa", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "rsa-as-ps", "alg": "PS256", "n": "sXch", "e": "AQAB"},
        ]});
        let keys = parse(document.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["rsa"]);
        assert_eq!(keys[0].algorithm, Algorithm::RS256);
        let only_hmac = serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
        assert!(parse(only_hmac.to_string().as_bytes()).is_err());
        assert!(parse(b"not json").is_err());
    }
}
