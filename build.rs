//! Compiles `proto/` with protox (pure Rust, so no `protoc` to install) and writes the
//! descriptor set that the reflection service serves to grpcurl.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);

    let mut protos = Vec::new();
    for entry in fs::read_dir("proto/credvault/v1")? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            protos.push(path);
        }
    }
    protos.sort();

    let descriptors = protox::compile(&protos, ["proto"])?;
    fs::write(
        out_dir.join("credvault_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Messages that carry secrets get hand-written, redacting Debug impls
        // (src/proto.rs) instead of derived ones that would print them.
        .skip_debug([
            ".credvault.v1.Account",
            ".credvault.v1.Jwt",
            ".credvault.v1.JwtInput",
            ".credvault.v1.CreateAccountRequest",
            ".credvault.v1.UpdateAccountRequest",
            ".credvault.v1.CreateCallerRequest",
            ".credvault.v1.CreateCallerResponse",
            ".credvault.v1.Session",
            ".credvault.v1.IssueTokenResponse",
            ".credvault.v1.RevokeTokenRequest",
            ".credvault.v1.Lease",
            ".credvault.v1.CredentialEvent",
            ".credvault.v1.AuditHashRequest",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
