//! One relay per SQLite file and table, enforced with an OS file lock.
//!
//! SQLite has no `SKIP LOCKED`: two relays draining one file would claim the same rows and
//! publish everything twice. So a relay on SQLite first takes an exclusive lock on
//! `<database file>-<table>-relay.lock` (`flock`, released by the kernel when the process
//! dies, however it dies). A relay that finds the lock taken stands by and tries again at each
//! poll: it takes over once the holder stops. The lock file stays on disk (deleting it would
//! let two relays lock two different files); it is empty.
//!
//! An in-memory database cannot be shared between processes, so it needs no lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;

use actix_outbox::{Result, TableName};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

/// The lock of one relay on one SQLite file and table.
#[derive(Debug)]
pub(crate) struct RelayLock {
    /// The lock file.
    path: PathBuf,
    /// The open, locked file once the lock is held.
    held: Option<File>,
}

/// What [`RelayLock::try_take`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// This relay holds the lock (or needs none).
    Held,
    /// Another relay holds it.
    Busy,
}

impl RelayLock {
    /// The lock for `table` in the database `db` is connected to, or `None` when the main
    /// database is in memory (nothing else can open it).
    pub(crate) async fn locate(db: &DatabaseConnection, table: &TableName) -> Result<Option<Self>> {
        let query = Statement::from_string(
            DbBackend::Sqlite,
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
        );
        let file: Option<String> = match db.query_one_raw(query).await? {
            Some(row) => row.try_get("", "file")?,
            None => None,
        };
        Ok(file.filter(|f| !f.is_empty()).map(|file| Self {
            path: PathBuf::from(format!("{file}-{table}-relay.lock")),
            held: None,
        }))
    }

    /// Where the lock file is.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Takes the lock unless another relay holds it (never blocks).
    pub(crate) fn try_take(&mut self) -> std::io::Result<Taken> {
        if self.held.is_some() {
            return Ok(Taken::Held);
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)?;
        match file.try_lock() {
            Ok(()) => {
                self.held = Some(file);
                Ok(Taken::Held)
            }
            Err(TryLockError::WouldBlock) => Ok(Taken::Busy),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_at(path: PathBuf) -> RelayLock {
        RelayLock { path, held: None }
    }

    #[test]
    fn one_holder_at_a_time_and_the_next_takes_over() {
        let path = std::env::temp_dir().join(format!(
            "actix-outbox-lock-test-{}-{}.lock",
            std::process::id(),
            fastrand::u64(..)
        ));
        let mut first = lock_at(path.clone());
        let mut second = lock_at(path.clone());
        assert_eq!(first.try_take().expect("lock file"), Taken::Held);
        assert_eq!(first.try_take().expect("again"), Taken::Held, "idempotent");
        assert_eq!(second.try_take().expect("lock file"), Taken::Busy);
        drop(first);
        assert_eq!(second.try_take().expect("lock file"), Taken::Held);
        drop(second);
        let _ = std::fs::remove_file(path);
    }
}
