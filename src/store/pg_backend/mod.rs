//! PostgreSQL under the store, for stores that outgrow one machine.
//!
//! - `schema.rs`: the tables, made and versioned by sessiond, and rows to domain types.
//! - `writer.rs`: the writer thread: each batch of writes is one transaction, committed
//!   with synchronous commit before any write of it is answered.
//! - `write_ops.rs`: [`WriteOps`](crate::store::write::WriteOps) over that transaction.
//! - `reads.rs`: the reads, from a pool of connections.
//!
//! - `follower.rs`: hands every node's events to this node's streams, in id order.
//!
//! Event ids: each batch locks the one row holding the next id for its whole transaction,
//! so batches commit one at a time and ids are handed out in commit order: a reader that
//! has seen id `n` never later finds a new event below `n`.

mod follower;
mod reads;
mod schema;
mod write_ops;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::backend::Release;
use super::events::EventBus;
use super::write::Job;
use super::StoreMetrics;
use crate::error::{Error, Result};

/// How long a reader resuming after an event another node showed it waits for this node to
/// have published it.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(2);

/// How sessiond uses a PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Connections for reads (the writer has one of its own).
    pub pool_size: usize,
    /// Longest a statement may run before PostgreSQL cancels it.
    pub statement_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 16,
            statement_timeout: Duration::from_secs(10),
        }
    }
}

/// The PostgreSQL engine.
pub(super) struct PgBackend {
    pool: Pool,
    /// Connection settings, for the blocking work of `check` and statistics.
    config: tokio_postgres::Config,
    writer: writer::Writer,
    bus: Arc<EventBus>,
    follower: follower::Follower,
}

/// `url` with any password replaced, for logs and errors.
pub fn url_without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// A failure of the database: unreachable (the connection is gone or never came, or the
/// server is shutting down or starting: SQLSTATE classes 08 and 57) is
/// [`Error::Degraded`], which clients see as 503; any other is a storage error.
pub(super) fn storage(error: tokio_postgres::Error) -> Error {
    let going_away = error
        .code()
        .is_some_and(|code| code.code().starts_with("08") || code.code().starts_with("57"));
    let unreachable = going_away
        || error.is_closed()
        || std::error::Error::source(&error).is_some_and(|source| source.is::<std::io::Error>())
        || error.to_string().starts_with("error connecting")
        || error.to_string().starts_with("timeout");
    if unreachable {
        Error::Degraded(format!("the database is unreachable: {error}"))
    } else {
        Error::Storage(Box::new(error))
    }
}

impl PgBackend {
    /// Connects to the database at `url`, making or checking its tables.
    pub(super) async fn open(
        url: &str,
        options: &PgOptions,
        metrics: Arc<StoreMetrics>,
    ) -> Result<PgBackend> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|error| {
            Error::Config(format!(
                "--store {}: not a PostgreSQL URL: {error}",
                url_without_password(url)
            ))
        })?;
        config.options(format!(
            "-c statement_timeout={} -c synchronous_commit=on",
            options.statement_timeout.as_millis()
        ));
        config.connect_timeout(Duration::from_secs(10));
        let prepared = config.clone();
        let redacted = url_without_password(url);
        let next_event_id = tokio::task::spawn_blocking(move || {
            let mut client = postgres::Config::from(prepared)
                .connect(NoTls)
                .map_err(storage)?;
            schema::prepare(&mut client, &redacted)?;
            write_ops::stored_next_event_id(&mut client)
        })
        .await
        .map_err(|error| Error::Panicked(error.to_string()))??;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .build()
            .map_err(|error| Error::Config(format!("the connection pool: {error}")))?;
        let published = next_event_id.saturating_sub(1);
        let bus = Arc::new(EventBus::new(published, metrics.clone()));
        let follower = follower::Follower::start(config.clone(), bus.clone(), published);
        let writer =
            writer::Writer::start(postgres::Config::from(config.clone()), bus.clone(), metrics)?;
        Ok(PgBackend {
            pool,
            config,
            writer,
            bus,
            follower,
        })
    }

    /// Runs `work` with a connection of its own on a thread of its own: for the blocking
    /// offline work (`check`, statistics), which may be asked from inside a runtime.
    fn blocking<T: Send>(
        &self,
        work: impl FnOnce(&mut postgres::Client) -> Result<T> + Send,
    ) -> Result<T> {
        let config = postgres::Config::from(self.config.clone());
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let mut client = config.connect(NoTls).map_err(storage)?;
                    work(&mut client)
                })
                .join()
                .map_err(|panic| Error::Panicked(crate::error::panic_message(panic.as_ref())))?
        })
    }
}

impl super::backend::Backend for PgBackend {
    fn submit(&self, job: Box<dyn Job>) -> Result<()> {
        self.writer.submit(job)
    }

    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn bus(&self) -> &Arc<EventBus> {
        &self.bus
    }

    fn catch_up_events(&self, through: u64) -> super::backend::Reading<'_, ()> {
        Box::pin(async move {
            self.follower
                .published_through(through, CATCH_UP_PATIENCE)
                .await;
            Ok(())
        })
    }

    fn degraded(&self) -> Option<String> {
        None
    }

    fn flush(&self) -> Result<()> {
        // A write is answered once committed, and commits are synchronous.
        Ok(())
    }

    fn session(
        &self,
        id: uuid::Uuid,
    ) -> super::backend::Reading<'_, Option<crate::domain::Session>> {
        Box::pin(self.read_session(id))
    }

    fn list_sessions(
        &self,
        query: super::SessionQuery,
        now: crate::domain::Timestamp,
    ) -> super::backend::Reading<'_, super::SessionPage> {
        Box::pin(self.read_list(query, now))
    }

    fn counts(
        &self,
        now: crate::domain::Timestamp,
    ) -> super::backend::Reading<'_, super::SessionCounts> {
        Box::pin(self.read_counts(now))
    }

    fn sessions_with_deadlines_between(
        &self,
        from: crate::domain::Timestamp,
        to: crate::domain::Timestamp,
    ) -> super::backend::Reading<'_, Vec<uuid::Uuid>> {
        Box::pin(self.read_deadlines_between(from, to))
    }

    fn sessions_expired_by(
        &self,
        cutoff: crate::domain::Timestamp,
        limit: usize,
    ) -> super::backend::Reading<'_, Vec<(crate::domain::Timestamp, uuid::Uuid)>> {
        Box::pin(self.read_expired_by(cutoff, limit))
    }

    fn message(
        &self,
        session_id: uuid::Uuid,
        message_id: uuid::Uuid,
    ) -> super::backend::Reading<'_, Option<crate::domain::Message>> {
        Box::pin(self.read_message(session_id, message_id))
    }

    fn thread(
        &self,
        session_id: uuid::Uuid,
        message_id: uuid::Uuid,
        limit: usize,
    ) -> super::backend::Reading<
        '_,
        std::result::Result<super::MessagePage, crate::domain::SessionError>,
    > {
        Box::pin(self.read_thread(session_id, message_id, limit))
    }

    fn page_messages<'a>(
        &'a self,
        session: &'a crate::domain::Session,
        query: &'a super::MessageQuery,
    ) -> super::backend::Reading<
        'a,
        std::result::Result<super::MessagePage, crate::domain::SessionError>,
    > {
        Box::pin(self.read_page(session, query))
    }

    fn replay(
        &self,
        replay: super::events::EventReplay,
    ) -> super::backend::Reading<'_, Vec<crate::domain::Event>> {
        Box::pin(self.read_replay(replay))
    }

    fn finish_deletion(&self, _session_id: uuid::Uuid) -> super::backend::Reading<'_, ()> {
        // A deletion removes the session's messages in its own transaction.
        Box::pin(async { Ok(()) })
    }

    fn finish_deletions(&self) -> super::backend::Reading<'_, usize> {
        Box::pin(async { Ok(0) })
    }

    fn trim_events(&self, cutoff: crate::domain::Timestamp) -> super::backend::Reading<'_, usize> {
        Box::pin(self.delete_events_before(cutoff))
    }

    // PostgreSQL does the scans itself, a statement at a time: there is nothing to count
    // between them but the stages.
    fn check(&self, progress: &dyn super::Progress) -> Result<super::CheckReport> {
        progress.stage("checking tables", None);
        self.blocking(reads::check)
    }

    fn tree_stats(&self, progress: &dyn super::Progress) -> Result<Vec<super::TreeStats>> {
        progress.stage("sizing tables", None);
        self.blocking(reads::table_stats)
    }

    fn size_on_disk(&self) -> Result<u64> {
        self.blocking(|client| {
            let size: i64 = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .map_err(storage)?
                .get(0);
            Ok(schema::uint(size))
        })
    }

    fn stored_bytes(&self) -> super::backend::Reading<'_, u64> {
        Box::pin(self.read_database_size())
    }

    fn release(&self) -> Release {
        Box::new(|_| Ok(()))
    }

    #[cfg(test)]
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::url_without_password;

    #[test]
    fn a_password_in_a_url_is_hidden_and_nothing_else_changes() {
        for (url, shown) in [
            (
                "postgres://app:p@ss:w0rd@db.example:5432/sessiond",
                "postgres://app:***@db.example:5432/sessiond",
            ),
            (
                "postgresql://app@db.example/sessiond",
                "postgresql://app@db.example/sessiond",
            ),
            (
                "postgres://db.example/sessiond",
                "postgres://db.example/sessiond",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(url_without_password(url), shown);
        }
    }
}

#[cfg(test)]
#[path = "../../../tests/support/postgres.rs"]
mod cluster;

#[cfg(test)]
mod writer_tests {
    use std::sync::Arc;

    use super::cluster::Postgres;
    use super::PgOptions;
    use crate::domain::SystemClock;
    use crate::error::Error;
    use crate::store::test_support::{session_at, text_message, T0};
    use crate::store::write::{Work, WriteTime};
    use crate::store::Store;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_panicking_write_fails_alone_and_its_batch_commits_without_it() {
        // Arrange
        let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
        let store = Store::open_postgres(&pg.url(), &PgOptions::default(), Arc::new(SystemClock))
            .await
            .unwrap();
        let session = session_at(crate::domain::Clock::now(&SystemClock), 30, 5);
        store.create_session(session.clone()).await.unwrap();

        // Act: a write that panics after changing the session, queued with appends so that
        // they share its batch.
        let id = session.id;
        let work: Work<()> = Box::new(move |ctx| {
            let mut changed = ctx.tx.session(id)?.expect("stored");
            changed.message_count += 100;
            ctx.tx.update_session(&changed, &changed)?;
            panic!("boom")
        });
        let panicked = store.write(WriteTime::At(T0), work);
        let appends = futures_util::future::join_all(
            (0..5).map(|n| store.append_message(id, text_message(&format!("m{n}"), None))),
        );
        let (panicked, appends) = tokio::join!(panicked, appends);

        // Assert
        assert!(
            matches!(panicked, Err(Error::Panicked(ref m)) if m == "boom"),
            "{panicked:?}"
        );
        assert!(appends.into_iter().all(|a| matches!(a, Ok(Ok(_)))));
        let stored = store.session(id).await.unwrap().unwrap();
        assert_eq!(
            stored.message_count, 5,
            "nothing of the panicked write was kept"
        );
        assert!(store.check().unwrap().is_clean());
    }
}
