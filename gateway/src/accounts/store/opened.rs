//! Opening the configured store and the fleet beside it.

use super::contract::Store;
use super::error::StoreError;
use super::{file, redis};
use crate::accounts::fleet::{self, Fleet};

/// The configured store, and the fleet's other shared state beside it (for
/// the file store: this one process's); a Redis server connected and
/// answering (within `upstream_timeout`), or a clear error.
pub async fn open(config: &mailgate_config::Config) -> Result<(Store, Fleet), StoreError> {
    match &config.store {
        mailgate_config::Store::File => Ok((
            Store::new(file::FileStore::new(&config.gateway.state_dir)),
            fleet::local(),
        )),
        mailgate_config::Store::Redis(r) => {
            let conn = redis::Connection::open(r, config.gateway.upstream_timeout).await?;
            Ok((
                Store::new(redis::RedisStore::new(
                    conn.clone(),
                    r.wait_replicas,
                    r.wait_timeout,
                )),
                fleet::redis(conn),
            ))
        }
    }
}
