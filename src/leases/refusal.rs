//! Why AcquireLease found nothing to give: the words of its refusals.

use std::fmt;

/// "1 job is running", "3 jobs are running".
pub fn jobs_running(count: &usize) -> String {
    match count {
        1 => "1 job is running".to_owned(),
        n => format!("{n} jobs are running"),
    }
}

/// Why one account cannot serve a lease now (other than its slots being taken).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    Disabled,
    /// NEEDS_ATTENTION, with its status reason.
    NeedsAttention(String),
    /// No token valid now, with why none could be had (see [`no_token`]).
    NoToken(String),
}

/// The accounts that could not serve an AcquireLease, counted by cause.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unserved {
    pub provider: String,
    /// The account the request named, if it named one.
    pub email: Option<String>,
    pub causes: Vec<Cause>,
}

impl Unserved {
    pub fn count(&self, kind: fn(&Cause) -> bool) -> usize {
        self.causes.iter().filter(|c| kind(c)).count()
    }

    pub fn disabled(&self) -> usize {
        self.count(|c| matches!(c, Cause::Disabled))
    }

    pub fn needing_attention(&self) -> usize {
        self.count(|c| matches!(c, Cause::NeedsAttention(_)))
    }

    pub fn without_token(&self) -> usize {
        self.count(|c| matches!(c, Cause::NoToken(_)))
    }

    /// The distinct reasons of one kind, in order, joined.
    fn reasons(&self, pick: fn(&Cause) -> Option<&str>) -> String {
        let mut seen: Vec<&str> = Vec::new();
        for reason in self.causes.iter().filter_map(pick) {
            if !seen.contains(&reason) {
                seen.push(reason);
            }
        }
        seen.join("; ")
    }
}

impl fmt::Display for Unserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(email), [cause]) = (&self.email, self.causes.as_slice()) {
            write!(f, "account {}/{email} cannot serve: ", self.provider)?;
            return match cause {
                Cause::Disabled => f.write_str("it is disabled"),
                Cause::NeedsAttention(reason) => write!(f, "it needs attention ({reason})"),
                Cause::NoToken(why) => f.write_str(why),
            };
        }
        write!(f, "no {} account can serve: ", self.provider)?;
        let mut parts = Vec::new();
        if self.disabled() > 0 {
            parts.push(format!("{} disabled", self.disabled()));
        }
        let attention = self.needing_attention();
        if attention > 0 {
            let verb = if attention == 1 { "needs" } else { "need" };
            let reasons = self.reasons(|c| match c {
                Cause::NeedsAttention(reason) => Some(reason),
                _ => None,
            });
            parts.push(format!("{attention} {verb} attention ({reasons})"));
        }
        let tokenless = self.without_token();
        if tokenless > 0 {
            let reasons = self.reasons(|c| match c {
                Cause::NoToken(why) => Some(why),
                _ => None,
            });
            parts.push(format!("{tokenless} without a valid token ({reasons})"));
        }
        parts.push("0 with a free slot".to_owned());
        f.write_str(&parts.join(", "))
    }
}

/// Why an account has no valid token and none could be had now.
pub enum NoToken<'a> {
    /// The provider has no `base_url`: credvault never logs its accounts in.
    CannotLogIn,
    /// The account was logged in a moment ago; the next login is allowed then.
    BudgetSpent { until: &'a str },
    /// A login was tried (now or before) and failed.
    LoginFailed {
        expired_at: Option<&'a str>,
        reason: &'a str,
    },
    /// Not tried yet (another account's login was this request's one).
    NotTried,
}

pub fn no_token(provider: &str, why: NoToken<'_>) -> String {
    let failure = |reason: &'_ str| {
        reason
            .strip_prefix("login failed: ")
            .unwrap_or(reason)
            .to_owned()
    };
    match why {
        NoToken::CannotLogIn => format!(
            "it has no valid token, and credvault cannot log it in: provider {provider} has no base_url"
        ),
        NoToken::BudgetSpent { until } => {
            format!("it has no valid token, and its login budget is spent until {until}")
        }
        NoToken::LoginFailed {
            expired_at: Some(at),
            reason,
        } => format!(
            "its token expired at {at} and logging in failed: {}",
            failure(reason)
        ),
        NoToken::LoginFailed {
            expired_at: None,
            reason,
        } => format!(
            "it has no token yet and logging in failed: {}",
            failure(reason)
        ),
        NoToken::NotTried => "it has no valid token yet; it is logged in at its next turn".into(),
    }
}

#[cfg(test)]
mod tests;
