//! A `sessiond serve` child process for the tests of the binary (included with `#[path]`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary to completion with `args`, feeding it `input` on stdin; no store is named
/// by the environment.
pub fn run_with_input(args: &[&std::ffi::OsStr], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(super::BINARY)
        .args(args)
        .env_remove("SESSIOND_STORE")
        .env_remove("SESSIOND_DATA_DIR")
        .env_remove("SESSIOND_API_KEY")
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

/// A `sessiond serve` child on a free port, stopped when dropped.
pub struct Server {
    pub child: Child,
    /// Everything it logged up to and including "sessiond listening".
    pub log: String,
    /// What it logged after that.
    pub later: std::sync::Arc<std::sync::Mutex<String>>,
    /// The thread reading `later`: it ends when the process's stderr closes.
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with("127.0.0.1:0", data_dir, extra, &[])
    }

    pub fn start_at(addr: &str, data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with(addr, data_dir, extra, &[])
    }

    /// Starts the server on `addr` with `extra` flags and `env` set.
    pub fn start_with(
        addr: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Server {
        let mut child = Command::new(super::BINARY)
            .args(["serve", "--addr", addr, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .envs(env.iter().copied())
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
                let drain = std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        let mut sink = sink.lock().unwrap();
                        sink.push_str(&line);
                        sink.push('\n');
                    }
                });
                return Server {
                    child,
                    log,
                    later,
                    drain: Some(drain),
                };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server did not start:\n{log}");
    }
}

impl Server {
    /// The address it listens on, as it logged it.
    pub fn addr(&self) -> std::net::SocketAddr {
        let listening = self
            .log
            .lines()
            .find(|line| line.contains("sessiond listening"))
            .expect("a listening line");
        // A text line says `addr=…`; a JSON line (--log-format json) has an "addr" field.
        let addr = match serde_json::from_str::<serde_json::Value>(listening) {
            Ok(line) => line["addr"].as_str().map(str::to_owned),
            Err(_) => listening
                .split("addr=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned),
        };
        addr.expect("the line names the address")
            .parse()
            .expect("a socket address")
    }

    /// Sends `signal` (a `kill` name such as HUP) and waits for the process to end; returns
    /// its exit code and what it logged meanwhile.
    pub fn stop_with(&mut self, signal: &str) -> (Option<i32>, String) {
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
        // Every line is read once the drain thread has met the end of stderr.
        if let Some(drain) = self.drain.take() {
            drain.join().expect("the drain thread ends");
        }
        (status.code(), self.later.lock().unwrap().clone())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
