//! TokenReview: the API server says whether a token is a live ServiceAccount token
//! for credvault's audience (its signature, its expiry, and that the Secret or pod it
//! is bound to still exists).

use std::{collections::HashMap, path::PathBuf};

use reqwest::StatusCode;
use serde::Deserialize;

use super::{Failure, Refusal, claims::ServiceAccount, fetch::Fetcher, settings::ReviewSettings};

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

pub struct Review {
    url: reqwest::Url,
    token_file: PathBuf,
    fetcher: Fetcher,
}

#[derive(Debug, Default, Deserialize)]
struct Answer {
    #[serde(default)]
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
struct Status {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: User,
    #[serde(default)]
    audiences: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct User {
    #[serde(default)]
    username: String,
    #[serde(default)]
    extra: HashMap<String, Vec<String>>,
}

impl Review {
    pub fn new(settings: &ReviewSettings, fetcher: Fetcher) -> Self {
        Self {
            url: settings.url.clone(),
            token_file: settings.token_file.clone(),
            fetcher,
        }
    }

    /// Asks the API server about `token`, for `audience` (none for a legacy token,
    /// which is only ever valid for the API server's own audiences).
    pub async fn review(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<ServiceAccount, Failure> {
        let audiences: Vec<&str> = audience.into_iter().collect();
        let body = serde_json::to_vec(&serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": { "token": token, "audiences": audiences },
        }))
        .map_err(|_| Failure::Unavailable)?;
        let (status, answer) = self
            .fetcher
            .post_json(
                "TokenReview",
                self.url.clone(),
                body,
                Some(&self.token_file),
            )
            .await
            .map_err(|error| {
                tracing::warn!(%error, "the Kubernetes API server did not review a token");
                Failure::Unavailable
            })?;
        if !matches!(status, StatusCode::OK | StatusCode::CREATED) {
            tracing::warn!(
                status = status.as_u16(),
                "the Kubernetes API server refused the TokenReview (does credvault's ServiceAccount have system:auth-delegator?)"
            );
            return Err(Failure::Unavailable);
        }
        let answer: Answer = serde_json::from_slice(&answer).map_err(|_| {
            tracing::warn!("the Kubernetes API server's TokenReview answer is malformed");
            Failure::Unavailable
        })?;
        judge(answer.status, audience)
    }
}

fn judge(status: Status, audience: Option<&str>) -> Result<ServiceAccount, Failure> {
    if !status.authenticated {
        return Err(Refusal::NotAuthenticated.into());
    }
    if let Some(audience) = audience
        && !status.audiences.iter().any(|a| a == audience)
    {
        return Err(Refusal::Audience.into());
    }
    let mut account =
        ServiceAccount::from_username(&status.user.username).ok_or(Refusal::NotServiceAccount)?;
    let one = |key: &str| {
        status
            .user
            .extra
            .get(key)
            .and_then(|values| values.first().cloned())
    };
    account.pod = one(POD_NAME).map(|name| (name, one(POD_UID)));
    Ok(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(json: serde_json::Value) -> Status {
        serde_json::from_value::<Answer>(json).unwrap().status
    }

    #[test]
    fn an_answer_is_judged_on_authenticated_audience_and_username() {
        let accepted = status(serde_json::json!({"status": {
            "authenticated": true,
            "audiences": ["credvault"],
            "user": {
                "username": "system:serviceaccount:jobs:renderer",
                "extra": {POD_NAME: ["renderer-1"], POD_UID: ["u-1"]},
            },
        }}));
        let account = judge(accepted, Some("credvault")).unwrap();
        assert_eq!(
            (account.namespace.as_str(), account.name.as_str()),
            ("jobs", "renderer")
        );
        assert_eq!(account.pod, Some(("renderer-1".into(), Some("u-1".into()))));

        let refused = |json, audience| judge(status(json), audience).unwrap_err();
        assert_eq!(
            refused(
                serde_json::json!({"status": {"authenticated": false}}),
                Some("credvault")
            ),
            Failure::Refused(Refusal::NotAuthenticated)
        );
        let other_audience = serde_json::json!({"status": {
            "authenticated": true, "audiences": ["vault"],
            "user": {"username": "system:serviceaccount:jobs:renderer"},
        }});
        assert_eq!(
            refused(other_audience, Some("credvault")),
            Failure::Refused(Refusal::Audience)
        );
        let a_person = serde_json::json!({"status": {
            "authenticated": true, "audiences": ["credvault"],
            "user": {"username": "alice@example.com"},
        }});
        assert_eq!(
            refused(a_person, Some("credvault")),
            Failure::Refused(Refusal::NotServiceAccount)
        );
        assert!(judge(status(serde_json::json!({})), None).is_err());
    }
}
