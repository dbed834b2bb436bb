//! Clients in other languages are generated from `proto/` with protoc: one
//! `grpc_tools.protoc` run (grpcio-tools from PyPI, as the README shows) over every
//! file, then the README's Python client against a live credvault.

mod support;

use std::{path::Path, process::Command};

use support::{ADMIN_TOKEN, TestServer, upstream_jwt};

const PYTHON_TOOLS: &str = "grpcio-tools==1.85.1 grpcio==1.85.1 googleapis-common-protos==1.76.0";

fn proto_files() -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                files.push(path.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protoc_generates_python_stubs_that_talk_to_credvault() {
    let bin = support::pypi_tool("grpcio-py", PYTHON_TOOLS);
    let python = bin.join("python");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();

    let files = proto_files();
    assert_eq!(files.len(), 5, "every file in proto/: {files:?}");
    let generated = Command::new(&python)
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", root.join("proto").display()))
        .arg(format!("--python_out={}", out.path().display()))
        .arg(format!("--grpc_python_out={}", out.path().display()))
        .args(&files)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "protoc refused proto/: {}",
        String::from_utf8_lossy(&generated.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &support::new_key()).await;
    let addr = server.addr.unwrap().to_string();
    let upstream = upstream_jwt(1_900_000_000, "python-client");
    let run = tokio::task::spawn_blocking({
        let out = out.path().to_owned();
        move || {
            Command::new(&python)
                .arg(root.join("tests/python/client.py"))
                .args([
                    addr.as_str(),
                    ADMIN_TOKEN,
                    "py@example.com",
                    upstream.as_str(),
                ])
                .env("PYTHONPATH", &out)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the Python client failed: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(
        lines[..3],
        [
            "masked password=…secured… token=eyJ…secured…udA",
            "refused code=RESOURCE_EXHAUSTED reason=ALL_SLOTS_BUSY",
            "metadata executing_jobs=1",
        ]
    );
    // The slot frees when the first lease's default 5-minute ttl ends.
    let retry: i64 = lines[3]
        .strip_prefix("metadata retry_after_secs=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!((290..=300).contains(&retry), "{retry}");
    assert_eq!(lines[4], "released");
    server.stop().await;
}
