//! A throwaway PostgreSQL cluster for the tests (included with `#[path]`): initdb in a temp
//! dir, a free loopback port, trust authentication and a database named `sessiond`; stopped
//! and removed when dropped. Debian's `postgresql` package is installed when it is missing.
#![allow(dead_code)] // each test crate uses part of it

use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// A running cluster; `pg_ctl stop -m immediate` and the temp dir removed when dropped.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// initdb refuses to run as root: as root, the server's tools run as the `postgres` user.
    as_postgres: bool,
}

impl Postgres {
    /// Creates and starts a cluster with a `sessiond` database; panics saying why it could not.
    pub fn start() -> Postgres {
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("sessiond-pg-")
            .tempdir()
            .expect("a temp dir");
        if as_postgres {
            run(
                Command::new("chown").arg("postgres:").arg(dir.path()),
                "chown",
            );
        }
        // The port is free now; nothing else on this machine should take it within a second.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        // Made before anything can fail, so that Drop cleans up after a panic below.
        let pg = Postgres {
            bin: bin_dir(),
            dir,
            port,
            as_postgres,
        };
        let data = pg.data();
        let mut initdb = pg.tool("initdb");
        initdb.arg("-D").arg(&data);
        initdb.args([
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--locale=C",
        ]);
        pg.check(&mut initdb, "initdb");
        // In postgresql.conf rather than on pg_ctl's command line, so every restart keeps them.
        let settings = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = on\nsynchronous_commit = on\nmax_connections = 200\n",
            pg.dir.path().display()
        );
        OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut conf| conf.write_all(settings.as_bytes()))
            .expect("postgresql.conf is writable");
        pg.pg_ctl(&["start"]);
        pg.psql(&pg.url_of("postgres"), "create database sessiond");
        pg
    }

    /// `postgres://postgres@127.0.0.1:PORT/sessiond`.
    pub fn url(&self) -> String {
        self.url_of("sessiond")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of psql, pg_ctl and the rest.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Creates database `name` (letters, digits and `_`) on this cluster; returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name {name:?}: letters, digits and _ only (it goes into a URL)"
        );
        // Quoted, so that the name keeps its case, as the URL has it.
        self.psql(&self.url(), &format!("create database \"{name}\""));
        self.url_of(name)
    }

    /// Runs `sql` through psql against `url`; returns what it printed (unaligned, no headers,
    /// trimmed). Panics when psql fails.
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            url,
            "-c",
            sql,
        ]);
        let out = run(&mut cmd, &format!("psql {url} -c {sql:?}"));
        out.trim().to_string()
    }

    /// `pg_ctl restart -m fast`: aborts open transactions, drops connections, and returns
    /// when the server accepts connections again.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]);
    }

    /// `pg_ctl stop -m fast`; `restart` starts it again.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]);
    }

    fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// pg_ctl with -w (waits until it is done) and -l (without it the server would keep
    /// pg_ctl's stdout, our pipe, open and we would wait for it forever).
    fn pg_ctl(&self, args: &[&str]) {
        let mut cmd = self.tool("pg_ctl");
        cmd.args(["-w", "-t", "60", "-D"]).arg(self.data());
        cmd.arg("-l").arg(self.log()).args(args);
        self.check(&mut cmd, &format!("pg_ctl {}", args.join(" ")));
    }

    /// A server tool from the bin dir (run as `postgres` when we are root), in the temp dir:
    /// the `postgres` user may not be allowed into our current directory.
    fn tool(&self, name: &str) -> Command {
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(self.bin.join(name));
            cmd
        } else {
            Command::new(self.bin.join(name))
        };
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// Runs `cmd`; on failure, panics with what it printed and the server's log.
    fn check(&self, cmd: &mut Command, what: &str) {
        if let Err(message) = try_run(cmd) {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            panic!("PostgreSQL {what} failed: {message}\nserver log:\n{log}");
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate: nothing in a throwaway cluster is worth a checkpoint. It fails, quietly,
        // when the cluster is already stopped. The TempDir then removes the files.
        let _ = self
            .tool("pg_ctl")
            .args(["stop", "-w", "-m", "immediate", "-D"])
            .arg(self.data())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The newest /usr/lib/postgresql/<major>/bin, installing Debian's package when there is none.
fn bin_dir() -> PathBuf {
    // One installer at a time: tests in one crate start clusters in parallel.
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(bin) = find_bin_dir() {
        return bin;
    }
    eprintln!("installing postgresql (Debian package)");
    let script = "apt-get update -qq && \
                  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null";
    let mut cmd = if is_root() {
        Command::new("sh")
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("sh");
        cmd
    };
    run(
        cmd.args(["-c", script]),
        "installing Debian's postgresql package",
    );
    find_bin_dir().expect("postgresql is installed but /usr/lib/postgresql/*/bin/initdb is not")
}

fn find_bin_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u"), "id -u").trim() == "0"
}

/// Runs `cmd` to completion; its stdout, or a panic saying what failed and what it printed.
fn run(cmd: &mut Command, what: &str) -> String {
    try_run(cmd).unwrap_or_else(|message| panic!("{what} failed: {message}"))
}

fn try_run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("{cmd:?} did not run: {err}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(format!("{cmd:?}: {}\n{stdout}{stderr}", out.status))
}
