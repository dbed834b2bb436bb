//! Tools the tests run that Debian packages: found on PATH, or installed with apt-get
//! when the tests run as root (a fresh CI machine), once per test binary.

use std::{path::PathBuf, process::Command};

/// `binary`, installing Debian's `package` first when it is missing and we may.
pub fn tool(binary: &str, package: &str) -> PathBuf {
    if let Some(found) = which(binary) {
        return found;
    }
    install(package);
    which(binary).unwrap_or_else(|| {
        panic!("{binary} is not installed and could not be installed: run `apt-get install {package}` as root")
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn install(package: &str) {
    let uid = Command::new("id").arg("-u").output().ok();
    let root = uid.is_some_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    assert!(
        root,
        "{package} is not installed; install it (as root: apt-get install {package})"
    );
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        assert!(install(), "apt-get install {package} failed");
    }
}
