//! Opening the configured store and the fleet beside it.

use super::contract::Store;
use super::error::StoreError;
use super::{file, redis};
use crate::accounts::fleet::{self, Fleet};

/// With `[store] sentinels`: the service's name, and the primary each
/// sentinel names (`host:port`) or why it did not answer; `None` for
/// another store.
pub async fn ask_sentinels(
    config: &mailgate_config::Config,
) -> Option<(String, Vec<(String, Result<String, String>)>)> {
    let mailgate_config::Store::Redis(r) = &config.store else {
        return None;
    };
    let s = r.sentinels.as_ref()?;
    let answers = redis::ask_sentinels(s, config.gateway.upstream_timeout).await;
    Some((s.service.clone(), answers))
}

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
