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
    /// The node that served the call; left out when it is the event before's.
    #[prost(string, optional, tag = "13")]
    node_id: Option<String>,
    #[prost(string, tag = "14")]
    principal: String,
    #[prost(int64, tag = "15")]
    unwritten_debit: i64,
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
    let mut before = Before::default();
    for (i, event) in events.iter().enumerate() {
        event_bytes.clear();
        encode_event(event, &before, &mut event_bytes);
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
            encode_event(event, &Before::default(), &mut event_bytes);
        }
        before = Before {
            seq: event.seq,
            at_ms: event.at_ms,
            node_id: &event.node_id,
        };
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

/// What an event is encoded against: the one before it in its block.
#[derive(Default)]
struct Before<'a> {
    seq: u64,
    at_ms: i64,
    node_id: &'a str,
}

fn encode_event(event: &AuditEvent, before: &Before<'_>, out: &mut Vec<u8>) {
    let seq_step = event.seq.wrapping_sub(before.seq);
    if seq_step != 0 {
        encoding::uint64::encode(1, &seq_step, out);
    }
    if event.node_id != before.node_id {
        encoding::string::encode(13, &event.node_id, out);
    }
    let at_ms_step = event.at_ms.wrapping_sub(before.at_ms);
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
        (14, &event.principal),
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
    if event.unwritten_debit != 0 {
        encoding::int64::encode(15, &event.unwritten_debit, out);
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
    let (mut seq, mut at_ms, mut node_id) = (0u64, 0i64, String::new());
    let events = block
        .events
        .into_iter()
        .map(|record| {
            seq = seq.wrapping_add(record.seq_step);
            at_ms = at_ms.wrapping_add(record.at_ms_step);
            if let Some(node) = record.node_id {
                node_id = node;
            }
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
                node_id: node_id.clone(),
                principal: record.principal,
                unwritten_debit: record.unwritten_debit,
            }
        })
        .collect();
    Some(events)
}

#[cfg(test)]
mod tests;
