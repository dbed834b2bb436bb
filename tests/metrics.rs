//! `/metrics` scraped over real HTTP after a scripted run. In a test binary of its own:
//! the metrics recorder is one per process, and no other test may add to its counts.

mod support;

use std::{collections::HashMap, sync::Arc};

use credvault::{
    clock::SystemClock,
    providers::{ProviderConfig, ProviderKind},
};
use fake_upstream::FakeUpstream;
use support::{Auth, TestServer, pixverse, proto, upstream_jwt};
use tonic::Code;

const SECRET: &str = "metrics-client-secret-0123456789abcdef-0123456789";

/// Every sample line as `name{labels}` → value.
fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(key, _)| {
            let Some(rest) = key.strip_prefix(name) else {
                return false;
            };
            let rest = rest.strip_prefix('{').unwrap_or(rest);
            (rest.is_empty() || key.starts_with(&format!("{name}{{")))
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
}

#[tokio::test]
async fn metrics_show_what_a_scripted_run_did() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start(Arc::new(SystemClock)).await.unwrap();
    fake.add_user("login@example.com", "pw-123456");
    let mut config = support::config(dir.path(), &support::new_key());
    config.metrics_listen = "127.0.0.1:0".into();
    config.providers.insert(
        "pixverse".into(),
        ProviderConfig {
            base_url: Some(fake.base_url()),
            timeout_secs: Some(5),
            ..ProviderConfig::of(ProviderKind::Pixverse)
        },
    );
    let server = TestServer::start_with(config).await;
    let metrics = server.metrics.expect("a metrics listener");

    let mut accounts = server.accounts().await;
    for (email, max_jobs, disabled) in [("a@example.com", 4, false), ("b@example.com", 2, true)] {
        accounts
            .create_account(proto::CreateAccountRequest {
                max_jobs,
                disabled,
                jwt: Some(proto::JwtInput {
                    token: upstream_jwt(1_900_000_000, email),
                    ..Default::default()
                }),
                ..pixverse(email, "pw-123456")
            })
            .await
            .unwrap();
    }
    // An account without a token is logged in at creation: one successful login.
    accounts
        .create_account(proto::CreateAccountRequest {
            max_jobs: 3,
            ..pixverse("login@example.com", "pw-123456")
        })
        .await
        .unwrap();
    let (_, key) = support::activated_caller(
        &server,
        proto::CreateCallerRequest {
            email: "svc@example.com".into(),
            secret: SECRET.into(),
            roles: vec![proto::Role::Consumer as i32],
            scopes: vec!["pixverse".into()],
            ..Default::default()
        },
    )
    .await;
    let mut credentials = server.credentials(Auth::api_key(&key, SECRET)).await;
    credentials
        .acquire_lease(proto::AcquireLeaseRequest {
            provider: "pixverse".into(),
            email: "a@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    credentials
        .reveal_account(proto::RevealAccountRequest {
            provider: "pixverse".into(),
            email: "a@example.com".into(),
        })
        .await
        .unwrap();
    let missing = credentials
        .reveal_account(proto::RevealAccountRequest {
            provider: "pixverse".into(),
            email: "nobody@example.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let refused = server
        .credentials(Auth::bearer("not-a-token"))
        .await
        .reveal_account(proto::RevealAccountRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    credvault::refresh::providers::install_crypto_provider();
    let response = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let page = response.text().await.unwrap();
    let s = samples(&page);
    let reveal = "credvault.v1.Credentials/RevealAccount";
    let count = |code: &str| {
        value(
            &s,
            "credvault_rpc_requests_total",
            &[("method", reveal), ("code", code)],
        )
    };
    assert_eq!(count("OK"), Some(1.0), "{page}");
    assert_eq!(count("NOT_FOUND"), Some(1.0));
    assert_eq!(count("UNAUTHENTICATED"), Some(1.0));
    assert_eq!(
        value(
            &s,
            "credvault_rpc_duration_seconds_count",
            &[("method", reveal), ("code", "OK")]
        ),
        Some(1.0)
    );
    assert!(page.contains("credvault_rpc_duration_seconds_bucket{"));
    let pixverse = [("provider", "pixverse")];
    assert_eq!(
        value(
            &s,
            "credvault_logins_total",
            &[("provider", "pixverse"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
    let accounts_with = |status: &str| {
        value(
            &s,
            "credvault_accounts",
            &[("provider", "pixverse"), ("status", status)],
        )
    };
    assert_eq!(accounts_with("ACTIVE"), Some(2.0));
    assert_eq!(accounts_with("DISABLED"), Some(1.0));
    assert_eq!(accounts_with("NEEDS_ATTENTION"), Some(0.0));
    assert_eq!(value(&s, "credvault_leases_held", &pixverse), Some(1.0));
    assert_eq!(value(&s, "credvault_lease_capacity", &pixverse), Some(7.0));
    assert_eq!(value(&s, "credvault_lease_waiters", &pixverse), Some(0.0));
    // The fake upstream's tokens live an hour; the soonest expiry is that one.
    let soonest = value(&s, "credvault_token_soonest_expiry_seconds", &pixverse).unwrap();
    assert!((0.0..=3600.0).contains(&soonest), "{soonest}");
    assert!(value(&s, "credvault_store_size_bytes", &[]).unwrap() > 0.0);
    // Counted from the start: 0, not absent, before the first.
    assert_eq!(
        value(&s, "credvault_audit_write_failures_total", &[]),
        Some(0.0),
        "no audit write failed"
    );
    for outcome in ["transient_failure", "permanent_failure"] {
        let labels = [("provider", "pixverse"), ("outcome", outcome)];
        assert_eq!(value(&s, "credvault_logins_total", &labels), Some(0.0));
    }
    assert_eq!(
        value(
            &s,
            "credvault_logins_refused_total",
            &[("provider", "pixverse"), ("reason", "budget")]
        ),
        Some(0.0)
    );
    // Every metric the README lists has its HELP and TYPE lines.
    for (name, kind) in [
        ("credvault_rpc_requests_total", "counter"),
        ("credvault_rpc_duration_seconds", "histogram"),
        ("credvault_logins_total", "counter"),
        ("credvault_logins_refused_total", "counter"),
        ("credvault_audit_write_failures_total", "counter"),
        ("credvault_accounts", "gauge"),
        ("credvault_lease_capacity", "gauge"),
        ("credvault_leases_held", "gauge"),
        ("credvault_lease_waiters", "gauge"),
        ("credvault_token_soonest_expiry_seconds", "gauge"),
        ("credvault_store_size_bytes", "gauge"),
    ] {
        let help = page
            .lines()
            .find_map(|line| line.strip_prefix(&format!("# HELP {name} ")));
        assert!(
            help.is_some_and(|text| text.len() > 10),
            "no HELP for {name}: {page}"
        );
        assert!(
            page.lines()
                .any(|line| line == format!("# TYPE {name} {kind}")),
            "no TYPE {kind} for {name}"
        );
    }

    ops_files_query_only_exported_metrics(&page);

    // Anything but GET /metrics is not served.
    let other = reqwest::get(format!("http://{metrics}/")).await.unwrap();
    assert_eq!(other.status(), 404);
    server.stop().await;
}

/// The Grafana dashboard and the Prometheus alert rules in `deploy/` query only metrics
/// this scrape shows (a histogram by its `_bucket`, `_sum` and `_count` series); the
/// dashboard is JSON with panels that each have a query, and `promtool check rules`
/// (Debian's prometheus package, installed when missing) accepts the rules.
fn ops_files_query_only_exported_metrics(page: &str) {
    let exported: Vec<&str> = page
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let known = |name: &str| {
        exported.contains(&name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| exported.contains(&base))
            })
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = root.join("deploy/prometheus/credvault-rules.yaml");
    let dashboard = root.join("deploy/grafana/credvault.json");
    let dashboard_text = std::fs::read_to_string(&dashboard).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    let panels = parsed["panels"].as_array().expect("panels");
    assert!(
        panels.len() >= 9,
        "slots, waiters, hand-outs, logins, accounts, expiry, latency, audit, failing closed"
    );
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty() && targets.iter().all(|t| t["expr"].is_string()),
            "{panel}"
        );
    }
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let mut queried = 0;
    for (file, text) in [(&rules, &rules_text), (&dashboard, &dashboard_text)] {
        for name in metric_names(text) {
            queried += 1;
            assert!(known(&name), "{}: {name} is not exported", file.display());
        }
    }
    assert!(queried > 15, "the files query the metrics ({queried} uses)");

    let promtool = support::debian::tool("promtool", "prometheus");
    let checked = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stdout).into_owned()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "{said}");
    assert!(said.contains("SUCCESS: 5 rules found"), "{said}");
}

/// Every `credvault_…` metric name in a text.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("credvault_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}
