//! The `sessiond` binary as an operator meets it: what it says at start, and how it refuses
//! a store that is in use.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_sessiond");

/// A `sessiond serve` child on a free port, stopped when dropped.
struct Server {
    child: Child,
    /// Everything it logged up to and including "sessiond listening".
    log: String,
    /// What it logged after that.
    later: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_at("127.0.0.1:0", data_dir, extra)
    }

    fn start_at(addr: &str, data_dir: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(BINARY)
            .args(["serve", "--addr", addr, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("SESSIOND_API_KEY")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let mut log = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            log.push_str(&line);
            log.push('\n');
            if line.contains("sessiond listening") {
                // Keep draining, so the server never blocks on a full pipe.
                let later = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
                let sink = later.clone();
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        let mut sink = sink.lock().unwrap();
                        sink.push_str(&line);
                        sink.push('\n');
                    }
                });
                return Server { child, log, later };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server did not start:\n{log}");
    }
}

impl Server {
    /// Sends `signal` (a `kill` name such as HUP) and waits for the process to end; returns
    /// its exit code and what it logged meanwhile.
    fn stop_with(&mut self, signal: &str) -> (Option<i32>, String) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("the child can be waited for") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "sessiond did not stop on SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The drain thread may still be reading the last lines.
        std::thread::sleep(Duration::from_millis(100));
        (status.code(), self.later.lock().unwrap().clone())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

    // Assert
    for (name, output) in [("serve", &second), ("check", &check), ("stats", &stats)] {
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
