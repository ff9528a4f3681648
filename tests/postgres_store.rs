//! The PostgreSQL store through the binary: a store moved sled → PostgreSQL → sled, and a
//! database the binary must refuse. Each test starts a throwaway cluster of its own.

use std::path::Path;
use std::process::{Command, Output, Stdio};

#[path = "support/postgres.rs"]
mod postgres;
use postgres::Postgres;

const BINARY: &str = env!("CARGO_BIN_EXE_sessiond");

/// Runs the binary with `args`, feeding it `input` on stdin.
fn run(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(BINARY)
        .args(args)
        .env_remove("SESSIOND_STORE")
        .env_remove("SESSIOND_DATA_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut stdin = child.stdin.take().expect("a stdin");
    stdin.write_all(input).expect("the input is taken");
    drop(stdin);
    child.wait_with_output().expect("the binary ends")
}

fn succeeded(output: Output) -> Output {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A sled store with branches, an agent's reply with an attachment, metadata and an empty
/// session, written through the library.
fn write_sled_store(dir: &Path) {
    use sessiond::domain::{Attachment, NewMessage, Session, TimeoutConfig, Timestamp};
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let store = sessiond::store::Store::open(dir, &Default::default()).expect("a new store");
        let timeout = TimeoutConfig {
            timeout_minutes: 60,
            auto_renew: true,
            max_duration_minutes: 720,
            warning_threshold_minutes: 5,
        };
        for n in 0..5 {
            let now = Timestamp::now();
            let session = Session::new(
                now.new_v7(),
                now.new_v7(),
                now.new_v7(),
                timeout,
                format!("{{\"n\":{n}}}"),
                now,
            );
            let (id, agent) = (session.id, session.agent_id);
            store.create_session(session).await.expect("stored");
            let mut first = None;
            for m in 0..n {
                let new = NewMessage {
                    content: format!("message {m}"),
                    // Every third one branches from the first.
                    parent_id: if m % 3 == 2 { first } else { None },
                    author_id: (m % 2 == 1).then_some(agent),
                    metadata_json: "{\"k\":\"v\"}".into(),
                    attachments: vec![Attachment {
                        kind: "file".into(),
                        url: format!("https://example.com/{m}"),
                        name: None,
                    }],
                };
                let appended = store
                    .append_message(id, new)
                    .await
                    .expect("stored")
                    .expect("accepted");
                first.get_or_insert(appended.message.id);
            }
        }
        store.close().expect("closed");
    });
}

#[test]
fn a_store_moved_from_sled_to_postgres_and_back_exports_the_same_every_time() {
    // Arrange
    let pg = Postgres::start();
    let (source, back) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_sled_store(source.path());
    let source_dir = source.path().to_str().unwrap();
    let back_dir = back.path().to_str().unwrap();
    let url = pg.url();

    // Act
    let from_sled = succeeded(run(&["export", "--data-dir", source_dir], b""));
    succeeded(run(&["import", "--store", &url], &from_sled.stdout));
    let from_postgres = succeeded(run(&["export", "--store", &url], b""));
    succeeded(run(
        &["import", "--data-dir", back_dir],
        &from_postgres.stdout,
    ));
    let from_sled_again = succeeded(run(&["export", "--data-dir", back_dir], b""));
    let check = run(&["check", "--data-dir", back_dir], b"");

    // Assert
    assert_eq!(from_sled.stdout.iter().filter(|&&b| b == b'\n').count(), 6);
    assert_eq!(from_postgres.stdout, from_sled.stdout);
    assert_eq!(from_sled_again.stdout, from_sled.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert_eq!(pg.psql(&url, "SELECT count(*) FROM messages"), "10");
}

#[test]
fn a_database_of_a_newer_sessiond_is_refused_in_one_line_that_hides_the_password() {
    // Arrange: tables made by this sessiond, then marked as a newer schema's.
    let pg = Postgres::start();
    let url = pg.url();
    succeeded(run(&["export", "--store", &url], b""));
    pg.psql(
        &url,
        "UPDATE sessiond_meta SET value = 99 WHERE key = 'schema_version'",
    );
    // Trust authentication takes any password: one is given only to be hidden.
    let with_password = url.replacen("postgres@", "postgres:s3cret-pw@", 1);

    // Act
    let served = run(
        &["serve", "--addr", "127.0.0.1:0", "--store", &with_password],
        b"",
    );

    // Assert
    let stderr = String::from_utf8_lossy(&served.stderr);
    assert!(!served.status.success());
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("version 99") && last.contains("postgres:***@"),
        "{stderr}"
    );
}
