//! Which ServiceAccount is which caller: `namespace` and `service_account` globs (`*`
//! any run, `?` one character) mapped to a caller id, first match wins.

use crate::callers::scope::glob_match;

const MAX_NAME_LEN: usize = 253;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    namespace: String,
    service_account: String,
    caller: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error(
        "bindings: {field} {value:?} is not a Kubernetes name or a glob of one (lower-case letters, digits, '-', '.', '*', '?')"
    )]
    Name { field: &'static str, value: String },
    #[error("bindings: caller must name a caller id")]
    Caller,
}

impl Binding {
    pub fn new(namespace: &str, service_account: &str, caller: &str) -> Result<Self, BindingError> {
        let caller = caller.trim();
        if caller.is_empty() || caller.len() > 128 || caller.chars().any(char::is_whitespace) {
            return Err(BindingError::Caller);
        }
        Ok(Self {
            namespace: name("namespace", namespace)?,
            service_account: name("service_account", service_account)?,
            caller: caller.to_owned(),
        })
    }

    fn matches(&self, namespace: &str, service_account: &str) -> bool {
        glob_match(self.namespace.as_bytes(), namespace.as_bytes())
            && glob_match(self.service_account.as_bytes(), service_account.as_bytes())
    }
}

/// The caller id the first matching binding names.
pub fn caller_for<'a>(
    bindings: &'a [Binding],
    namespace: &str,
    service_account: &str,
) -> Option<&'a str> {
    bindings
        .iter()
        .find(|b| b.matches(namespace, service_account))
        .map(|b| b.caller.as_str())
}

fn name(field: &'static str, value: &str) -> Result<String, BindingError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-.*?".contains(&c));
    match ok {
        true => Ok(value.to_owned()),
        false => Err(BindingError::Name {
            field,
            value: value.chars().take(64).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_binding_wins_and_globs_match_whole_names() {
        let bindings = vec![
            Binding::new("jobs", "renderer", "c_render").unwrap(),
            Binding::new("jobs-*", "worker-?", "c_workers").unwrap(),
            Binding::new("*", "renderer", "c_any_renderer").unwrap(),
        ];
        assert_eq!(caller_for(&bindings, "jobs", "renderer"), Some("c_render"));
        assert_eq!(
            caller_for(&bindings, "jobs-eu", "worker-1"),
            Some("c_workers")
        );
        assert_eq!(caller_for(&bindings, "jobs-eu", "worker-12"), None);
        assert_eq!(
            caller_for(&bindings, "media", "renderer"),
            Some("c_any_renderer")
        );
        assert_eq!(caller_for(&bindings, "jobs", "renderer2"), None);
        assert_eq!(caller_for(&bindings, "xjobs", "worker-1"), None);
    }

    #[test]
    fn names_outside_kubernetes_shape_are_refused() {
        for (ns, sa) in [("", "a"), ("Jobs", "a"), ("jobs", "a b"), ("jobs", "a/b")] {
            assert!(Binding::new(ns, sa, "c").is_err(), "{ns:?}/{sa:?}");
        }
        assert_eq!(
            Binding::new("a", "b", " ").unwrap_err(),
            BindingError::Caller
        );
    }
}
