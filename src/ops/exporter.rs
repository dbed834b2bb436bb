//! Prometheus metrics on their own plain-HTTP listener (`GET /metrics`).
//!
//! Counters and histograms are recorded where things happen (the call layer, the
//! refresh engine, the audit trail) through the `metrics` facade. Gauges that describe
//! state — accounts by status, leases against capacity, waiters, the soonest token
//! expiry, the store's size — are computed from the live services at each scrape, so
//! they are never stale.

use std::{convert::Infallible, sync::Arc, sync::OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    accounts::{AccountService, Status},
    callers::CallerService,
    clock::Clock,
    leases::LeaseService,
    store::Store,
};

/// Latency buckets (seconds) for the RPC histogram.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether metrics are recorded at all (a metrics listener was configured): callers on
/// hot paths skip building labels otherwise.
pub fn enabled() -> bool {
    HANDLE.get().is_some()
}

/// The process-wide recorder: the `metrics` facade has one per process, so every
/// server in it (tests start several) shares it.
pub fn recorder() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new())
        };
        let handle = builder().install_recorder().unwrap_or_else(|error| {
            // Another recorder was installed first; serve an empty page rather than
            // fail to start.
            tracing::warn!(%error, "a metrics recorder was already installed; /metrics will be empty");
            builder().build_recorder().handle()
        });
        describe();
        // Counted from the start, so that a rate or an alert sees 0 before the first.
        metrics::counter!("credvault_audit_write_failures_total").increment(0);
        handle
    })
}

/// Every metric, with the `# HELP` line a scrape shows for it.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "credvault_rpc_requests_total",
        "gRPC calls answered, by method and status code"
    );
    describe_histogram!(
        "credvault_rpc_duration_seconds",
        Unit::Seconds,
        "Time to answer a gRPC call, by method and status code"
    );
    describe_counter!(
        "credvault_logins_total",
        "Upstream logins made, by provider and outcome (ok, transient_failure, permanent_failure)"
    );
    describe_counter!(
        "credvault_logins_refused_total",
        "Upstream logins not made, by provider and reason (budget: too soon after the last)"
    );
    describe_counter!(
        "credvault_audit_write_failures_total",
        "Audit-trail writes that failed (each refused what it would have handed out)"
    );
    describe_gauge!("credvault_accounts", "Accounts, by provider and status");
    describe_gauge!(
        "credvault_lease_capacity",
        "Slots of ACTIVE accounts (the sum of their maxJobs), by provider"
    );
    describe_gauge!("credvault_leases_held", "Slots held by leases, by provider");
    describe_gauge!(
        "credvault_lease_waiters",
        "AcquireLease calls waiting for a slot, by provider"
    );
    describe_gauge!(
        "credvault_token_soonest_expiry_seconds",
        Unit::Seconds,
        "Seconds until the provider's soonest upstream token expiry (negative: expired)"
    );
    describe_gauge!(
        "credvault_failing_closed",
        "1 while this node cannot confirm its view of callers (etcd out of reach) and refuses credentials; else 0"
    );
    describe_gauge!(
        "credvault_store_size_bytes",
        Unit::Bytes,
        "Bytes the store takes on this node's disk"
    );
}

/// Login outcomes counted per provider, shown as 0 until the first.
const LOGIN_OUTCOMES: [&str; 3] = ["ok", "transient_failure", "permanent_failure"];

/// What the scrape-time gauges are read from.
pub struct Sources {
    pub accounts: Arc<AccountService>,
    pub callers: Arc<CallerService>,
    pub leases: Arc<LeaseService>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
}

impl Sources {
    fn refresh_gauges(&self) {
        let now_secs = self.clock.now_ms() / 1000;
        let (held, waiting) = self.leases.load_by_provider();
        for summary in self.accounts.summary() {
            let provider = summary.provider.clone();
            for outcome in LOGIN_OUTCOMES {
                metrics::counter!("credvault_logins_total", "provider" => provider.clone(), "outcome" => outcome)
                    .increment(0);
            }
            metrics::counter!("credvault_logins_refused_total", "provider" => provider.clone(), "reason" => "budget")
                .increment(0);
            for status in Status::ALL {
                let count = summary.by_status.get(status.name()).copied().unwrap_or(0);
                metrics::gauge!("credvault_accounts", "provider" => provider.clone(), "status" => status.name())
                    .set(count as f64);
            }
            metrics::gauge!("credvault_lease_capacity", "provider" => provider.clone())
                .set(summary.capacity as f64);
            metrics::gauge!("credvault_leases_held", "provider" => provider.clone())
                .set(held.get(&provider).copied().unwrap_or(0) as f64);
            metrics::gauge!("credvault_lease_waiters", "provider" => provider.clone())
                .set(waiting.get(&provider).copied().unwrap_or(0) as f64);
            if let Some(expiry) = summary.soonest_expiry {
                metrics::gauge!("credvault_token_soonest_expiry_seconds", "provider" => provider)
                    .set((expiry - now_secs) as f64);
            }
        }
        let failing_closed = self.callers.stale_for().is_some();
        metrics::gauge!("credvault_failing_closed").set(f64::from(u8::from(failing_closed)));
        if let Some(bytes) = self.store.disk_bytes() {
            metrics::gauge!("credvault_store_size_bytes").set(bytes as f64);
        }
    }

    fn render(&self) -> String {
        self.refresh_gauges();
        let handle = recorder();
        handle.run_upkeep();
        handle.render()
    }
}

/// Serves `/metrics` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, sources: Arc<Sources>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a metrics connection failed");
                    continue;
                }
            },
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let sources = sources.clone();
                async move { Ok::<_, Infallible>(answer(&sources, &request)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

fn answer(sources: &Sources, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) =
        if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                sources.render(),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                "text/plain",
                "only GET /metrics is served here\n".to_owned(),
            )
        };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
