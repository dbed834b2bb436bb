//! How a block of audit events is stored: protobuf, with secret hashes as their 32
//! bytes and numbers and times as differences from the event before. An event takes
//! about half the bytes it took as JSON, and the trail grows by that much less per
//! audited call. Blocks written as JSON before are still read (see `Stored`).
//!
//! Encoding writes straight from the borrowed events; decoding goes through the
//! derived messages below, so the two must keep the same field numbers.

use prost::{
    Message,
    encoding::{self, WireType},
};

use super::AuditEvent;

/// The package of credvault's own services, which every audited method is in.
const PACKAGE: &str = "credvault.v1.";

#[derive(Clone, PartialEq, Message)]
struct BlockRecord {
    #[prost(message, repeated, tag = "1")]
    events: Vec<EventRecord>,
}

#[derive(Clone, PartialEq, Message)]
struct EventRecord {
    /// The number after the event before's (the first event's: after zero).
    #[prost(uint64, tag = "1")]
    seq_step: u64,
    /// Milliseconds after the event before (the first event's: after the epoch).
    #[prost(sint64, tag = "2")]
    at_ms_step: i64,
    #[prost(string, tag = "3")]
    request_id: String,
    #[prost(string, tag = "4")]
    caller_id: String,
    /// A method outside [`PACKAGE`], whole.
    #[prost(string, tag = "5")]
    rpc: String,
    /// A method of [`PACKAGE`], without it.
    #[prost(string, tag = "12")]
    rpc_in_package: String,
    #[prost(string, tag = "6")]
    provider: String,
    #[prost(string, tag = "7")]
    email: String,
    #[prost(string, tag = "8")]
    target: String,
    #[prost(string, tag = "9")]
    outcome: String,
    /// The hashes in lowercase hex (every hash this trail makes), as their bytes.
    #[prost(bytes = "vec", repeated, tag = "10")]
    hashes: Vec<Vec<u8>>,
    /// Any other hash text, kept as it is; listed after those above.
    #[prost(string, repeated, tag = "11")]
    hash_texts: Vec<String>,
}

/// Consecutive events encoded as one block.
pub(super) struct Encoded {
    /// Where the block's events start in the slice given, and how many there are.
    pub first: usize,
    pub count: usize,
    pub bytes: Vec<u8>,
}

/// `events` as one block.
pub(super) fn encode(events: &[AuditEvent]) -> Vec<u8> {
    encode_blocks(events, usize::MAX, usize::MAX)
        .pop()
        .map_or_else(Vec::new, |block| block.bytes)
}

/// `events` as consecutive blocks of at most `max_events` events, each closed before an
/// event that would take it past `max_bytes` (an event larger than that on its own is a
/// block of one).
pub(super) fn encode_blocks(
    events: &[AuditEvent],
    max_events: usize,
    max_bytes: usize,
) -> Vec<Encoded> {
    let mut blocks = Vec::new();
    let mut block = Encoded {
        first: 0,
        count: 0,
        bytes: Vec::new(),
    };
    let mut event_bytes = Vec::with_capacity(256);
    let (mut seq, mut at_ms) = (0u64, 0i64);
    for (i, event) in events.iter().enumerate() {
        event_bytes.clear();
        encode_event(event, seq, at_ms, &mut event_bytes);
        let framed = 1 + encoding::encoded_len_varint(event_bytes.len() as u64) + event_bytes.len();
        if block.count > 0 && (block.count == max_events || block.bytes.len() + framed > max_bytes)
        {
            let next = Encoded {
                first: i,
                count: 0,
                bytes: Vec::new(),
            };
            blocks.push(std::mem::replace(&mut block, next));
            // The first event of a block counts from zero, not from the one before.
            event_bytes.clear();
            encode_event(event, 0, 0, &mut event_bytes);
        }
        (seq, at_ms) = (event.seq, event.at_ms);
        encoding::encode_key(1, WireType::LengthDelimited, &mut block.bytes);
        encoding::encode_varint(event_bytes.len() as u64, &mut block.bytes);
        block.bytes.extend_from_slice(&event_bytes);
        block.count += 1;
    }
    if block.count > 0 {
        blocks.push(block);
    }
    blocks
}

fn encode_event(event: &AuditEvent, seq: u64, at_ms: i64, out: &mut Vec<u8>) {
    let seq_step = event.seq.wrapping_sub(seq);
    if seq_step != 0 {
        encoding::uint64::encode(1, &seq_step, out);
    }
    let at_ms_step = event.at_ms.wrapping_sub(at_ms);
    if at_ms_step != 0 {
        encoding::sint64::encode(2, &at_ms_step, out);
    }
    let texts = [
        (3, &event.request_id),
        (4, &event.caller_id),
        (6, &event.provider),
        (7, &event.email),
        (8, &event.target),
        (9, &event.outcome),
    ];
    for (tag, text) in texts {
        put_text(tag, text, out);
    }
    match event.rpc.strip_prefix(PACKAGE) {
        Some(method) if !method.is_empty() => put_text(12, method, out),
        _ => put_text(5, &event.rpc, out),
    }
    let mut others = Vec::new();
    for hash in &event.secret_hashes {
        match crate::hex::decode(hash) {
            Some(bytes) => encoding::bytes::encode(10, &bytes, out),
            None => others.push(hash),
        }
    }
    for hash in others {
        encoding::string::encode(11, hash, out);
    }
}

/// A string field, left out when empty (as protobuf leaves out defaults).
fn put_text(tag: u32, text: &str, out: &mut Vec<u8>) {
    if !text.is_empty() {
        encoding::encode_key(tag, WireType::LengthDelimited, out);
        encoding::encode_varint(text.len() as u64, out);
        out.extend_from_slice(text.as_bytes());
    }
}

/// The events of a block; `None` when the bytes are not one.
pub(super) fn decode(bytes: &[u8]) -> Option<Vec<AuditEvent>> {
    let block = BlockRecord::decode(bytes).ok()?;
    let (mut seq, mut at_ms) = (0u64, 0i64);
    let events = block
        .events
        .into_iter()
        .map(|record| {
            seq = seq.wrapping_add(record.seq_step);
            at_ms = at_ms.wrapping_add(record.at_ms_step);
            let mut secret_hashes: Vec<String> = record
                .hashes
                .iter()
                .map(|h| crate::hex::encode(h))
                .collect();
            secret_hashes.extend(record.hash_texts);
            AuditEvent {
                seq,
                at_ms,
                request_id: record.request_id,
                caller_id: record.caller_id,
                rpc: match record.rpc_in_package.is_empty() {
                    true => record.rpc,
                    false => format!("{PACKAGE}{}", record.rpc_in_package),
                },
                provider: record.provider,
                email: record.email,
                target: record.target,
                outcome: record.outcome,
                secret_hashes,
            }
        })
        .collect();
    Some(events)
}

#[cfg(test)]
mod tests {
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
        events[8].rpc = PACKAGE.into();
        events[6].secret_hashes = vec!["ABCD".into(), "".into(), "00ff".into(), "odd".into()];
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
}
