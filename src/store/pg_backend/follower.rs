//! Hands the events of other nodes' writes to this node's streams. Their commits reach it
//! by `NOTIFY`; it reads the events after the last one published here, in id order, and
//! publishes them: since ids follow commit order, reading "after the last one" never skips
//! one that commits later. A poll every second covers a lost notification. This node's
//! writer publishes its own batches itself, before answering them; the bus skips what
//! either has published already.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{watch, Notify};
use tokio_postgres::{AsyncMessage, NoTls};

use super::schema::{self, int};
use crate::error::{Error, Result};
use crate::store::events::EventBus;

/// What every writer sends when it commits events, and what followers listen to: one
/// channel.
pub(super) const NOTIFY: &str = "NOTIFY sessiond_events";
const LISTEN: &str = "LISTEN sessiond_events";

/// How often the follower reads without being woken.
const POLL: Duration = Duration::from_secs(1);

/// How long the follower waits before connecting again after the database went away.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// Events read per statement.
const READ_BATCH: i64 = 1000;

/// The follower task's handle: wake it, and see how far it has published.
pub(super) struct Follower {
    wake: Arc<Notify>,
    published: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Follower {
    pub(super) fn start(config: tokio_postgres::Config, bus: Arc<EventBus>, from: u64) -> Self {
        let wake = Arc::new(Notify::new());
        let (published_tx, published) = watch::channel(from);
        let task = tokio::spawn(follow(config, bus, wake.clone(), published_tx));
        Follower {
            wake,
            published,
            task,
        }
    }

    /// Waits until every event through `id` is published here, or `patience` runs out.
    pub(super) async fn published_through(&self, id: u64, patience: Duration) {
        self.wake.notify_one();
        let mut published = self.published.clone();
        let _ = tokio::time::timeout(patience, published.wait_for(|&through| through >= id)).await;
    }
}

async fn follow(
    config: tokio_postgres::Config,
    bus: Arc<EventBus>,
    wake: Arc<Notify>,
    published: watch::Sender<u64>,
) {
    loop {
        if let Err(error) = listen_and_publish(&config, &bus, &wake, &published).await {
            tracing::warn!(%error, "lost the database while following events; connecting again");
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Follows on one connection until it fails.
async fn listen_and_publish(
    config: &tokio_postgres::Config,
    bus: &EventBus,
    wake: &Arc<Notify>,
    published: &watch::Sender<u64>,
) -> Result<()> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(super::storage)?;
    let notified = wake.clone();
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => notified.notify_one(),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = closed_tx.send(());
    });
    client.batch_execute(LISTEN).await.map_err(super::storage)?;
    let sql = format!(
        "SELECT {} FROM events WHERE id > $1 ORDER BY id LIMIT $2",
        schema::EVENT_COLUMNS
    );
    loop {
        loop {
            let rows = client
                .query(&sql, &[&int(bus.published_through()), &READ_BATCH])
                .await
                .map_err(super::storage)?;
            let events = rows
                .iter()
                .map(schema::event_from)
                .collect::<Result<Vec<_>>>()?;
            bus.publish_durable(events);
            published.send_replace(bus.published_through());
            if (rows.len() as i64) < READ_BATCH {
                break;
            }
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
            _ = &mut closed => return Err(Error::Degraded("the event connection closed".into())),
        }
    }
}
