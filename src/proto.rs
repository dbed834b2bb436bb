//! Generated protobuf and gRPC code for `credvault.v1`.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("credvault.v1");

/// The compiled descriptors of every credvault proto file, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("credvault_descriptor");

/// Debug impls for messages that can carry secrets: identifying fields only.
mod redacted_debug {
    use std::fmt;

    use super::*;

    impl fmt::Debug for Account {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Account")
                .field("provider", &self.provider)
                .field("email", &self.email)
                .field("max_jobs", &self.max_jobs)
                .field("status", &self.status)
                .field("version", &self.version)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for Jwt {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Jwt")
                .field("account_id", &self.account_id)
                .field("expire_time", &self.expire_time)
                .field("generation", &self.generation)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for JwtInput {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("JwtInput")
                .field("account_id", &self.account_id)
                .field("expire_time", &self.expire_time)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for CreateAccountRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CreateAccountRequest")
                .field("provider", &self.provider)
                .field("email", &self.email)
                .field("max_jobs", &self.max_jobs)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for UpdateAccountRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("UpdateAccountRequest")
                .field("provider", &self.provider)
                .field("email", &self.email)
                .field("expected_version", &self.expected_version)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for CreateCallerRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CreateCallerRequest")
                .field("email", &self.email)
                .field("roles", &self.roles)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for CreateCallerResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CreateCallerResponse")
                .field("caller_id", &self.caller_id)
                .field("key_id", &self.key_id)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for Session {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Session")
                .field("expires_at", &self.expires_at)
                .field("profile", &self.profile)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for IssueTokenResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("IssueTokenResponse")
                .field("jti", &self.jti)
                .field("expires_at", &self.expires_at)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for RevokeTokenRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RevokeTokenRequest")
                .field("jti", &self.jti)
                .field("caller_id", &self.caller_id)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for AuditHashRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("AuditHashRequest").finish_non_exhaustive()
        }
    }

    impl fmt::Debug for Lease {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Lease")
                .field("lease_id", &self.lease_id)
                .field("provider", &self.provider)
                .field("email", &self.email)
                .field("generation", &self.generation)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for CredentialEvent {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CredentialEvent")
                .field("kind", &self.kind)
                .field("provider", &self.provider)
                .field("email", &self.email)
                .field("generation", &self.generation)
                .field("lease_id", &self.lease_id)
                .field("token_masked", &self.token_masked)
                .finish_non_exhaustive()
        }
    }
}
