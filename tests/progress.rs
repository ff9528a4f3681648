//! Long offline work shows its progress: `check`, `stats`, `export` and `import` draw a bar
//! on stderr when it is a terminal, and print only their summary when it is piped.

use std::path::Path;
use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_sessiond");

/// A closed store of `sessions` sessions of three messages each, written through the library.
fn write_store(dir: &Path, sessions: usize) {
    use sessiond::domain::{NewMessage, Session, TimeoutConfig, Timestamp};
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let store = sessiond::store::Store::open(dir, &Default::default()).expect("a new store");
        let timeout = TimeoutConfig {
            timeout_minutes: 60,
            auto_renew: true,
            max_duration_minutes: 720,
            warning_threshold_minutes: 5,
        };
        for _ in 0..sessions {
            let now = Timestamp::now();
            let session = Session::new(
                now.new_v7(),
                now.new_v7(),
                now.new_v7(),
                timeout,
                "{}".into(),
                now,
            );
            let id = session.id;
            store.create_session(session).await.expect("stored");
            for n in 0..3 {
                let message = NewMessage {
                    content: format!("message {n}"),
                    parent_id: None,
                    author_id: None,
                    metadata_json: "{}".into(),
                    attachments: Vec::new(),
                };
                store
                    .append_message(id, message)
                    .await
                    .expect("stored")
                    .expect("accepted");
            }
        }
        store.flush().expect("flushed");
        store.close().expect("closed");
    });
}

/// Runs `sessiond ARGS --data-dir DIR` with stdin from `input` (a file, or nothing), its
/// stdout and stderr piped.
fn run_piped(args: &[&str], dir: &Path, input: Option<&Path>) -> Output {
    let stdin = match input {
        Some(path) => std::fs::File::open(path).expect("the input").into(),
        None => std::process::Stdio::null(),
    };
    Command::new(BINARY)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("SESSIOND_STORE")
        .env_remove("SESSIOND_DATA_DIR")
        .stdin(stdin)
        .output()
        .expect("the binary runs")
}

/// Runs `command` (a shell command line) with its stdin, stdout and stderr on a
/// pseudo-terminal, through `script` (util-linux); returns what the terminal showed.
fn run_on_a_terminal(command: &str) -> String {
    let output = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("SESSIOND_STORE")
        .env_remove("SESSIOND_DATA_DIR")
        .output()
        .expect("script (util-linux) runs");
    assert!(output.status.success(), "{command}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A path quoted for the shell.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[test]
fn piped_offline_commands_print_only_their_summary_on_stderr() {
    // Arrange
    let dir = tempfile::tempdir().expect("a temp dir");
    let (store, copy) = (dir.path().join("store"), dir.path().join("copy"));
    write_store(&store, 30);
    let export_file = dir.path().join("export.ndjson");

    // Act
    let check = run_piped(&["check"], &store, None);
    let stats = run_piped(&["stats"], &store, None);
    let export = run_piped(&["export"], &store, None);
    std::fs::write(&export_file, &export.stdout).expect("the export is kept");
    let import = run_piped(&["import"], &copy, Some(&export_file));

    // Assert
    for (name, output, expected) in [
        ("check", &check, ""),
        ("stats", &stats, ""),
        ("export", &export, "exported 30 sessions, 90 messages\n"),
        ("import", &import, "imported 30 sessions, 90 messages\n"),
    ] {
        assert!(output.status.success(), "{name}: {output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            expected,
            "{name} printed more than its summary"
        );
    }
}

#[test]
fn offline_commands_on_a_terminal_draw_a_progress_bar_on_stderr() {
    // Arrange
    let dir = tempfile::tempdir().expect("a temp dir");
    let (store, copy) = (dir.path().join("store"), dir.path().join("copy"));
    write_store(&store, 30);
    let export_file = dir.path().join("export.ndjson");
    let (binary, store_arg) = (quoted(Path::new(BINARY)), quoted(&store));

    // Act: stdout goes to a file or /dev/null, so the terminal shows stderr only.
    let check = run_on_a_terminal(&format!("{binary} check --data-dir {store_arg} >/dev/null"));
    let stats = run_on_a_terminal(&format!("{binary} stats --data-dir {store_arg} >/dev/null"));
    let export = run_on_a_terminal(&format!(
        "{binary} export --data-dir {store_arg} >{}",
        quoted(&export_file)
    ));
    let import = run_on_a_terminal(&format!(
        "{binary} import --data-dir {} <{}",
        quoted(&copy),
        quoted(&export_file)
    ));

    // Assert: each names its stage; the bar of a stage of known length is drawn with its
    // count, and cleared before the summary.
    assert!(check.contains("checking sessions ["), "{check:?}");
    assert!(check.contains("/30"), "{check:?}");
    assert!(stats.contains("reading sessionid_session"), "{stats:?}");
    assert!(export.contains("exporting sessions ["), "{export:?}");
    assert!(
        export.ends_with("exported 30 sessions, 90 messages\r\n"),
        "{export:?}"
    );
    assert!(import.contains("importing sessions"), "{import:?}");
    assert!(
        import.ends_with("imported 30 sessions, 90 messages\r\n"),
        "{import:?}"
    );
}
