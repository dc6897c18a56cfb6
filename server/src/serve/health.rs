//! `GET /healthz`, for load balancers and supervisors (no token): `200 ok` when this
//! server can serve — its repository (folder or bucket) is readable and, with the fleet API on,
//! the fleet database answers a cheap query in time — else `503` with one line naming
//! what failed, so a balancer sends agents to another instance meanwhile.

use std::time::Duration;

use super::State;
use super::fleet::{FleetError, chain};

/// A database slower than this to answer counts as down (balancers' own health
/// checks commonly give up after 5 s).
const FLEET_TIMEOUT: Duration = Duration::from_secs(4);

/// Why this server cannot serve now, if it cannot.
pub async fn check(state: &State) -> Result<(), String> {
    // The folder itself, or one listing request to the bucket.
    let readable = match &state.store {
        crate::store::Store::Local(repo) => tokio::fs::read_dir(repo.root())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        crate::store::Store::Object(_) => state
            .store
            .channels()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = readable {
        return Err(format!(
            "the repository {} is not readable: {e}",
            state.store.name()
        ));
    }
    let Some(fleet) = &state.fleet else {
        return Ok(());
    };
    match tokio::time::timeout(FLEET_TIMEOUT, fleet.with_store(|s| s.ping())).await {
        Ok(Ok(())) => Ok(()),
        // Names the database already.
        Ok(Err(e @ FleetError::Unavailable { .. })) => Err(chain(&e)),
        Ok(Err(e)) => Err(format!("fleet database {}: {}", fleet.db(), chain(&e))),
        Err(_) => Err(format!(
            "the fleet database {} did not answer within {} s",
            fleet.db(),
            FLEET_TIMEOUT.as_secs()
        )),
    }
}
