//! How the client prints answers and refusals. `-o json` is the proto3 JSON mapping
//! grpcurl prints (camelCase names, 64-bit numbers and durations as strings, default
//! values left out), made from the same descriptors the server's reflection serves.
//! The table is for people: a list answer as columns, anything else as `field: value`
//! lines, nested fields dotted.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::Failure;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::new();
        for set in [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            // Built into the binary by build.rs; a failure here is a build defect.
            pool.decode_file_descriptor_set(set)
                .expect("the built-in descriptors decode");
        }
        pool
    })
}

/// The schema of the proto message `name` (e.g. `credvault.v1.Account`).
pub fn descriptor(name: &str) -> Option<prost_reflect::MessageDescriptor> {
    pool().get_message_by_name(name)
}

/// `message` (of the proto type `name`, e.g. `credvault.v1.Account`) as proto3 JSON.
pub fn json<M: prost::Message>(message: &M, name: &str) -> Value {
    let Some(descriptor) = pool().get_message_by_name(name) else {
        return Value::Null;
    };
    let Ok(dynamic) = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()) else {
        return Value::Null;
    };
    let options = SerializeOptions::new().skip_default_fields(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or(Value::Null)
}

/// Prints an answer.
pub fn print<M: prost::Message>(format: Format, message: &M, name: &str) {
    let value = json(message, name);
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ),
        Format::Table if value.as_object().is_some_and(|o| o.is_empty()) => {
            println!(
                "{}",
                if name == "google.protobuf.Empty" {
                    "done"
                } else {
                    "(none)"
                }
            );
        }
        Format::Table => print!("{}", table(&value)),
    }
}

/// A list answer (an object with one array of objects) as columns, the rest as lines.
pub fn table(value: &Value) -> String {
    let Value::Object(fields) = value else {
        return format!("{value}\n");
    };
    // A list answer: one list of messages, beside at most a page token.
    let rows = fields.iter().find_map(|(_, v)| match v {
        Value::Array(items) if items.iter().all(Value::is_object) => Some(items),
        _ => None,
    });
    let rows = rows.filter(|_| {
        fields
            .iter()
            .all(|(name, v)| v.is_array() || name.ends_with("Token"))
    });
    let mut out = String::new();
    if let Some(rows) = rows {
        out.push_str(&columns(rows));
        for (name, v) in fields {
            if !v.is_array() {
                out.push_str(&format!("{name}: {}\n", scalar(v)));
            }
        }
        return out;
    }
    let mut lines = Vec::new();
    flatten("", value, &mut lines);
    if lines.is_empty() {
        return "done\n".to_owned();
    }
    for (name, v) in lines {
        out.push_str(&format!("{name}: {v}\n"));
    }
    out
}

fn columns(rows: &[Value]) -> String {
    let mut names: Vec<String> = Vec::new();
    let mut cells: Vec<Vec<(String, String)>> = Vec::new();
    for row in rows {
        let mut flat = Vec::new();
        flatten("", row, &mut flat);
        for (name, _) in &flat {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        cells.push(flat);
    }
    if rows.is_empty() {
        return "(none)\n".to_owned();
    }
    let value_of = |row: &[(String, String)], name: &str| {
        row.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let widths: Vec<usize> = names
        .iter()
        .map(|name| {
            cells
                .iter()
                .map(|row| value_of(row, name).chars().count())
                .max()
                .unwrap_or(0)
                .max(name.chars().count())
        })
        .collect();
    let line = |values: Vec<String>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(names.iter().map(|n| n.to_uppercase()).collect());
    for row in &cells {
        out.push_str(&line(names.iter().map(|n| value_of(row, n)).collect()));
    }
    out
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(fields) => {
            for (name, v) in fields {
                let name = match prefix {
                    "" => name.clone(),
                    _ => format!("{prefix}.{name}"),
                };
                flatten(&name, v, out);
            }
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            for (n, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}.{n}"), item, out);
            }
        }
        other => out.push((prefix.to_owned(), scalar(other))),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A refusal as people read it: the code, the message, and the ErrorInfo decoded
/// (`retry after 42 s`, `max_keys_per_account: 3`); the exit code says whether the
/// server refused (1) or could not be reached (69).
pub fn refusal(status: &Status) -> Failure {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(info) = status.get_details_error_info() {
        text.push_str(&format!("\n  reason: {}", info.reason));
        let mut metadata: Vec<_> = info.metadata.iter().collect();
        metadata.sort();
        for (key, value) in metadata {
            text.push_str(&format!("\n  {key}: {value}"));
        }
        if let Some(secs) = info.metadata.get("retry_after_secs") {
            text.push_str(&format!("\n  (retry after {secs} s)"));
        }
    }
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => Failure::unavailable(text),
        _ => Failure::refused(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_prints_as_columns_and_a_message_as_dotted_lines() {
        let list = serde_json::json!({
            "accounts": [
                {"provider": "pixverse", "email": "a@example.com", "maxJobs": 4},
                {"provider": "pixverse", "email": "bb@example.com", "jwt": {"generation": "2"}}
            ],
            "nextPageToken": "t"
        });
        let shown = table(&list);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(
            lines[0],
            "PROVIDER  EMAIL           MAXJOBS  JWT.GENERATION"
        );
        assert_eq!(lines[1], "pixverse  a@example.com   4");
        assert_eq!(lines[2], "pixverse  bb@example.com           2");
        assert_eq!(lines[3], "nextPageToken: t");
        let one = serde_json::json!({
            "email": "a@example.com",
            "jwt": {"token": "eyJ…"},
            "keys": [{"keyId": "k1"}, {"keyId": "k2"}],
            "scopes": ["pixverse", "media"]
        });
        assert_eq!(
            table(&one),
            "email: a@example.com\njwt.token: eyJ…\nkeys.0.keyId: k1\nkeys.1.keyId: k2\nscopes: pixverse,media\n"
        );
        assert_eq!(table(&serde_json::json!({})), "done\n");
    }

    #[test]
    fn json_is_the_proto3_mapping() {
        let lease = crate::proto::Lease {
            lease_id: "l_1".into(),
            expire_time: 1_799_999_999,
            generation: 2,
            ..Default::default()
        };
        let value = json(&lease, "credvault.v1.Lease");
        assert_eq!(
            value,
            serde_json::json!({"leaseId": "l_1", "expireTime": "1799999999", "generation": "2"})
        );
    }
}
