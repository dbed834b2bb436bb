//! `credvault.v1.Keys`: how far a master-key rotation got, for admins.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{authorized, call_audit, status::field_error};
use crate::{
    auth::Permission,
    callers::CallerService,
    crypto::Sealer,
    ops::rekey::{Phase, Rekey, RotateError},
    proto::{self, key_rotation::Phase as ProtoPhase, keys_server::Keys},
    validate,
};

pub struct KeysApi {
    rekey: Arc<Rekey>,
    sealer: Arc<Sealer>,
    callers: Arc<CallerService>,
}

impl KeysApi {
    pub fn new(rekey: Arc<Rekey>, sealer: Arc<Sealer>, callers: Arc<CallerService>) -> Self {
        Self {
            rekey,
            sealer,
            callers,
        }
    }

    fn status(&self) -> proto::KeyRotation {
        let (examined, resealed) = self.rekey.counts();
        let (phase, error) = match self.rekey.phase() {
            Phase::Idle => (ProtoPhase::Idle, String::new()),
            Phase::Running => (ProtoPhase::Running, String::new()),
            Phase::Done => (ProtoPhase::Done, String::new()),
            Phase::Failed(error) => (ProtoPhase::Failed, error),
        };
        proto::KeyRotation {
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
        }
    }
}

#[tonic::async_trait]
impl Keys for KeysApi {
    async fn rotation_status(
        &self,
        request: Request<proto::RotationStatusRequest>,
    ) -> Result<Response<proto::KeyRotation>, Status> {
        authorized(&request, Permission::Keys, "RotationStatus")?;
        Ok(Response::new(self.status()))
    }

    async fn rotate_master_key(
        &self,
        request: Request<proto::RotateMasterKeyRequest>,
    ) -> Result<Response<proto::KeyRotation>, Status> {
        authorized(&request, Permission::Keys, "RotateMasterKey")?;
        let audit = call_audit(&request);
        let path = request.into_inner().new_key_file;
        validate::text("new_key_file", &path, validate::MAX_PATH_LEN, true).map_err(field_error)?;
        audit.target(&path);
        self.rekey
            .rotate_to_file(&path, self.callers.clone())
            .map_err(|error| match error {
                RotateError::BadKey(_) => Status::invalid_argument(error.to_string()),
                RotateError::Running | RotateError::NotNow | RotateError::Shared => {
                    Status::failed_precondition(error.to_string())
                }
            })?;
        Ok(Response::new(self.status()))
    }
}
