//! `mailgate store migrate`: every account's sealed record copied between
//! the file store and the shared store of `[store]`, without any password
//! (records are copied sealed). Records the destination already has are
//! left as they are (a compare-and-swap on "absent").

use mailgate_config::Config;

use super::{Expect, Store, StoreError, file, opened};

/// The store `mailgate store migrate --to` copies into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The files under `state_dir` (from the shared store).
    File,
    /// The Redis store of `[store]` (from the files).
    Redis,
}

/// What a migration did.
#[derive(Debug)]
pub struct Migrated {
    /// Where from and where to, as a person names them.
    pub from: &'static str,
    pub into: &'static str,
    pub copied: usize,
    /// Accounts the destination already had (left as they are).
    pub kept: Vec<String>,
    /// Records of the source that could not be read (not copied).
    pub unreadable: Vec<StoreError>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "[store] is not backend = \"redis\": set its url first; migrate copies between the files and that Redis"
    )]
    NoSharedStore,
    #[error("{0}")]
    Open(StoreError),
    #[error("copying {user}: {source}")]
    Copy { user: String, source: StoreError },
}

/// Copies every record into the store `to` from the other one.
pub async fn migrate(config: &Config, to: Kind) -> Result<Migrated, MigrateError> {
    if matches!(config.store, mailgate_config::Store::File) {
        return Err(MigrateError::NoSharedStore);
    }
    let (shared, _fleet) = opened::open(config).await.map_err(MigrateError::Open)?;
    let files = Store::new(file::FileStore::new(&config.gateway.state_dir));
    let (from, into, names) = match to {
        Kind::Redis => (&files, &shared, ("the files", "Redis")),
        Kind::File => (&shared, &files, ("Redis", "the files")),
    };
    let (records, unreadable) = from.list().await;
    let mut done = Migrated {
        from: names.0,
        into: names.1,
        copied: 0,
        kept: Vec::new(),
        unreadable,
    };
    for f in &records {
        match into.save(f, Expect::Absent).await {
            Ok(_) => done.copied += 1,
            Err(StoreError::Changed { .. }) => done.kept.push(f.user.clone()),
            Err(source) => {
                return Err(MigrateError::Copy {
                    user: f.user.clone(),
                    source,
                });
            }
        }
    }
    Ok(done)
}
