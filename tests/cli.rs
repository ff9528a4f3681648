//! The `sessiond` binary as an operator meets it: what it says at start, how it refuses
//! a store that is in use, and the progress its offline commands show on a terminal.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_sessiond");

// Each binary test uses part of it.
#[allow(dead_code)]
#[path = "support/server.rs"]
mod server;
use server::Server;

/// Runs the binary to completion with `args`.
fn run(args: &[&str], data_dir: &Path) -> Output {
    Command::new(BINARY)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("SESSIOND_API_KEY")
        .output()
        .expect("the binary runs")
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_second_server_or_an_offline_command_on_a_store_in_use_says_so_in_one_line_and_exits_2() {
    // Arrange
    let dir = tempfile::tempdir().expect("a temp dir");
    let _first = Server::start(dir.path(), &[]);

    // Act
    let second = run(&["serve", "--addr", "127.0.0.1:0"], dir.path());
    let check = run(&["check"], dir.path());
    let stats = run(&["stats"], dir.path());
    let export = run(&["export"], dir.path());
    let import = run_with_input(&["import"], dir.path(), b"");

    // Assert
    for (name, output) in [
        ("serve", &second),
        ("check", &check),
        ("stats", &stats),
        ("export", &export),
        ("import", &import),
    ] {
        let lines = stderr_lines(output);
        assert_eq!(output.status.code(), Some(2), "{name}: {lines:?}");
        assert_eq!(lines.len(), 1, "{name}: {lines:?}");
        assert!(
            lines[0].contains("is in use (is sessiond running on it?)"),
            "{name}: {lines:?}"
        );
    }
}

#[test]
fn start_up_logs_every_setting_in_effect_but_never_the_key() {
    // Arrange
    let dir = tempfile::tempdir().expect("a temp dir");

    // Act
    let server = Server::start(
        dir.path(),
        &[
            "--api-key",
            "very-secret-key",
            "--reply-timeout-seconds",
            "12",
        ],
    );

    // Assert
    let settings = server
        .log
        .lines()
        .find(|line| line.contains("settings in effect"))
        .unwrap_or_else(|| panic!("no settings line in:\n{}", server.log));
    for setting in [
        "addr: 127.0.0.1:0",
        "reply_timeout_seconds: 12",
        "default_timeout_minutes: 30",
        "max_connections: 1024",
        "idle_timeout_seconds: 60",
        "api_key: Some(\"<set>\")",
    ] {
        assert!(
            settings.contains(setting),
            "{setting} missing from {settings}"
        );
    }
    assert!(!server.log.contains("very-secret-key"), "{}", server.log);
}

#[test]
fn addr_accepts_localhost() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = Server::start_at("localhost:0", dir.path(), &[]);
    assert!(server.log.contains("addr=127.0.0.1:"), "{}", server.log);
}

#[test]
fn make_run_leaves_address_and_data_directory_to_the_environment_unless_given() {
    let dry_run = |args: &[&str]| {
        let output = Command::new("make")
            .args(["--no-print-directory", "-n", "run"])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("ADDR")
            .env_remove("DATA")
            .env_remove("ARGS")
            .output()
            .expect("make runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).expect("UTF-8")
    };
    let plain = dry_run(&[]);
    assert!(
        !plain.contains("--addr") && !plain.contains("--data-dir"),
        "{plain}"
    );
    let given = dry_run(&["ADDR=127.0.0.1:3001", "DATA=/tmp/d", "ARGS=--api-key k"]);
    assert!(
        given.contains("serve --addr 127.0.0.1:3001 --data-dir /tmp/d --api-key k"),
        "{given}"
    );
}

#[test]
fn sighup_and_sigquit_stop_the_server_as_sigterm_does() {
    for signal in ["TERM", "HUP", "QUIT"] {
        // Arrange
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut server = Server::start(dir.path(), &[]);

        // Act
        let (code, log) = server.stop_with(signal);

        // Assert: a drain and a clean exit, and the store is free for the next start.
        assert_eq!(code, Some(0), "SIG{signal}: {log}");
        assert!(log.contains("sessiond stopped"), "SIG{signal}: {log}");
        drop(server);
        let _next = Server::start(dir.path(), &[]);
    }
}

/// A store of `sessions` sessions, each with a long message, written through the library and
/// closed: about 2.5 KB of log per session.
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
                format!("{{\"pad\":\"{}\"}}", "x".repeat(600)),
                now,
            );
            let id = session.id;
            store.create_session(session).await.expect("stored");
            let message = NewMessage {
                content: "y".repeat(2000),
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
        store.flush().expect("flushed");
        store.close().expect("closed");
    });
}

/// Copies the files of the store in `from` into `to` (a directory of files, and `blobs/`).
fn copy_store(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("blobs")).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn a_truncated_store_is_reported_in_one_line_never_with_a_panic() {
    // Arrange: a real store, and copies with their log cut short.
    let dir = tempfile::tempdir().expect("a temp dir");
    let original = dir.path().join("original");
    write_store(&original, 200);
    let log_len = std::fs::metadata(original.join("db")).unwrap().len();
    assert!(log_len > 1024 * 1024, "the log is only {log_len} bytes");
    let mut damaged = Vec::new();
    // Where the cut lands decides whether sled refuses the log or recovers what precedes
    // it; cuts between a fifth and two thirds of this log have made it refuse.
    let cuts = (4..=13).map(|twentieths| (format!("cut{twentieths}"), log_len * twentieths / 20));
    for (name, len) in cuts {
        let copy = dir.path().join(name);
        copy_store(&original, &copy);
        std::fs::OpenOptions::new()
            .write(true)
            .open(copy.join("db"))
            .unwrap()
            .set_len(len)
            .unwrap();
        damaged.push(copy);
    }

    let mut refused = 0;
    for store in &damaged {
        // Act: sled either refuses the log or recovers the part before the cut, as after a
        // crash. Either way: no panic, and a refusal is one line.
        let serve = serve_briefly(store);
        let stats = run(&["stats"], store);
        let check = run(&["check"], store);

        // Assert
        let mut refusals = vec![("stats", &stats)];
        if let Some(output) = &serve {
            refusals.push(("serve", output));
        }
        for (name, output) in refusals {
            let lines = stderr_lines(output);
            if output.status.success() {
                continue;
            }
            refused += 1;
            assert_eq!(output.status.code(), Some(2), "{name}: {lines:?}");
            assert_eq!(lines.len(), 1, "{name}: {lines:?}");
            assert!(lines[0].contains("is damaged"), "{name}: {lines:?}");
            assert!(
                lines[0].contains(&store.display().to_string()),
                "{name}: {lines:?}"
            );
        }
        let report = String::from_utf8_lossy(&check.stdout);
        match check.status.code() {
            Some(0) => assert!(report.contains("clean"), "{report}"),
            Some(1) => assert!(report.contains("problem"), "{report}"),
            other => panic!("check exited with {other:?}: {check:?}"),
        }
        for output in [&stats, &check].into_iter().chain(serve.as_ref()) {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    // Some of these cuts break the log (sled panicked on them before).
    assert!(
        refused > 0,
        "no copy was refused: the test no longer reaches damage"
    );
}

/// Runs `serve` on `store` for up to 20 seconds: `Some(output)` when it exits by itself
/// (refusing the store), `None` when it is still serving then (it is stopped).
fn serve_briefly(store: &Path) -> Option<Output> {
    let mut child = Command::new(BINARY)
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(store)
        .env_remove("SESSIOND_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stderr = child.stderr.take().expect("stderr is piped");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut sink = sink.lock().unwrap();
            sink.push_str(&line);
            sink.push('\n');
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("waitable").is_some() {
            let mut output = child.wait_with_output().expect("its output");
            reader.join().expect("the reader ends with the pipe");
            output.stderr = log.lock().unwrap().clone().into_bytes();
            return Some(output);
        }
        if log.lock().unwrap().contains("sessiond listening") {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            let log = log.lock().unwrap();
            assert!(!log.contains("panicked"), "{log}");
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "serve neither listened nor exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary with `args` and `--data-dir`, feeding it `input` on stdin.
fn run_with_input(args: &[&str], data_dir: &Path, input: &[u8]) -> Output {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.extend([std::ffi::OsStr::new("--data-dir"), data_dir.as_os_str()]);
    server::run_with_input(&all, input)
}

#[test]
fn export_then_import_moves_a_store_to_another_directory_whole() {
    // Arrange
    let (source, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_store(source.path(), 20);

    // Act
    let exported = run(&["export"], source.path());
    let imported = run_with_input(&["import"], target.path(), &exported.stdout);
    let again = run(&["export"], target.path());
    let twice = run_with_input(&["import"], target.path(), &exported.stdout);
    let check = run(&["check"], target.path());

    // Assert
    assert!(exported.status.success(), "{:?}", stderr_lines(&exported));
    assert_eq!(
        stderr_lines(&exported),
        ["exported 20 sessions, 20 messages"]
    );
    // The header, a line per session, the end line.
    assert_eq!(exported.stdout.iter().filter(|&&b| b == b'\n').count(), 22);
    assert!(imported.status.success(), "{:?}", stderr_lines(&imported));
    assert_eq!(
        stderr_lines(&imported),
        ["imported 20 sessions, 20 messages"]
    );
    assert_eq!(
        again.stdout, exported.stdout,
        "the moved store exports the same"
    );
    assert_eq!(twice.status.code(), Some(1));
    let refused = stderr_lines(&twice);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].starts_with("sessiond: import stopped at line 2: session ")
            && refused[0].contains("already exists"),
        "{refused:?}"
    );
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn export_refuses_a_directory_without_a_store_in_one_line() {
    let empty = tempfile::tempdir().unwrap();
    let output = run(&["export"], empty.path());
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("no store in"), "{lines:?}");
}

// Long offline work shows its progress: `check`, `stats`, `export` and `import` draw a bar
// on stderr when it is a terminal, and print only their summary when it is piped.

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
        ("export", &export, "exported 30 sessions, 30 messages\n"),
        ("import", &import, "imported 30 sessions, 30 messages\n"),
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
        export.ends_with("exported 30 sessions, 30 messages\r\n"),
        "{export:?}"
    );
    assert!(import.contains("importing sessions"), "{import:?}");
    assert!(
        import.ends_with("imported 30 sessions, 30 messages\r\n"),
        "{import:?}"
    );
}
