use super::*;

fn reveal(seq: u64, at_ms: i64) -> AuditEvent {
    AuditEvent {
        seq,
        at_ms,
        request_id: format!("9f3a1c2e{seq:016x}"),
        caller_id: "c_5d41402abc4b2a76".into(),
        rpc: "credvault.v1.Credentials/RevealAccount".into(),
        provider: "pixverse".into(),
        email: format!("worker{seq}@example.com"),
        target: "a_0123456789abcdef01234567".into(),
        outcome: "OK".into(),
        secret_hashes: vec!["ab".repeat(32), "cd".repeat(32)],
        node_id: "node-a".into(),
        principal: match seq % 3 {
            0 => "k8s:jobs/renderer".into(),
            _ => String::new(),
        },
        unwritten_debit: 0,
    }
}

#[test]
fn events_come_back_as_they_went_in() {
    let mut events: Vec<_> = (41..300)
        .map(|n| reveal(n, 1_700_000_000_000 + n as i64))
        .collect();
    // Times that go back, numbers that jump, empty fields, hashes of any spelling.
    events[3].at_ms = -5;
    events[4].seq = 1_000;
    events[5] = AuditEvent {
        seq: 1_001,
        ..AuditEvent::default()
    };
    events[7].rpc = "other.Service/Method".into();
    // Another node, and back (events[5] has none at all).
    events[9].node_id = "node-b".into();
    events[8].rpc = PACKAGE.into();
    events[6].secret_hashes = vec!["ABCD".into(), "".into(), "00ff".into(), "odd".into()];
    // A reveal spilled under `audit.sync = "os"` carries its debit.
    events[10].unwritten_debit = 3;
    let decoded = decode(&encode(&events)).unwrap();
    let mut expected = events.clone();
    // Hex hashes are listed before other text.
    expected[6].secret_hashes = vec!["".into(), "00ff".into(), "ABCD".into(), "odd".into()];
    assert_eq!(decoded, expected);
    assert_eq!(decode(&encode(&[])), Some(Vec::new()));
    assert_eq!(decode(b"\xff\xff\xff"), None);
}

#[test]
fn blocks_close_at_their_size_or_count_and_each_decodes_alone() {
    let events: Vec<_> = (1..=100)
        .map(|n| reveal(n, 1_700_000_000_000 + n as i64))
        .collect();
    let one = encode(&events[..1]).len();
    for (max_events, max_bytes) in [(256, one * 10), (7, usize::MAX), (256, 1)] {
        let blocks = encode_blocks(&events, max_events, max_bytes);
        let mut next = 0;
        for block in &blocks {
            assert_eq!(block.first, next);
            assert!(block.count >= 1 && block.count <= max_events);
            assert!(block.count == 1 || block.bytes.len() <= max_bytes);
            let decoded = decode(&block.bytes).unwrap();
            assert_eq!(decoded, events[block.first..block.first + block.count]);
            next += block.count;
        }
        assert_eq!(next, events.len());
    }
    assert_eq!(encode_blocks(&events, 7, usize::MAX).len(), 15);
    assert_eq!(encode_blocks(&events, 256, 1).len(), 100);
    assert!(encode_blocks(&events, 256, one * 10).len() >= 10);
}

#[test]
fn an_event_takes_well_under_its_json() {
    let events: Vec<_> = (1_000_000..1_000_256)
        .map(|n| reveal(n, 1_700_000_000_000 + n as i64 / 8))
        .collect();
    let compact = encode(&events).len() / events.len();
    let json = serde_json::to_vec(&events).unwrap().len() / events.len();
    assert!(
        compact * 100 < json * 55,
        "{compact} bytes per event against {json} as JSON"
    );
}
