//! Real etcd for the tests: a cluster of members on loopback, each a real `etcd`
//! process with its own free ports and temporary data directory.
//!
//! `etcd` is taken from PATH (or Debian's `/usr/bin/etcd`); when it is missing and the
//! tests run as root, Debian's `etcd-server` is installed (`.ci/run` installs it up
//! front). Each member runs under a small shell guard that kills it once the test
//! process is gone (its stdin, a pipe from this process, reaches end of file), so no
//! member outlives the tests, even after a panic or a SIGKILL of the test binary.
//! The guard prints the member's own pid, which the fault helpers signal.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// How long a new cluster may take to elect a leader (about 1 s here).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The `etcd` binary, installed first when it is missing and we may.
pub fn etcd_binary() -> PathBuf {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND
        .get_or_init(|| super::debian::tool("etcd", "etcd-server"))
        .clone()
}

/// A port for an etcd member, never the same twice in this process and below Linux's
/// ephemeral range (32768 and up): a port the kernel handed out with `bind(0)` can be
/// handed out again, to another cluster starting beside this one or to an outgoing
/// connection, before etcd binds it ("address already in use").
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Each test binary starts at its own place in 20000..32000 (by process id).
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 1_000) as u16 * 12,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20_000 + port.wrapping_sub(20_000) % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One member: its ports, its data directory, and the running process (if any).
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<Running>,
}

struct Running {
    guard: Child,
    /// Held open: the guard kills the member when it closes.
    lifeline: ChildStdin,
    pid: u32,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// A cluster of real etcd members on loopback.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    token: String,
    members: Mutex<Vec<Member>>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until they have a leader.
    pub async fn start(size: usize) -> EtcdCluster {
        let binary = etcd_binary();
        let dir = tempfile::tempdir().unwrap();
        let token = format!(
            "credvault-test-{}",
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                process: None,
            })
            .collect();
        let cluster = EtcdCluster {
            dir,
            token,
            members: Mutex::new(members),
        };
        for i in 0..size {
            cluster.spawn(&binary, i);
        }
        cluster.wait_ready().await;
        cluster
    }

    /// One cluster per test binary, shared by its tests (each under its own prefix).
    pub async fn shared() -> &'static EtcdCluster {
        static SHARED: tokio::sync::OnceCell<EtcdCluster> = tokio::sync::OnceCell::const_new();
        SHARED.get_or_init(|| EtcdCluster::start(3)).await
    }

    fn initial_cluster(members: &[Member]) -> String {
        members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&self, binary: &Path, i: usize) {
        let mut members = self.members.lock().unwrap();
        let initial = Self::initial_cluster(&members);
        let member = &mut members[i];
        assert!(member.process.is_none(), "member {i} is running");
        let data = self.dir.path().join(&member.name);
        let log = self.dir.path().join(format!("{}.log", member.name));
        let args = [
            "--name".to_owned(),
            member.name.clone(),
            "--data-dir".to_owned(),
            data.display().to_string(),
            "--listen-client-urls".to_owned(),
            member.client_url(),
            "--advertise-client-urls".to_owned(),
            member.client_url(),
            "--listen-peer-urls".to_owned(),
            member.peer_url(),
            "--initial-advertise-peer-urls".to_owned(),
            member.peer_url(),
            "--initial-cluster".to_owned(),
            initial,
            "--initial-cluster-state".to_owned(),
            "new".to_owned(),
            "--initial-cluster-token".to_owned(),
            self.token.clone(),
        ];
        // The guard: start the member, print its pid, and kill it when this process
        // closes the guard's stdin (it exited) or when the member ends by itself. (A
        // background job's stdin is /dev/null unless redirected: hence fd 3.)
        let script = r#"
            exec 3<&0
            "$0" "$@" >>"$CREDVAULT_ETCD_LOG" 2>&1 </dev/null &
            member=$!
            echo "$member"
            ( cat <&3 >/dev/null; kill -9 "$member" 2>/dev/null ) &
            watcher=$!
            wait "$member"
            kill "$watcher" 2>/dev/null
        "#;
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(binary)
            .args(&args)
            .env("CREDVAULT_ETCD_LOG", &log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The shell's own job notices ("Killed"); the member logs to its file.
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd");
        let mut line = String::new();
        BufReader::new(guard.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid = line
            .trim()
            .parse()
            .expect("the guard prints the member's pid");
        let lifeline = guard.stdin.take().unwrap();
        member.process = Some(Running {
            guard,
            lifeline,
            pid,
        });
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        let members = self.members.lock().unwrap();
        members.iter().map(Member::client_url).collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.members.lock().unwrap()[i].client_url()
    }

    pub fn size(&self) -> usize {
        self.members.lock().unwrap().len()
    }

    /// The index of the current leader, as the members that answer say.
    pub async fn leader(&self) -> Option<usize> {
        let endpoints = self.endpoints();
        for endpoint in &endpoints {
            let Ok(status) = status(endpoint).await else {
                continue;
            };
            if status.leader() == 0 {
                continue;
            }
            for (i, other) in endpoints.iter().enumerate() {
                if let Ok(theirs) = status_header_member(other).await
                    && theirs == status.leader()
                {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits until every running member answers and they agree on a leader.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if self.ready().await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the etcd cluster did not become ready within {START_DEADLINE:?}; logs in {}:\n{}",
                    self.dir.path().display(),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ready(&self) -> bool {
        let running: Vec<String> = {
            let members = self.members.lock().unwrap();
            members
                .iter()
                .filter(|m| m.process.is_some())
                .map(Member::client_url)
                .collect()
        };
        let mut leader = None;
        for endpoint in &running {
            match status(endpoint).await {
                Ok(status) if status.leader() != 0 => match leader {
                    None => leader = Some(status.leader()),
                    Some(known) if known == status.leader() => {}
                    Some(_) => return false,
                },
                _ => return false,
            }
        }
        leader.is_some()
    }

    fn pid(&self, i: usize) -> u32 {
        let members = self.members.lock().unwrap();
        members[i].process.as_ref().expect("member is running").pid
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.pid(i).to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGSTOP: the member freezes, its sockets stay open.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// SIGCONT after [`EtcdCluster::pause`].
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    /// SIGKILL, and waits for the member to be gone.
    pub fn kill(&self, i: usize) {
        self.signal(i, "-KILL");
        let mut members = self.members.lock().unwrap();
        if let Some(mut running) = members[i].process.take() {
            let _ = running.guard.wait();
        }
    }

    /// Starts a killed member again on its data directory and ports.
    pub fn restart(&self, i: usize) {
        self.spawn(&etcd_binary(), i);
    }

    /// The members' logs, for a failure message.
    pub fn logs(&self) -> String {
        let members = self.members.lock().unwrap();
        let mut out = String::new();
        for member in members.iter() {
            let path = self.dir.path().join(format!("{}.log", member.name));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            out.push_str(&format!("--- {} ---\n", member.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        for member in members.iter_mut() {
            if let Some(mut running) = member.process.take() {
                let _ = Command::new("kill")
                    .args(["-KILL", &running.pid.to_string()])
                    .status();
                // Closing the lifeline ends the guard too.
                drop(running.lifeline);
                let _ = running.guard.wait();
            }
        }
        let _ = std::io::stdout().flush();
    }
}

async fn connect(endpoint: &str) -> Result<etcd_client::Client, etcd_client::Error> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(1));
    etcd_client::Client::connect([endpoint], Some(options)).await
}

async fn status(endpoint: &str) -> Result<etcd_client::StatusResponse, etcd_client::Error> {
    connect(endpoint).await?.status().await
}

/// The member id of the member at `endpoint`.
async fn status_header_member(endpoint: &str) -> Result<u64, etcd_client::Error> {
    let status = status(endpoint).await?;
    Ok(status.header().map_or(0, |h| h.member_id()))
}
