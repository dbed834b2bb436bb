use std::{fs, os::unix::fs::PermissionsExt};

use super::*;

fn base(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    }
}

#[test]
fn toml_text_parses_or_names_the_problem() {
    let config = Config::from_toml("listen = \"none\"\n[limits]\ncall_timeout_secs = 5\n").unwrap();
    assert_eq!(config.listen, "none");
    assert_eq!(config.limits.call_timeout_secs, 5);
    let error = Config::from_toml("lisen = \"none\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("lisen"), "{error}");
    let error = Config::from_toml("[limits]\nmax_request_bytes = \"big\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("max_request_bytes"), "{error}");
}

#[test]
fn production_needs_a_master_key_and_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let error = base(dir.path()).resolve().unwrap_err();
    assert!(matches!(error, ConfigError::NoMasterKey), "{error}");

    let mut config = base(dir.path());
    config.master_key = Some(
        MasterKey::generate()
            .unwrap()
            .to_base64()
            .to_string()
            .into(),
    );
    assert!(matches!(
        config.resolve().unwrap_err(),
        ConfigError::NoAdminToken
    ));

    let mut config = base(dir.path());
    config.master_key = Some(
        MasterKey::generate()
            .unwrap()
            .to_base64()
            .to_string()
            .into(),
    );
    config.admin_token = Some(SecretString::from("short".to_owned()));
    assert!(matches!(
        config.resolve().unwrap_err(),
        ConfigError::WeakAdminToken
    ));
}

#[test]
fn dev_creates_a_private_key_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = base(dir.path());
    config.dev = true;
    let first = config.resolve().unwrap();
    let path = dir.path().join(DEV_KEY_FILE);
    assert_eq!(
        first.dev_key.as_ref().map(|dev| dev.path.as_path()),
        Some(path.as_path())
    );
    // Nothing is written until the vault is about to be made.
    assert!(!path.exists());
    first.prepare_data_dir().unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(first.admin_token_generated);

    let mut again = base(dir.path());
    again.dev = true;
    let second = again.resolve().unwrap();
    assert_eq!(first.master_key.key_id(), second.master_key.key_id());
    assert_ne!(first.admin_token, second.admin_token);
}

#[test]
fn bad_fields_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = base(dir.path());
    config.listen = "localhost".into();
    assert_eq!(
        config.resolve().unwrap_err().to_string(),
        "listen: \"localhost\" is not an address like 127.0.0.1:50051 (or \"none\")"
    );
    let mut config = base(dir.path());
    config.socket_mode = "rw".into();
    assert!(matches!(
        config.resolve().unwrap_err(),
        ConfigError::SocketMode(_)
    ));
    let mut config = base(dir.path());
    config.listen = "none".into();
    assert!(matches!(
        config.resolve().unwrap_err(),
        ConfigError::NoListener
    ));
}

#[test]
fn debug_shows_no_secret() {
    let config = Config {
        master_key: Some(SecretString::from("bWFzdGVyLWtleS1zZWNyZXQ=".to_owned())),
        admin_token: Some(SecretString::from("admin-token-secret-value".to_owned())),
        ..Config::default()
    };
    let text = format!("{config:?}");
    assert!(
        !text.contains("bWFzdGVyLWtleS1zZWNyZXQ=") && !text.contains("admin-token-secret-value")
    );
}

#[test]
fn the_etcd_store_is_checked_and_takes_endpoints_as_a_list_or_commas() {
    let listed = Config::from_toml(
        "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n",
    )
    .unwrap();
    // The environment's form: one comma-separated string.
    let commas = Config::from_toml(
        "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = \"http://10.0.0.1:2379, http://10.0.0.2:2379\"\n",
    )
    .unwrap();
    assert_eq!(listed.store.etcd.endpoints, commas.store.etcd.endpoints);
    let StoreSettings::Etcd(options) = commas.store.resolve().unwrap() else {
        panic!("etcd was asked for")
    };
    assert_eq!(options.endpoints.len(), 2);
    assert_eq!(options.prefix, "/credvault");
    assert!(matches!(
        Config::default().store.resolve().unwrap(),
        StoreSettings::Sled
    ));

    let refused = |toml: &str| {
        Config::from_toml(&format!(
            "[store]\nbackend = \"etcd\"\n[store.etcd]\n{toml}"
        ))
        .unwrap()
        .store
        .resolve()
        .unwrap_err()
        .to_string()
    };
    assert!(refused("").contains("at least one endpoint"));
    assert!(refused("endpoints = \"10.0.0.1:2379\"").contains("not a URL"));
    let one = "endpoints = \"http://10.0.0.1:2379\"\n";
    assert!(refused(&format!("{one}prefix = \"credvault\"")).contains("must start with /"));
    assert!(refused(&format!("{one}cert_file = \"c.pem\"")).contains("together"));
    assert!(refused(&format!("{one}username = \"u\"")).contains("together"));
    assert!(refused(&format!("{one}request_timeout_ms = 0")).contains("above 0"));
    let error = refused(&format!(
        "{one}username = \"u\"\npassword_file = \"/nonexistent/pw\""
    ));
    assert!(error.contains("cannot read"), "{error}");
    assert!(
        Config::from_toml("[store]\nbackend = \"zookeeper\"").is_err(),
        "an unknown backend is refused"
    );
    // A rotation in progress cannot be carried onto a shared store.
    let dir = tempfile::tempdir().unwrap();
    let mut rotating = base(dir.path());
    rotating.store = commas.store.clone();
    rotating.previous_master_key = Some(SecretString::from(
        crate::crypto::MasterKey::generate()
            .unwrap()
            .to_base64()
            .to_string(),
    ));
    let error = rotating.resolve().unwrap_err().to_string();
    assert!(
        error.contains("does not run online with the etcd backend"),
        "{error}"
    );
}

#[test]
fn node_id_defaults_to_the_host_name_and_refuses_control_characters() {
    assert!(!store::node_id("").unwrap().is_empty());
    assert_eq!(store::node_id(" node-a ").unwrap(), "node-a");
    assert!(store::node_id("bad\nid").is_err());
}

#[test]
fn audit_log_lines_are_off_unless_asked_for() {
    assert!(!Config::default().audit.log_lines);
    let on = Config::from_toml("[audit]\nlog_lines = true\n").unwrap();
    assert!(on.audit.log_lines);
    let typo = Config::from_toml("[audit]\nlog_line = true\n").unwrap_err();
    assert!(typo.to_string().contains("log_line"), "{typo}");
}

#[test]
fn audit_sync_is_commit_unless_asked_and_os_is_refused_on_etcd() {
    assert_eq!(Config::default().audit.sync, AuditSync::Commit);
    let os = Config::from_toml("[audit]\nsync = \"os\"\n").unwrap();
    assert_eq!(os.audit.sync, AuditSync::Os);
    let typo = Config::from_toml("[audit]\nsync = \"fsync\"\n").unwrap_err();
    assert!(typo.to_string().contains("commit"), "{typo}");
    let on_etcd = Config::from_toml(
        "master_key = \"k\"\n[audit]\nsync = \"os\"\n[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
    )
    .unwrap()
    .resolve()
    .unwrap_err();
    assert!(on_etcd.to_string().contains("audit.sync"), "{on_etcd}");
}
