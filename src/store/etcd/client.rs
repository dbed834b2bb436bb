//! The connection to the etcd cluster, with what the `etcd-client` crate leaves to its
//! users: a deadline on every request, reads retried on another member when one does
//! not answer (a frozen member keeps its sockets open, so only a deadline tells), and
//! HTTP/2 keepalive pings no more often than etcd accepts.

use std::{
    future::Future,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use etcd_client::{
    Client, ConnectOptions, GetOptions, GetResponse, KvClient, TxnResponse, WatchOptions,
    WatchStream,
};

use crate::{
    crypto::SecretString,
    store::{Revision, StoreError},
};

/// etcd drops clients that ping more often than every 5 s (its default
/// `--grpc-keepalive-min-time`).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS to the etcd members (PEM files).
#[derive(Clone, Debug, Default)]
pub struct EtcdTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    /// Every key of this vault starts with it (`/credvault` by default).
    pub prefix: String,
    pub tls: Option<EtcdTls>,
    /// etcd authentication: a user and its password.
    pub user: Option<(String, SecretString)>,
    pub connect_timeout: Duration,
    /// How long one request to one member may take.
    pub request_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: Vec::new(),
            prefix: "/credvault".into(),
            tls: None,
            user: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
        }
    }
}

/// One client per member; requests go to the preferred one, which moves on when it
/// fails to answer.
pub struct Connection {
    members: Vec<Client>,
    preferred: AtomicUsize,
    request_timeout: Duration,
}

impl Connection {
    pub async fn open(options: &EtcdOptions) -> Result<Self, StoreError> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Engine(
                "no etcd endpoints are configured ([store.etcd] endpoints)".into(),
            ));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(KEEPALIVE_EVERY, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true)
            // A member cut off from the others answers at once instead of serving
            // what it last knew.
            .with_require_leader(true);
        if let Some((name, password)) = &options.user {
            connect = connect.with_user(name.clone(), password.expose().to_owned());
        }
        if let Some(tls) = &options.tls {
            connect = connect.with_tls(tls_options(tls)?);
        }
        // Connecting is lazy unless etcd authentication signs in at once; a member that
        // refuses then is left out, as long as one accepts.
        let mut members = Vec::with_capacity(options.endpoints.len());
        let mut refused = None;
        for endpoint in &options.endpoints {
            match Client::connect([endpoint.as_str()], Some(connect.clone())).await {
                Ok(client) => members.push(client),
                Err(error) => refused = Some(unreachable_error(&error)),
            }
        }
        if let (true, Some(error)) = (members.is_empty(), refused) {
            return Err(error);
        }
        Ok(Connection {
            members,
            preferred: AtomicUsize::new(0),
            request_timeout: options.request_timeout,
        })
    }

    fn member(&self, n: usize) -> &Client {
        &self.members[n % self.members.len()]
    }

    /// The member after `failed` becomes the preferred one (unless another request
    /// moved it already).
    fn move_on(&self, failed: usize) {
        let next = (failed + 1) % self.members.len();
        let _ = self.preferred.compare_exchange(
            failed % self.members.len(),
            next,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// Runs an idempotent read, on each member in turn until one answers.
    pub async fn read<T, F, Fut>(&self, read: F) -> Result<T, StoreError>
    where
        F: Fn(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let first = self.preferred.load(Ordering::SeqCst);
        let mut last = None;
        for n in first..first + self.members.len() {
            let kv = self.member(n).kv_client();
            match tokio::time::timeout(self.request_timeout, read(kv)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(error)) => {
                    let error = store_error(&error);
                    if !matches!(error, StoreError::Unavailable(_)) {
                        return Err(error);
                    }
                    last = Some(error);
                }
                Err(_) => last = Some(self.timed_out()),
            }
            self.move_on(n);
        }
        Err(last.unwrap_or_else(|| self.timed_out()))
    }

    /// Reads `key` (a range with `options`), retried on each member in turn.
    pub async fn range(
        &self,
        key: &[u8],
        options: Option<GetOptions>,
    ) -> Result<GetResponse, StoreError> {
        self.read(|mut kv| {
            let (key, options) = (key.to_vec(), options.clone());
            async move { kv.get(key, options).await }
        })
        .await
    }

    /// Runs a transaction once. A transaction that timed out may have committed, so it
    /// is not retried here: the caller decides (a slot's etcd lease is revoked).
    pub async fn commit(&self, txn: etcd_client::Txn) -> Result<TxnResponse, StoreError> {
        let n = self.preferred.load(Ordering::SeqCst);
        let mut kv = self.member(n).kv_client();
        match tokio::time::timeout(self.request_timeout, kv.txn(txn)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                let error = store_error(&error);
                if matches!(error, StoreError::Unavailable(_)) {
                    self.move_on(n);
                }
                Err(error)
            }
            Err(_) => {
                self.move_on(n);
                Err(self.timed_out())
            }
        }
    }

    /// A new etcd lease of `ttl_secs`; its id. Granting twice is harmless (an unused
    /// lease ends at its TTL), so it is retried like a read.
    pub async fn grant(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        let first = self.preferred.load(Ordering::SeqCst);
        let mut last = None;
        for n in first..first + self.members.len() {
            let mut lease = self.member(n).lease_client();
            match tokio::time::timeout(self.request_timeout, lease.grant(ttl_secs, None)).await {
                Ok(Ok(answer)) => return Ok(answer.id()),
                Ok(Err(error)) => last = Some(store_error(&error)),
                Err(_) => last = Some(self.timed_out()),
            }
            self.move_on(n);
        }
        Err(last.unwrap_or_else(|| self.timed_out()))
    }

    /// Renews an etcd lease once: its TTL left, 0 when it has ended.
    pub async fn keep_alive(&self, id: i64) -> Result<i64, StoreError> {
        let n = self.preferred.load(Ordering::SeqCst);
        let mut lease = self.member(n).lease_client();
        let renewed = async {
            let (mut keeper, mut answers) = lease.keep_alive(id).await?;
            keeper.keep_alive().await?;
            answers.message().await
        };
        match tokio::time::timeout(self.request_timeout, renewed).await {
            Ok(Ok(Some(answer))) => Ok(answer.ttl()),
            Ok(Ok(None)) => Err(StoreError::Unavailable(
                "etcd ended the keepalive stream".into(),
            )),
            Ok(Err(error)) => {
                self.move_on(n);
                Err(store_error(&error))
            }
            Err(_) => {
                self.move_on(n);
                Err(self.timed_out())
            }
        }
    }

    /// Ends an etcd lease and the keys bound to it (idempotent, so retried).
    pub async fn revoke(&self, id: i64) -> Result<(), StoreError> {
        let first = self.preferred.load(Ordering::SeqCst);
        let mut last = None;
        for n in first..first + self.members.len() {
            let mut lease = self.member(n).lease_client();
            match tokio::time::timeout(self.request_timeout, lease.revoke(id)).await {
                Ok(Ok(_)) => return Ok(()),
                // Already gone (expired or revoked): nothing left to end.
                Ok(Err(error)) if error.to_string().contains("lease not found") => return Ok(()),
                Ok(Err(error)) => last = Some(store_error(&error)),
                Err(_) => last = Some(self.timed_out()),
            }
            self.move_on(n);
        }
        Err(last.unwrap_or_else(|| self.timed_out()))
    }

    /// Opens a watch on the preferred member (the first answer it gives tells it is
    /// alive; the caller reads it).
    pub async fn watch(
        &self,
        key: Vec<u8>,
        options: WatchOptions,
    ) -> Result<(WatchStream, usize), StoreError> {
        let first = self.preferred.load(Ordering::SeqCst);
        let mut last = None;
        for n in first..first + self.members.len() {
            let mut client = self.member(n).watch_client();
            let opened = tokio::time::timeout(
                self.request_timeout,
                client.watch(key.clone(), Some(options.clone())),
            )
            .await;
            match opened {
                Ok(Ok(stream)) => return Ok((stream, n)),
                Ok(Err(error)) => last = Some(store_error(&error)),
                Err(_) => last = Some(self.timed_out()),
            }
            self.move_on(n);
        }
        Err(last.unwrap_or_else(|| self.timed_out()))
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// A member that did not answer within the deadline moves the preference on.
    pub fn unanswered(&self, member: usize) {
        self.move_on(member);
    }

    fn timed_out(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "etcd did not answer within {} ms",
            self.request_timeout.as_millis()
        ))
    }

    /// The oldest revision the cluster still keeps under `root`: a watch from revision
    /// 1 on a key nobody writes is cancelled with the compaction revision when history
    /// was compacted.
    pub async fn oldest_revision(&self, root: &[u8]) -> Result<Revision, StoreError> {
        let mut probe = root.to_vec();
        probe.extend_from_slice(b"\0compaction-probe");
        let options = WatchOptions::new().with_start_revision(1);
        let (mut stream, _) = self.watch(probe, options).await?;
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(answer))) if answer.compact_revision() > 0 => {
                    return Ok(answer.compact_revision() as Revision);
                }
                Ok(Ok(Some(answer))) if answer.canceled() => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd cancelled a watch: {}",
                        answer.cancel_reason()
                    )));
                }
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return Err(StoreError::WatchEnded),
                Ok(Err(error)) => return Err(store_error(&error)),
                // Created and not cancelled: nothing was compacted.
                Err(_) => return Ok(1),
            }
        }
    }
}

fn tls_options(tls: &EtcdTls) -> Result<etcd_client::TlsOptions, StoreError> {
    let read = |path: &PathBuf| {
        std::fs::read(path)
            .map_err(|error| StoreError::Engine(format!("cannot read {}: {error}", path.display())))
    };
    let mut options = etcd_client::TlsOptions::new();
    if let Some(ca) = &tls.ca_file {
        options = options.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Engine(
                "etcd TLS needs both cert_file and key_file, or neither".into(),
            ));
        }
    }
    Ok(options)
}

fn unreachable_error(error: &etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!("cannot connect to etcd: {error}"))
}

/// What an etcd error means to the vault. Messages from etcd never carry a key or a
/// value.
pub fn store_error(error: &etcd_client::Error) -> StoreError {
    use etcd_client::Error;
    match error {
        Error::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("required revision has been compacted") {
                return StoreError::Compacted {
                    asked: 0,
                    oldest: 0,
                };
            }
            match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown => {
                    StoreError::Unavailable(format!("etcd is unavailable: {message}"))
                }
                _ => StoreError::Engine(format!("etcd refused the request: {message}")),
            }
        }
        Error::TransportError(_) | Error::IoError(_) | Error::WatchError(_) => {
            StoreError::Unavailable(format!("etcd is unreachable: {error}"))
        }
        other => StoreError::Engine(format!("etcd: {other}")),
    }
}
