//! What a ServiceAccount token says about itself, read before (or without) checking
//! its signature: which verifier it goes to, and the identity it claims. Nothing read
//! here is trusted until a verifier has vouched for the token.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;

use super::Refusal;

/// The `iss` of Secret-based (legacy) ServiceAccount tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub aud: Option<Audience>,
    #[serde(default)]
    pub exp: Option<i64>,
    #[serde(default)]
    pub nbf: Option<i64>,
    #[serde(default, rename = "kubernetes.io")]
    pub kubernetes: Option<KubernetesClaim>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/namespace")]
    pub legacy_namespace: Option<String>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/service-account.name")]
    pub legacy_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Clone, Debug, Deserialize)]
pub struct KubernetesClaim {
    pub namespace: String,
    pub serviceaccount: Named,
    #[serde(default)]
    pub pod: Option<Named>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Named {
    pub name: String,
    #[serde(default)]
    pub uid: Option<String>,
}

/// The ServiceAccount a verified token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    /// The pod a projected token is bound to (name, uid).
    pub pod: Option<(String, Option<String>)>,
}

impl ServiceAccount {
    /// `system:serviceaccount:<namespace>:<name>`, as the API server names it.
    pub fn from_username(username: &str) -> Option<Self> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then(|| Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            pod: None,
        })
    }

    /// `k8s:namespace/serviceaccount`, as audit events record it.
    pub fn principal(&self) -> String {
        crate::callers::identity::kubernetes_principal(&self.namespace, &self.name)
    }
}

/// A token's header and claims, decoded but not verified.
pub fn peek(token: &str) -> Result<(Header, Claims), Refusal> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed);
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| Refusal::Malformed);
    let header: Header =
        serde_json::from_slice(&decode(header)?).map_err(|_| Refusal::Malformed)?;
    let claims: Claims =
        serde_json::from_slice(&decode(payload)?).map_err(|_| Refusal::Malformed)?;
    Ok((header, claims))
}

impl Claims {
    /// A Secret-based token: issued by the old token controller, no `exp`, no `aud`.
    pub fn is_legacy(&self) -> bool {
        self.iss.as_deref() == Some(LEGACY_ISSUER) || self.exp.is_none()
    }

    pub fn has_audience(&self, audience: &str) -> bool {
        match &self.aud {
            Some(Audience::One(one)) => one == audience,
            Some(Audience::Many(many)) => many.iter().any(|a| a == audience),
            None => false,
        }
    }

    /// The ServiceAccount the claims name, consistently with `sub` when it is there.
    pub fn service_account(&self) -> Result<ServiceAccount, Refusal> {
        let account = match (&self.kubernetes, &self.legacy_namespace, &self.legacy_name) {
            (Some(k), _, _) => ServiceAccount {
                namespace: k.namespace.clone(),
                name: k.serviceaccount.name.clone(),
                pod: k.pod.as_ref().map(|p| (p.name.clone(), p.uid.clone())),
            },
            (None, Some(namespace), Some(name)) => ServiceAccount {
                namespace: namespace.clone(),
                name: name.clone(),
                pod: None,
            },
            _ => return Err(Refusal::NotServiceAccount),
        };
        let named = self.sub.as_deref().and_then(ServiceAccount::from_username);
        match named {
            Some(s) if s.namespace == account.namespace && s.name == account.name => Ok(account),
            None if self.sub.is_none() => Ok(account),
            _ => Err(Refusal::NotServiceAccount),
        }
    }

    /// The time checks, against `now_secs`.
    pub fn check_time(&self, now_secs: i64) -> Result<(), Refusal> {
        if self.exp.is_some_and(|exp| now_secs >= exp) {
            return Err(Refusal::Expired);
        }
        if self.nbf.is_some_and(|nbf| now_secs < nbf) {
            return Err(Refusal::NotYetValid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: serde_json::Value) -> Claims {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_service_account_is_read_consistently_with_sub() {
        let projected = claims(serde_json::json!({
            "iss": "https://k8s", "aud": "credvault", "exp": 100, "nbf": 10,
            "sub": "system:serviceaccount:jobs:renderer",
            "kubernetes.io": {"namespace": "jobs", "serviceaccount": {"name": "renderer"},
                              "pod": {"name": "renderer-1", "uid": "u"}},
        }));
        assert!(!projected.is_legacy());
        assert!(projected.has_audience("credvault") && !projected.has_audience("vault"));
        let account = projected.service_account().unwrap();
        assert_eq!(account.principal(), "k8s:jobs/renderer");
        assert_eq!(account.pod, Some(("renderer-1".into(), Some("u".into()))));
        assert_eq!(projected.check_time(9), Err(Refusal::NotYetValid));
        assert_eq!(projected.check_time(10), Ok(()));
        assert_eq!(projected.check_time(100), Err(Refusal::Expired));

        let lying = claims(serde_json::json!({
            "exp": 100, "sub": "system:serviceaccount:kube-system:admin",
            "kubernetes.io": {"namespace": "jobs", "serviceaccount": {"name": "renderer"}},
        }));
        assert_eq!(lying.service_account(), Err(Refusal::NotServiceAccount));
        let legacy = claims(serde_json::json!({
            "iss": LEGACY_ISSUER,
            "kubernetes.io/serviceaccount/namespace": "jobs",
            "kubernetes.io/serviceaccount/service-account.name": "renderer",
        }));
        assert!(legacy.is_legacy());
        assert_eq!(legacy.service_account().unwrap().name, "renderer");
        assert_eq!(
            claims(serde_json::json!({"exp": 1})).service_account(),
            Err(Refusal::NotServiceAccount)
        );
    }

    #[test]
    fn only_three_part_json_tokens_are_peeked() {
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.x", "e30.!!.x"] {
            assert!(peek(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ServiceAccount::from_username("system:serviceaccount:a:b:c"),
            None
        );
        assert_eq!(
            ServiceAccount::from_username("system:serviceaccount::b"),
            None
        );
    }
}
