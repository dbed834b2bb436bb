//! The deploy/ files, checked offline: every Kubernetes manifest passes
//! `kubernetes-validate --strict` (from PyPI) against 1.29 and the newest schema it
//! carries; every container is hardened; the sidecar is a native sidecar probed over
//! gRPC; the deployments on etcd run 3 replicas with rolling updates and liveness on
//! its own health name; the config files in the ConfigMaps are ones credvault reads;
//! the Dockerfile runs as 65532 with `credvault serve`. (No container engine or
//! cluster runs here.)

mod support;

use std::{path::PathBuf, process::Command};

use credvault::config::{Config, Overrides};
use serde_json::Value;

fn manifests() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files = Vec::new();
    for dir in ["sidecar", "standalone", "standalone-ha", "etcd"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    files
}

fn validate(bin: &std::path::Path, files: &[PathBuf], version: Option<&str>) -> (bool, String) {
    let mut command = Command::new(bin.join("kubernetes-validate"));
    command.arg("--strict");
    if let Some(version) = version {
        command.args(["-k", version]);
    }
    let out = command.args(files).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Every document of every manifest, as JSON (PyYAML comes with kubernetes-validate).
fn documents(bin: &std::path::Path, files: &[PathBuf]) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]\n\
                  print(json.dumps(docs))";
    let out = Command::new(bin.join("python"))
        .args(["-c", script])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn manifests_validate_strictly_and_every_container_is_hardened() {
    let bin = support::pypi_tool("kubernetes-validate", "kubernetes-validate==1.37.0");
    let files = manifests();
    for version in [Some("1.29.0"), None] {
        let (ok, text) = validate(&bin, &files, version);
        assert!(ok, "kubernetes-validate {version:?}:\n{text}");
    }
    // The check is real: an unknown field fails it.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(
        files
            .iter()
            .find(|f| f.ends_with("standalone/deployment.yaml"))
            .unwrap(),
    )
    .unwrap();
    std::fs::write(
        &broken,
        text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"),
    )
    .unwrap();
    let (ok, _) = validate(&bin, &[broken], Some("1.29.0"));
    assert!(!ok, "a misspelt field is refused");

    let docs = documents(&bin, &files);
    let workloads: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
        .collect();
    assert_eq!(workloads.len(), 5);
    let mut credvaults = 0;
    for deployment in workloads {
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false, "{deployment}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        // sled admits one process per data directory; on etcd, three replicas roll.
        let (replicas, strategy) = match deployment["metadata"]["name"].as_str().unwrap() {
            "credvault" => (1, "Recreate"),
            "etcd" => (3, ""),
            "render-jobs" => (2, "RollingUpdate"),
            _ => (3, "RollingUpdate"),
        };
        assert_eq!(deployment["spec"]["replicas"], replicas, "{deployment}");
        if !strategy.is_empty() {
            assert_eq!(deployment["spec"]["strategy"]["type"], strategy);
        }
        let containers = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_array().into_iter().flatten());
        for container in containers {
            let security = &container["securityContext"];
            let name = &container["name"];
            assert_eq!(security["runAsNonRoot"], true, "{name}");
            assert!(
                security["runAsUser"].as_u64().is_some_and(|u| u > 0),
                "{name}"
            );
            assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(
                security["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name}"
            );
            assert_eq!(
                security["seccompProfile"]["type"], "RuntimeDefault",
                "{name}"
            );
            if name == "credvault" {
                credvaults += 1;
                assert_eq!(security["runAsUser"], 65532);
                for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                    assert_eq!(container[probe]["grpc"]["port"], 8081, "{probe}");
                }
                // An etcd outage makes a replica unready, never a restart candidate.
                assert_eq!(container["livenessProbe"]["grpc"]["service"], "liveness");
                let keys = container["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["name"] == "keys")
                    .expect("keys mounted");
                assert_eq!(keys["readOnly"], true);
            }
        }
    }
    assert_eq!(credvaults, 3);
    let budget = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "PodDisruptionBudget" && d["metadata"]["name"] == name)
            .map(|d| d["spec"]["minAvailable"].clone())
    };
    assert_eq!(budget("credvault-ha"), Some(serde_json::json!(2)));
    assert_eq!(budget("etcd"), Some(serde_json::json!(2)));

    // The sidecar is native: an init container that keeps running, sharing its socket
    // through a memory-backed emptyDir.
    let sidecar = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "jobs-app")
        .unwrap();
    let pod = &sidecar["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["name"], "credvault");
    assert_eq!(pod["initContainers"][0]["restartPolicy"], "Always");
    let socket = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "socket")
        .unwrap();
    assert_eq!(socket["emptyDir"]["medium"], "Memory");
    let standalone_kinds: Vec<&str> = docs
        .iter()
        .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/name"] == "credvault")
        .filter_map(|d| d["kind"].as_str())
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
    ] {
        assert!(
            standalone_kinds.contains(&kind),
            "{kind} in {standalone_kinds:?}"
        );
    }

    kubernetes_login(&docs);

    // The config files in the ConfigMaps are ones credvault reads (unknown keys fail).
    for config in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
        let toml = config["data"]["credvault.toml"].as_str().unwrap();
        let file = dir.path().join("credvault.toml");
        std::fs::write(&file, toml).unwrap();
        let loaded = Config::load(Some(&file), Overrides::default());
        assert!(
            loaded.is_ok(),
            "{}: {:?}",
            config["metadata"]["name"],
            loaded.err()
        );
    }
}

/// ServiceAccount login on credvault-ha: credvault may create TokenReviews and nothing
/// more, mounts its own token for that alone, and binds the app's ServiceAccount, whose
/// pods carry a 10-minute token for the audience "credvault" and no API-server token.
fn kubernetes_login(docs: &[Value]) {
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name}"))
    };
    let binding = find("ClusterRoleBinding", "credvault-ha-tokenreview");
    assert_eq!(binding["roleRef"]["name"], "system:auth-delegator");
    assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], "credvault-ha");
    let namespace = binding["subjects"][0]["namespace"].clone();
    assert_eq!(
        find("ServiceAccount", "credvault-ha")["metadata"]["namespace"],
        namespace
    );
    let server = &find("Deployment", "credvault-ha")["spec"]["template"]["spec"];
    assert_eq!(server["serviceAccountName"], "credvault-ha");
    let own = server["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "api-token")
        .expect("credvault's own token");
    assert_eq!(
        own["projected"]["sources"][0]["serviceAccountToken"]["path"],
        "token"
    );

    let app = find("Deployment", "render-jobs");
    let pod = &app["spec"]["template"]["spec"];
    let projected = pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"].clone();
    assert_eq!(projected["audience"], "credvault");
    assert_eq!(projected["expirationSeconds"], 600);
    assert_eq!(pod["automountServiceAccountToken"], false);

    let toml = find("ConfigMap", "credvault-ha")["data"]["credvault.toml"]
        .as_str()
        .unwrap();
    let config = Config::from_toml(toml).expect("credvault-ha's config reads");
    let kubernetes = config
        .kubernetes_auth
        .expect("kubernetes_auth is configured");
    assert_eq!(kubernetes.audience, "credvault");
    let review = kubernetes.token_review.expect("TokenReview");
    assert_eq!(
        review.token_file,
        PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
    );
    let bound = &kubernetes.bindings[0];
    assert_eq!(
        (bound.namespace.as_str(), bound.service_account.as_str()),
        (
            app["metadata"]["namespace"].as_str().unwrap(),
            pod["serviceAccountName"].as_str().unwrap()
        )
    );
}

/// Every option of the example config (`key =` lines and `[sections]`, commented or
/// not) appears in the sidecar's ConfigMap.
#[test]
fn the_sidecar_config_map_lists_every_option() {
    let root = env!("CARGO_MANIFEST_DIR");
    let example = std::fs::read_to_string(format!("{root}/deploy/credvault.example.toml")).unwrap();
    let config_map =
        std::fs::read_to_string(format!("{root}/deploy/kubernetes/sidecar/configmap.yaml"))
            .unwrap();
    let options = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .map(|l| l.trim().trim_start_matches('#').trim())
            .filter_map(|l| {
                if l.starts_with("[socket_peers]")
                    || l.starts_with("[callers]")
                    || l.starts_with("[refresh]")
                {
                    return Some(l.to_owned());
                }
                let (key, _) = l.split_once(" = ")?;
                (!key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                    .then(|| key.to_owned())
            })
            .collect()
    };
    let wanted = options(&example);
    let have = options(&config_map);
    assert!(wanted.len() > 35, "{wanted:?}");
    let missing: Vec<&String> = wanted.difference(&have).collect();
    assert!(missing.is_empty(), "the ConfigMap lacks {missing:?}");
}

#[test]
fn the_image_runs_credvault_serve_as_65532() {
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains("AS build"), "multi-stage");
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(
        dockerfile.contains("FROM gcr.io/distroless/cc-debian12:nonroot"),
        "no shell at run time"
    );
    assert!(dockerfile.contains("USER 65532:65532"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["credvault", "serve"]"#));
}
