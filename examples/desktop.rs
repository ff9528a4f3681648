//! sessiond embedded in a desktop agent app: its store in the user's data directory, its
//! routes served beside the app's own on loopback, the agent answering from the events
//! in-process, and a clean shutdown.
//!
//! ```sh
//! cargo run --example desktop                            # data in the user's data directory
//! SESSIOND_DESKTOP_DATA=/tmp/desk cargo run --example desktop
//! ```
//!
//! A second copy started while the first runs is told the store is in use and exits.

use std::net::SocketAddr;
use std::path::PathBuf;

use futures_util::StreamExt;
use serde_json::{json, Value};
use sessiond::app::Sessiond;
use sessiond::config::ServeConfig;
use sessiond::domain::{EventData, EventFilter, NewMessage};
use uuid::Uuid;
use warp::Filter;

/// What one run did, for the caller to show (or a test to check).
#[derive(Debug)]
pub struct Summary {
    /// Where the app's HTTP server listened.
    pub addr: SocketAddr,
    /// The user's message as stored.
    pub question: String,
    /// The agent's answer, as the HTTP client received it in `agentResponse.text`.
    pub answer: String,
}

/// The user's data directory for this app, as the platform defines it (XDG on Linux,
/// Application Support on macOS, AppData on Windows), or `SESSIOND_DESKTOP_DATA`.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SESSIOND_DESKTOP_DATA") {
        return dir.into();
    }
    directories::ProjectDirs::from("com", "Example", "Desktop Agent")
        .map(|dirs| dirs.data_dir().join("sessions"))
        .unwrap_or_else(|| PathBuf::from("./desktop-data"))
}

/// Opens sessiond in `data_dir`, serves it with the app's own routes, lets the agent answer
/// one question, and shuts everything down.
///
/// # Errors
/// [`sessiond::Error::InUse`] when another instance has the store open; any other start-up
/// or store error.
pub async fn run(data_dir: PathBuf) -> Result<Summary, Box<dyn std::error::Error + Send + Sync>> {
    // No environment is read: the app decides every setting.
    let config = ServeConfig {
        data_dir,
        ..ServeConfig::default()
    };
    let sessiond = Sessiond::open(&config).await?;

    // The agent lives in the app: it follows its sessions' events in-process and answers
    // each user message through the store.
    let agent_id = Uuid::now_v7();
    let mut events = sessiond.events(EventFilter::Agent(agent_id), None)?;
    let store = sessiond.store().clone();
    let agent = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let EventData::Message { message, .. } = &event.data else {
                continue;
            };
            if message.is_agent {
                continue;
            }
            let reply = NewMessage {
                content: format!("You said: {}", message.content),
                parent_id: Some(message.id),
                author_id: Some(agent_id),
                metadata_json: "{}".into(),
                attachments: Vec::new(),
            };
            if let Err(error) = store.append_message(message.session_id, reply).await {
                eprintln!("the agent could not answer: {error}");
            }
        }
    });

    // The app's own routes and sessiond's, on loopback, stopped by `stop`.
    let app = warp::path!("app" / "version")
        .map(|| env!("CARGO_PKG_VERSION"))
        .map(warp::Reply::into_response)
        .or(sessiond.routes())
        .unify();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        warp::serve(app)
            .incoming(listener)
            .graceful(async {
                let _ = stopped.await;
            })
            .run(),
    );

    // The app's window would talk to this over HTTP; here a client does.
    let client = reqwest::Client::builder().no_proxy().build()?;
    let base = format!("http://{addr}/api/messaging");
    let session: Value = client
        .post(format!("{base}/sessions"))
        .json(&json!({ "agentId": agent_id, "userId": Uuid::now_v7() }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let session_id = session["sessionId"].as_str().unwrap_or_default();
    let answered: Value = client
        .post(format!("{base}/sessions/{session_id}/messages"))
        .json(&json!({ "content": "Hello from the desktop", "transport": "http" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;

    // Shut down in order: stop serving (dropping the routes), end the agent's stream with
    // the shutdown, then close the store.
    let _ = stop.send(());
    server.await?;
    let shutdown = sessiond.shutdown();
    let (closed, agent) = tokio::join!(shutdown, agent);
    agent?;
    closed?;

    Ok(Summary {
        addr,
        question: answered["content"].as_str().unwrap_or_default().to_owned(),
        answer: answered["agentResponse"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    })
}

#[tokio::main]
async fn main() {
    let dir = data_dir();
    match run(dir.clone()).await {
        Ok(summary) => {
            println!(
                "sessiond served on http://{} from {}",
                summary.addr,
                dir.display()
            );
            println!("user:  {}", summary.question);
            println!("agent: {}", summary.answer);
        }
        Err(error) => {
            if let Some(sessiond::Error::InUse(_)) = error.downcast_ref::<sessiond::Error>() {
                eprintln!(
                    "Desktop Agent is already running (its sessions are in {}).",
                    dir.display()
                );
            } else {
                eprintln!("desktop example failed: {error}");
            }
            std::process::exit(1);
        }
    }
}
