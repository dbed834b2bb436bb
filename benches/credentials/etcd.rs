//! The etcd run: one credvault node on a 3-member etcd cluster on loopback, under
//! AcquireLease+ReleaseLease pairs and RevealAccount, against the floor measured in the
//! same run: the raw etcd requests one acquire and one release make, the same shapes
//! straight from etcd's client (grant an etcd lease; the take txn, a create-revision
//! compare and a range compare past maxJobs, putting the slot on that lease; the free
//! txn, a mod-revision compare and a delete; the revoke). Every one of them is a raft
//! write, so the floor is what etcd can commit, not what credvault adds.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::*;
use crate::etcd_cluster::EtcdCluster;

/// One raw pair; the latency recorded is the acquire half's (grant + take).
fn raw_pair(client: etcd_client::Client) -> impl Fn(Channel, u64) -> CallFuture + Clone {
    move |_, i| {
        let mut client = client.clone();
        Box::pin(async move {
            let failed = |error: etcd_client::Error| Status::unavailable(error.to_string());
            let account = format!("/bench-floor/{i}/");
            let slot = format!("{account}00000");
            let beyond = format!("{account}00008");
            // The end of the account's range: its prefix with the last byte raised.
            let end = format!("/bench-floor/{i}0");
            let value = vec![7u8; 300];
            let at = Instant::now();
            let lease = client.lease_grant(60, None).await.map_err(failed)?.id();
            let take = Txn::new()
                .when([
                    Compare::create_revision(slot.clone(), CompareOp::Equal, 0),
                    Compare::version(beyond, CompareOp::Equal, 0).with_range(end),
                ])
                .and_then([TxnOp::put(
                    slot.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let taken = client.txn(take).await.map_err(failed)?;
            let latency = at.elapsed();
            let revision = taken.header().map_or(0, |h| h.revision());
            let free = Txn::new()
                .when([Compare::mod_revision(
                    slot.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::delete(slot, None)]);
            client.txn(free).await.map_err(failed)?;
            client.lease_revoke(lease).await.map_err(failed)?;
            Ok(latency)
        })
    }
}

/// The etcd loads and target ratios, for `BENCH_SUMMARY`.
#[derive(Default)]
pub struct EtcdRows {
    pub loads: Vec<(&'static str, serde_json::Value)>,
    pub targets: Vec<(&'static str, f64)>,
}

pub async fn run() -> EtcdRows {
    let rounds = rounds();
    println!(
        "etcd: one credvault node on a 3-member loopback etcd cluster, {rounds} interleaved rounds; ratios against the raw etcd floor of the same round"
    );
    let cluster = EtcdCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.store.backend = credvault::config::BackendKind::Etcd;
    config.store.etcd.endpoints = cluster.endpoints();
    config.store.etcd.prefix = "/bench".into();
    config.node_id = "bench".into();
    let settings = config.resolve().unwrap();
    let Bench {
        addr,
        auth,
        stop,
        serving,
        ..
    } = serve(&settings).await;
    let channels = channels(addr).await;
    let client = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();

    let (mut floor, mut floor_half) = (Row::default(), Row::default());
    let (mut pairs, mut half, mut reveals) = (Row::default(), Row::default(), Row::default());
    let tasks = (CONNECTIONS * IN_FLIGHT) as f64;
    for _ in 0..rounds {
        let raw = drive(&channels, None, raw_pair(client.clone())).await;
        let base = raw.rate();
        floor.add(raw, base);
        floor_half.add(
            drive(
                &channels,
                Some(base / 2.0 / tasks),
                raw_pair(client.clone()),
            )
            .await,
            base,
        );
        let leased = drive(&channels, None, lease(auth.clone())).await;
        let per_task = leased.rate() / 2.0 / tasks;
        pairs.add(leased, base);
        half.add(
            drive(&channels, Some(per_task), lease(auth.clone())).await,
            base,
        );
        reveals.add(drive(&channels, None, reveal(auth.clone())).await, base);
    }
    floor.print("floor: raw etcd pair (grant, take txn, free txn, revoke)");
    floor_half.print("  floor at half its peak rate");
    pairs.print("AcquireLease+ReleaseLease pairs on etcd (×floor)");
    half.print("AcquireLease on etcd at half its peak rate");
    reveals.print("RevealAccount on etcd, 1,000 accounts (×floor)");
    let (floor_p99, floor_half_p99) = (
        floor.all.percentile_ms(99),
        floor_half.all.percentile_ms(99),
    );
    let half_p99 = half.all.percentile_ms(99);
    println!(
        "  pairs/s vs the floor: {:.2} (target ≥ 0.5); AcquireLease p99 at half its peak {half_p99:.2} ms = {:.2}× the floor's p99 at half its peak ({floor_half_p99:.2} ms), {:.2}× its p99 flat out ({floor_p99:.2} ms) (target ≤ 2)",
        median(&pairs.ratios),
        half_p99 / floor_half_p99,
        half_p99 / floor_p99,
    );
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    EtcdRows {
        targets: vec![
            ("etcd_lease_pair_vs_floor", round(median(&pairs.ratios), 3)),
            (
                "etcd_lease_half_p99_vs_floor_half_p99",
                round(half_p99 / floor_half_p99, 3),
            ),
        ],
        loads: vec![
            ("etcd_floor_pair", floor.summary()),
            ("etcd_floor_half", floor_half.summary()),
            ("etcd_lease_pair", pairs.summary()),
            ("etcd_lease_half", half.summary()),
            ("etcd_reveal", reveals.summary()),
        ],
    }
}
