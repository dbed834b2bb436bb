//! `credvault.v1.Keys`: how far a master-key rotation got, for admins.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::authorized;
use crate::{
    auth::Permission,
    crypto::Sealer,
    proto::{self, keys_server::Keys, rotation_status::Phase as ProtoPhase},
    rekey::{Phase, Rekey},
};

pub struct KeysApi {
    rekey: Arc<Rekey>,
    sealer: Arc<Sealer>,
}

impl KeysApi {
    pub fn new(rekey: Arc<Rekey>, sealer: Arc<Sealer>) -> Self {
        Self { rekey, sealer }
    }
}

#[tonic::async_trait]
impl Keys for KeysApi {
    async fn rotation_status(
        &self,
        request: Request<proto::RotationStatusRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        authorized(&request, Permission::Keys, "RotationStatus")?;
        let (examined, resealed) = self.rekey.counts();
        let (phase, error) = match self.rekey.phase() {
            Phase::Idle => (ProtoPhase::Idle, String::new()),
            Phase::Running => (ProtoPhase::Running, String::new()),
            Phase::Done => (ProtoPhase::Done, String::new()),
            Phase::Failed(error) => (ProtoPhase::Failed, error),
        };
        Ok(Response::new(proto::RotationStatus {
            phase: phase as i32,
            current_key_id: self.sealer.key_id().to_string(),
            previous_key_id: self
                .sealer
                .previous_key_id()
                .map(|id| id.to_string())
                .unwrap_or_default(),
            records_examined: examined,
            records_resealed: resealed,
            error,
        }))
    }
}
