//! Binding what credvault listens on (the API over TCP and a Unix socket, the probe
//! port, the metrics port), before the vault opens: the probe port answers NOT_SERVING
//! from the moment it is bound.

use std::{
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity as TlsIdentity, Server, ServerTlsConfig};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};

use super::{LIVENESS, ServeError, health_reflection, set_health};
use crate::config::{Reflection, Settings};

/// The sockets the API is served on, bound before serving so that callers (and tests)
/// can learn the real address of a `:0` port.
pub struct Listeners {
    pub(super) tcp: Option<TcpListener>,
    pub(super) unix: Option<(UnixListener, PathBuf)>,
    pub(super) metrics: Option<TcpListener>,
    pub(super) probes: Probes,
    /// Registered before serving, so that a SIGHUP never finds the default action
    /// (which would end the process).
    pub(super) hangup: Option<tokio::signal::unix::Signal>,
    /// TLS for the TCP API (the Unix socket stays plaintext: its peers are local).
    pub(super) tls: Option<ServerTlsConfig>,
    pub(super) reflection: Reflection,
}

fn tls_config(files: &crate::config::TlsFiles) -> ServerTlsConfig {
    let config =
        ServerTlsConfig::new().identity(TlsIdentity::from_pem(&files.cert, files.key.expose()));
    match &files.client_ca {
        Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
        None => config,
    }
}

/// The health statuses, and the probe port that serves them from the moment the
/// listeners are bound: NOT_SERVING until `run` has the vault ready, NOT_SERVING again
/// from the start of shutdown, and answering until the very end.
pub(super) struct Probes {
    pub(super) reporter: HealthReporter,
    pub(super) addr: Option<SocketAddr>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

pub(super) fn health_server(reporter: &HealthReporter) -> HealthServer<HealthService> {
    HealthServer::new(HealthService::from_health_reporter(reporter.clone()))
}

impl Listeners {
    pub async fn bind(settings: &Settings) -> Result<Self, ServeError> {
        let tcp = match settings.listen {
            Some(addr) => Some(bind_tcp(addr, "").await?),
            None => None,
        };
        let unix = match &settings.socket {
            Some(path) => Some((bind_unix(path, settings.socket_mode)?, path.clone())),
            None => None,
        };
        let reporter = HealthReporter::new();
        set_health(&reporter, ServingStatus::NotServing).await;
        reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        let (stop, stop_rx) = watch::channel(false);
        let (addr, task) = match settings.health_listen {
            Some(addr) => {
                let listener = bind_tcp(addr, "health listener ").await?;
                let bound = listener.local_addr().ok();
                let mut stop_rx = stop_rx;
                let reflecting = settings.reflection != Reflection::Off;
                let v1 = reflecting
                    .then(|| health_reflection().build_v1())
                    .transpose()?;
                let v1alpha = reflecting
                    .then(|| health_reflection().build_v1alpha())
                    .transpose()?;
                let task = tokio::spawn(
                    Server::builder()
                        .add_service(health_server(&reporter))
                        .add_optional_service(v1)
                        .add_optional_service(v1alpha)
                        .serve_with_incoming_shutdown(
                            TcpListenerStream::new(listener),
                            async move {
                                let _ = stop_rx.wait_for(|stop| *stop).await;
                            },
                        ),
                );
                (bound, Some(task))
            }
            None => (None, None),
        };
        let probes = Probes {
            reporter,
            addr,
            stop,
            task,
        };
        let metrics = match settings.metrics_listen {
            Some(addr) => Some(bind_tcp(addr, "metrics listener ").await?),
            None => None,
        };
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .inspect_err(
                |error| tracing::warn!(%error, "no SIGHUP handler; secret files are still polled"),
            )
            .ok();
        Ok(Self {
            tcp,
            unix,
            metrics,
            probes,
            hangup,
            tls: settings.tls.as_ref().map(tls_config),
            reflection: settings.reflection,
        })
    }

    /// The probe port (gRPC health only, plaintext).
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.probes.addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn socket_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, path)| path.as_path())
    }
}

/// A TCP listener on `addr`; a failure names it after `what` (`""` for the API's).
async fn bind_tcp(addr: SocketAddr, what: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            what: format!("{what}{addr}"),
            source,
        })
}

fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    let bind_error = |source| ServeError::Bind {
        what: path.display().to_string(),
        source,
    };
    // A socket left by a previous run that did not shut down cleanly.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(bind_error)?
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_owned())),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_error)?;
    Ok(listener)
}
