//! `[audit] sync = "os"`: a hand-out's event is written to the OS (the spill file)
//! before the answer, so a daemon killed with SIGKILL before its next flush round keeps
//! every answered reveal's event; the restart puts back what the store lost. Debits
//! may be lost in that window, never taken twice.

mod support;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use support::{Auth, Daemon, Reach, Remote, proto};

const SECRET: &str = "5eb63bbbe01eeed093cb22bb8f5acdc3a7c4e0b1f2d3e4f5a6b7c8d9e0f1a2b3";
const CREDITS: i64 = 1_000_000;

fn serve_os(data: &std::path::Path, key: &str) -> Daemon {
    Daemon::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[
            ("CREDVAULT_MASTER_KEY", key),
            ("CREDVAULT_ADMIN_TOKEN", support::ADMIN_TOKEN),
            ("CREDVAULT_AUDIT__SYNC", "os"),
        ],
    )
}

async fn ok_reveal_events(remote: &Remote) -> u64 {
    let mut audit = remote.audit(Auth::admin()).await;
    let (mut count, mut page_token) = (0, String::new());
    loop {
        let page = audit
            .list_events(proto::ListEventsRequest {
                rpc: "RevealAccount".into(),
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        count += page.events.iter().filter(|e| e.outcome == "OK").count() as u64;
        if page.next_page_token.is_empty() {
            return count;
        }
        page_token = page.next_page_token;
    }
}

fn spill_files(data: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(data)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("audit-spill."))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_reveals_keep_their_events_through_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = support::new_key();
    let mut daemon = serve_os(&data, &key);
    let remote = Remote(daemon.wait_for_addr());
    remote
        .accounts_with(Auth::admin())
        .await
        .create_account(support::pixverse("os@example.com", "os-password"))
        .await
        .unwrap();
    let terms = proto::UpdateCallerRequest {
        add_credits: CREDITS,
        ..Default::default()
    };
    let (id, api_key) =
        support::pixverse_consumer(&remote, "sync@example.com", SECRET, terms).await;
    let balance = async |remote: &Remote| {
        let info = remote
            .callers(Auth::api_key(&api_key, SECRET))
            .await
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.id, id);
        info.balance
    };
    let before = balance(&remote).await;

    // Reveals from 8 tasks until 300 have been answered; then SIGKILL while more are
    // in flight. The last answers are at most milliseconds old: no flush round (every
    // 50 ms) has covered them yet.
    let (answered, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = remote.credentials(Auth::api_key(&api_key, SECRET)).await;
        let (answered, sent) = (answered.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                sent.fetch_add(1, Ordering::SeqCst);
                let revealed = client
                    .reveal_account(proto::RevealAccountRequest {
                        provider: "pixverse".into(),
                        email: "os@example.com".into(),
                    })
                    .await;
                match revealed {
                    Ok(_) => answered.fetch_add(1, Ordering::SeqCst),
                    Err(_) => return,
                };
            }
        }));
    }
    let reached = support::eventually(std::time::Duration::from_secs(60), async || {
        answered.load(Ordering::SeqCst) >= 300
    })
    .await;
    assert!(reached, "300 reveals answered");
    daemon.kill();
    for task in tasks {
        task.await.unwrap();
    }
    let (answered, sent) = (answered.load(Ordering::SeqCst), sent.load(Ordering::SeqCst));

    let mut daemon = serve_os(&data, &key);
    let remote = Remote(daemon.wait_for_addr());
    let events = ok_reveal_events(&remote).await;
    assert!(
        events >= answered && events <= sent,
        "every answered reveal has its event: {events} events, {answered} answered, {sent} sent"
    );
    // Each event's debit was spilled with it: the events put back are charged again,
    // and no debit is kept without its event, so none is taken twice.
    let charged = before - balance(&remote).await;
    assert_eq!(
        charged, events as i64,
        "charged {charged} for {events} events"
    );
    println!(
        "answered {answered}, sent {sent}, events {events}, charged {charged}; restart log: {}",
        daemon
            .output()
            .lines()
            .filter(|l| l.contains("spill"))
            .collect::<Vec<_>>()
            .join(" | ")
    );

    // A clean stop leaves no spill behind (the final flush covered it).
    assert!(daemon.terminate().success());
    assert!(spill_files(&data).is_empty(), "{:?}", spill_files(&data));
}
