//! Serving: bind the listeners, assemble the router (auth layer, health, reflection,
//! services), and shut down gracefully: health turns NOT_SERVING, in-flight calls get
//! a grace period, then the store is flushed.

use std::{future::Future, io, path::PathBuf, sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinSet};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::{
    server::NamedService,
    transport::{Server, ServerTlsConfig, server::Router},
};
use tonic_health::{ServingStatus, pb::health_server::HealthServer, server::HealthService};
use tower::layer::util::{Identity, Stack};

use crate::{
    api::{
        accounts::AccountsApi, audit::AuditApi, callers::CallersApi, credentials::CredentialsApi,
        keys::KeysApi, layer::CallLayer,
    },
    config::Reflection,
    events::Events,
    leases::LeaseService,
    leases::{ClusterSlots, slots::SlotTable},
    ops::exporter,
    proto::{
        FILE_DESCRIPTOR_SET, accounts_server::AccountsServer, audit_server::AuditServer,
        callers_server::CallersServer, credentials_server::CredentialsServer,
        keys_server::KeysServer,
    },
    refresh::Refresher,
    refresh::{
        cluster_flight::ClusterFlights,
        flight::{LocalFlights, LoginFlights},
    },
    vault::Vault,
};

mod listen;

pub use listen::Listeners;
use listen::health_server;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {what}: {source}")]
    Bind {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("a listener failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("a listener task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("loading the leases: {0}")]
    Leases(crate::leases::LeaseError),
    #[error("starting the refresh engine: {0}")]
    Refresher(crate::accounts::AccountError),
    #[error("final flush of the store failed: {0}")]
    Flush(#[from] crate::store::StoreError),
}

type Routes = Router<Stack<CallLayer, Identity>>;

/// What the services share beside the vault, built when serving starts.
struct Services {
    refresher: Arc<Refresher>,
    leases: Arc<LeaseService>,
    events: Events,
    reflection: Reflection,
    /// Turns true when shutdown starts.
    stopping: watch::Receiver<bool>,
}

fn router(
    vault: &Vault,
    services: &Services,
    health: HealthServer<HealthService>,
    tls: Option<ServerTlsConfig>,
) -> Result<Routes, ServeError> {
    // grpcurl 1.8 speaks only v1alpha; newer clients prefer v1.
    let reflecting = services.reflection != Reflection::Off;
    let reflection_v1 = reflecting.then(|| reflection().build_v1()).transpose()?;
    let reflection_v1alpha = reflecting
        .then(|| reflection().build_v1alpha())
        .transpose()?;
    let accounts = AccountsApi::new(
        vault.accounts.clone(),
        services.refresher.clone(),
        services.leases.clone(),
        services.events.clone(),
        vault.fingerprints.clone(),
    );
    let callers =
        CallersApi::new(vault.callers.clone()).ending_leases_with(services.leases.clone());
    let credentials = CredentialsApi::new(
        vault.accounts.clone(),
        vault.callers.clone(),
        services.leases.clone(),
        vault.door.clone(),
        services.events.clone(),
        vault.fingerprints.clone(),
        vault.authenticator.clone(),
    )
    .ending_watches_on(services.stopping.clone());
    let limits = &vault.limits;
    let max = limits.max_request_bytes;
    let mut builder = Server::builder()
        .concurrency_limit_per_connection(limits.calls_per_connection)
        .http2_max_header_list_size(crate::api::layer::HTTP2_MAX_HEADER_LIST);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    Ok(builder
        .layer(
            CallLayer::new(
                vault.authenticator.clone(),
                vault.audit.clone(),
                limits.call_timeout(),
            )
            .with_public_reflection(services.reflection == Reflection::Public),
        )
        .add_service(health)
        .add_service(
            AuditServer::new(AuditApi::new(vault.audit.clone())).max_decoding_message_size(max),
        )
        .add_service(
            KeysServer::new(KeysApi::new(
                vault.rekey.clone(),
                vault.sealer.clone(),
                vault.callers.clone(),
            ))
            .max_decoding_message_size(max),
        )
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(AccountsServer::new(accounts).max_decoding_message_size(max))
        .add_service(CallersServer::new(callers).max_decoding_message_size(max))
        .add_service(CredentialsServer::new(credentials).max_decoding_message_size(max)))
}

/// The API's schema, and google.rpc's error details, so that grpcurl prints an
/// ErrorInfo's reason and metadata instead of base64.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    health_reflection()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Reflection of the health service alone (the probe port's).
fn health_reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Accepted TCP streams with Nagle's algorithm off: tonic sets TCP_NODELAY only on
/// sockets it binds itself, and small gRPC frames must not wait for delayed ACKs.
fn no_delay(
    incoming: TcpListenerStream,
) -> impl tokio_stream::Stream<Item = io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    incoming.map(|stream| {
        stream.inspect(|s| {
            if let Err(error) = s.set_nodelay(true) {
                tracing::debug!(%error, "setting TCP_NODELAY failed");
            }
        })
    })
}

/// The whole server (`""`) and each service, as probes ask for them.
/// The login flights and the slot table: this process's own with the embedded store;
/// shared through etcd (its slot mirror followed until `stop`) in etcd mode.
async fn coordination(
    vault: &Vault,
    stop: &watch::Receiver<bool>,
) -> Result<(Arc<dyn LoginFlights>, Arc<dyn SlotTable>), ServeError> {
    let Some(etcd) = &vault.etcd else {
        let slots = crate::leases::LocalSlots::load(
            vault.store.clone(),
            vault.sealer.clone(),
            vault.clock.now_ms(),
        )
        .await
        .map_err(ServeError::Leases)?;
        return Ok((Arc::new(LocalFlights::default()), Arc::new(slots)));
    };
    let slots = Arc::new(
        ClusterSlots::open(
            etcd.clone(),
            vault.sealer.clone(),
            vault.fingerprints.clone(),
            vault.clock.clone(),
        )
        .await
        .map_err(ServeError::Leases)?,
    );
    tokio::spawn(slots.clone().follow(stop.clone()));
    let flights = ClusterFlights::new(etcd.clone(), vault.fingerprints.clone(), &vault.node_id);
    Ok((Arc::new(flights), slots))
}

/// The health service name that answers liveness: SERVING from the moment the probe
/// port is bound until the process ends, whatever the store's state (an etcd outage
/// makes a node unready, never a restart candidate). Every other name (`""` and each
/// credvault service) answers readiness.
pub const LIVENESS: &str = "liveness";

/// Sets readiness: `""` and every credvault service.
pub(crate) async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    status: ServingStatus,
) {
    let services = [
        "",
        <AccountsServer<AccountsApi> as NamedService>::NAME,
        <CallersServer<CallersApi> as NamedService>::NAME,
        <AuditServer<AuditApi> as NamedService>::NAME,
        <KeysServer<KeysApi> as NamedService>::NAME,
        <CredentialsServer<CredentialsApi> as NamedService>::NAME,
    ];
    for service in services {
        reporter.set_service_status(service, status).await;
    }
}

/// Serves until `shutdown` resolves (or a listener fails), then drains for at most
/// `grace` and flushes the store. The vault is dropped, and its store closed, on return.
pub async fn run(
    vault: Vault,
    listeners: Listeners,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let Listeners {
        tcp,
        unix,
        metrics,
        probes,
        hangup,
        tls,
        reflection,
    } = listeners;
    let health_reporter = probes.reporter.clone();
    let health = health_server(&health_reporter);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let events = Events::default();
    let (flights, slots) = coordination(&vault, &stop_rx).await?;
    let refresher = Arc::new(
        Refresher::start_with_flights(
            vault.accounts.clone(),
            &vault.providers,
            vault.clock.clone(),
            vault.refresh.clone(),
            events.clone(),
            flights,
        )
        .await
        .map_err(ServeError::Refresher)?,
    );
    let leases = LeaseService::start(
        vault.store.clone(),
        slots,
        vault.door.clone(),
        vault.accounts.clone(),
        vault.callers.clone(),
        refresher.clone(),
        vault.providers.clone(),
        events.clone(),
        vault.clock.clone(),
        vault.lease_settings.clone(),
    )
    .await
    .map_err(ServeError::Leases)?;
    if vault.etcd.is_some() {
        // Other processes' token rotations, disables and deletes reach this one's
        // watchers and refresh plan.
        let planner = refresher.clone();
        tokio::spawn(crate::events::relay_foreign(
            vault.accounts.clone(),
            events.clone(),
            vault.clock.clone(),
            move |key, meta| planner.account_changed(key, meta),
            stop_rx.clone(),
        ));
    }
    let services = Services {
        refresher: refresher.clone(),
        leases: leases.clone(),
        events,
        reflection,
        stopping: stop_rx.clone(),
    };
    if metrics.is_some() {
        // Before the first call is counted.
        exporter::recorder();
    }
    tokio::spawn(vault.audit.clone().keep_pruned(stop_rx.clone()));
    tokio::spawn(vault.callers.clone().follow(stop_rx.clone()));
    // On a shared store, readiness and authentication follow the view's freshness.
    let (confirm_stop, confirm_stopped) = watch::channel(false);
    let confirming = vault.etcd.is_some().then(|| {
        vault.callers.follows_shared_store();
        tokio::spawn(vault.callers.clone().keep_reserves(stop_rx.clone()));
        tokio::spawn(crate::ops::readiness::keep_confirming(
            vault.callers.clone(),
            vault.node_id.clone(),
            health_reporter.clone(),
            confirm_stopped,
        ))
    });
    tokio::spawn(vault.accounts.clone().follow(stop_rx.clone()));
    let audit_writer = tokio::spawn(vault.audit.clone().keep_written(stop_rx.clone()));
    let reloader = crate::ops::reload::Reloader {
        files: vault.secret_files.clone(),
        authenticator: vault.authenticator.clone(),
        sealer: vault.sealer.clone(),
        rekey: vault.rekey.clone(),
        callers: vault.callers.clone(),
    };
    tokio::spawn(reloader.run(hangup, stop_rx.clone()));
    if vault.rekey.needed() {
        vault.rekey.start(vault.callers.clone());
    }
    let mut servers = JoinSet::new();
    if let Some(metrics) = metrics {
        let sources = Arc::new(exporter::Sources {
            accounts: vault.accounts.clone(),
            callers: vault.callers.clone(),
            leases: leases.clone(),
            store: vault.store.clone(),
            clock: vault.clock.clone(),
        });
        tokio::spawn(exporter::serve(metrics, sources, stop_rx.clone()));
    }
    // Every router is built (the steps that can fail) and the health service says
    // SERVING before any of them answers: a call that connected early (the listeners
    // were bound, and "credvault serving" logged, before this) is answered by a ready
    // vault and never reads NOT_SERVING from it.
    let tcp = match tcp {
        Some(tcp) => Some((tcp, router(&vault, &services, health.clone(), tls)?)),
        None => None,
    };
    let unix = match unix {
        Some((unix, path)) => Some((unix, path, router(&vault, &services, health.clone(), None)?)),
        None => None,
    };
    set_health(&health_reporter, ServingStatus::Serving).await;
    if let Some((tcp, routes)) = tcp {
        servers.spawn(routes.serve_with_incoming_shutdown(
            no_delay(TcpListenerStream::new(tcp)),
            stopped(stop_rx.clone()),
        ));
    }
    let socket_path =
        unix.map(|(unix, path, routes)| {
            servers.spawn(routes.serve_with_incoming_shutdown(
                UnixListenerStream::new(unix),
                stopped(stop_rx.clone()),
            ));
            path
        });

    let mut outcome = Ok(());
    tokio::select! {
        () = shutdown => tracing::info!("shutdown requested; draining"),
        Some(ended) = servers.join_next() => {
            outcome = ended.map_err(ServeError::from).and_then(|r| r.map_err(ServeError::from));
            tracing::error!("a listener stopped unexpectedly; shutting down");
        }
    }
    // Probes see the drain before connections are closed (and nothing turns them
    // back).
    let _ = confirm_stop.send(true);
    if let Some(confirming) = confirming {
        let _ = confirming.await;
    }
    set_health(&health_reporter, ServingStatus::NotServing).await;
    let _ = stop_tx.send(true);
    let drain = async {
        while let Some(ended) = servers.join_next().await {
            if let Ok(Err(error)) = ended {
                tracing::warn!(%error, "listener ended with an error while draining");
            }
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "grace period over; closing remaining connections"
        );
        servers.shutdown().await;
    }
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
    leases.shutdown();
    refresher.shutdown().await;
    // The events of calls answered while draining are written before the final flush.
    let _ = audit_writer.await;
    vault.audit.write_pending().await;
    // Settled first, so the balance given back to is the one every debit is off.
    vault.callers.settle().await;
    vault.callers.give_back_reserves().await;
    let flushed = vault.store.flush().await;
    if flushed.is_ok() {
        vault.audit.spill_flushed();
    }
    // The probe port answers (NOT_SERVING) until the very end.
    let _ = probes.stop.send(true);
    if let Some(task) = probes.task {
        let _ = task.await;
    }
    flushed?;
    tracing::info!("stopped; store flushed");
    outcome
}

/// Registers SIGTERM and SIGINT handlers now, and returns a future that resolves on
/// either. Registering before the daemon says it is serving matters: a signal that
/// arrives earlier would otherwise take its default action and kill the process
/// without draining or flushing.
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
