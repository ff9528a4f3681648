//! `sessiond backup`: fetches the export of a running server (`GET /api/admin/export`),
//! writes it out as it comes, and checks that it came whole: the format's end line must
//! arrive, counting what came before it (docs/EXPORT.md). `sessiond import` restores it.
//!
//! One GET over one plain-HTTP connection (hyper's client, already built for the server), so
//! no HTTP client library is needed. HTTPS is left to the TLS proxy in front of the server
//! and to an HTTPS client such as curl.

use std::io::Write;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::admin::TerminalProgress;
use crate::config::BackupArgs;
use crate::store::Progress;
use crate::transfer::{ExportCheck, Moved};

/// The route that sends the export.
pub const EXPORT_PATH: &str = "/api/admin/export";

/// The export's media type.
const EXPORT_CONTENT_TYPE: &str = "application/x-ndjson";

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server may take to answer, and to send the next bytes of the export: it
/// sends continuously, so a longer silence means the connection is lost.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Most bytes of a refusal read, for its message.
const REFUSAL_BYTES: usize = 64 * 1024;

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The command line cannot work: a URL that is not plain HTTP, say.
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached or refused, or the output could not be written.
    #[error("{0}")]
    Failed(String),
    /// The export stopped before its end line: what was written is not the whole store.
    #[error(
        "the backup is incomplete: {reason}; the {} sessions ({} messages, {bytes} bytes) written before it are not the whole store",
        moved.sessions,
        moved.messages
    )]
    CutShort {
        /// Why it stopped.
        reason: String,
        /// What came before it stopped.
        moved: Moved,
        /// Bytes written.
        bytes: u64,
    },
}

impl BackupError {
    /// The exit code: 2 for a command line that cannot work, 1 for a failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            BackupError::Usage(_) => 2,
            BackupError::Failed(_) | BackupError::CutShort { .. } => 1,
        }
    }
}

/// What a whole backup holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// Sessions and messages.
    pub moved: Moved,
    /// Bytes written.
    pub bytes: u64,
}

/// Where the export is fetched from.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// Host name or IP, to connect to (an IPv6 address without its brackets).
    host: String,
    port: u16,
    /// The `Host` header: the URL's authority.
    authority: String,
    /// The request path: the URL's path, then the route.
    path: String,
}

impl Target {
    /// Reads `--url`: `http://HOST[:PORT][/PREFIX]`, the server's base URL.
    fn parse(url: &str) -> Result<Target, BackupError> {
        let example = "e.g. --url http://127.0.0.1:3000";
        let uri: Uri = url.parse().map_err(|error| {
            BackupError::Usage(format!("--url {url:?} is not a URL ({error}); {example}"))
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                let export = format!("{}{EXPORT_PATH}", url.trim_end_matches('/'));
                return Err(BackupError::Usage(format!(
                    "--url {url}: sessiond backup speaks plain http:// only; through a TLS proxy, fetch the export with an HTTPS client, e.g. curl -fsS -H \"X-API-Key: $KEY\" {export} > backup.ndjson (sessiond import checks it is whole)"
                )));
            }
            _ => {
                return Err(BackupError::Usage(format!(
                    "--url {url:?} must start with http://; {example}"
                )))
            }
        }
        let Some(authority) = uri.authority() else {
            return Err(BackupError::Usage(format!(
                "--url {url:?} names no host; {example}"
            )));
        };
        if uri.query().is_some() || authority.as_str().contains('@') {
            return Err(BackupError::Usage(format!(
                "--url {url:?}: give the server's base URL, without a user or a query (the key goes in --api-key); {example}"
            )));
        }
        let host = authority.host();
        Ok(Target {
            host: host
                .strip_prefix('[')
                .and_then(|host| host.strip_suffix(']'))
                .unwrap_or(host)
                .to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            path: format!("{}{EXPORT_PATH}", uri.path().trim_end_matches('/')),
        })
    }
}

/// Fetches the export of the server at `args.url` into `out`, with progress on stderr (a
/// bar on a terminal, nothing otherwise), and checks that it came whole.
///
/// # Errors
/// [`BackupError::Usage`] for a URL that cannot work (not `http://`);
/// [`BackupError::Failed`] when the server cannot be reached, refuses (its error envelope's
/// message), sends something other than an export, or `out` cannot be written;
/// [`BackupError::CutShort`] when the export stops before its end line.
pub fn backup(args: &BackupArgs, out: &mut impl Write) -> Result<Fetched, BackupError> {
    let target = Target::parse(&args.url)?;
    if let Some(key) = &args.api_key {
        if key.trim().is_empty() {
            return Err(BackupError::Usage(
                "--api-key (SESSIOND_API_KEY) is set but empty; give the key or unset it".into(),
            ));
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| BackupError::Failed(format!("cannot start the async runtime: {error}")))?;
    let progress = TerminalProgress::on_stderr();
    runtime.block_on(fetch(
        &target,
        &args.url,
        args.api_key.as_deref(),
        out,
        &progress,
    ))
}

/// Sends the GET and copies the export to `out` as it comes, following it line by line.
async fn fetch(
    target: &Target,
    url: &str,
    api_key: Option<&str>,
    out: &mut impl Write,
    progress: &TerminalProgress,
) -> Result<Fetched, BackupError> {
    let failed = |what: &str, error: &dyn std::error::Error| {
        BackupError::Failed(format!("{what} {url}: {}", causes(error)))
    };
    let connecting = TcpStream::connect((target.host.as_str(), target.port));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            BackupError::Failed(format!(
                "cannot connect to {url}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|error| failed("cannot connect to", &error))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| failed("cannot talk HTTP to", &error))?;
    // The connection's own errors reach the response or its body: nothing to keep here.
    tokio::spawn(connection);
    let mut request = Request::get(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(USER_AGENT, concat!("sessiond/", env!("CARGO_PKG_VERSION")))
        .header(ACCEPT, EXPORT_CONTENT_TYPE);
    if let Some(key) = api_key {
        request = request.header("x-api-key", key);
    }
    let request = request.body(String::new()).map_err(|_| {
        BackupError::Usage("--api-key must be printable ASCII, as an HTTP header is".into())
    })?;
    let response = tokio::time::timeout(STALL_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| {
            BackupError::Failed(format!(
                "{url} did not answer within {} s",
                STALL_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|error| failed("no answer from", &error))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = read_refusal(&mut body).await;
        return Err(BackupError::Failed(refusal(url, status, &text)));
    }
    if !content_type.starts_with(EXPORT_CONTENT_TYPE) {
        return Err(BackupError::Failed(format!(
            "{url}{EXPORT_PATH} answered {content_type:?}, not an export ({EXPORT_CONTENT_TYPE}): is it a sessiond server?"
        )));
    }
    copy_export(&mut body, url, out, progress).await
}

/// Copies the export from `body` to `out`, following its lines.
async fn copy_export(
    body: &mut Incoming,
    url: &str,
    out: &mut impl Write,
    progress: &TerminalProgress,
) -> Result<Fetched, BackupError> {
    let mut check = ExportCheck::default();
    // The start of a line whose end has not come yet.
    let mut partial = Vec::new();
    let mut bytes: u64 = 0;
    progress.stage("backing up sessions", None);
    let cut_short = |reason: String, check: &ExportCheck, bytes| BackupError::CutShort {
        reason,
        moved: check.moved(),
        bytes,
    };
    loop {
        let frame = match tokio::time::timeout(STALL_TIMEOUT, next_frame(body)).await {
            Err(_) => {
                let reason = format!("nothing came for {} s", STALL_TIMEOUT.as_secs());
                return Err(cut_short(reason, &check, bytes));
            }
            Ok(None) => break,
            Ok(Some(Err(error))) => {
                let reason = format!("the transfer broke off ({})", causes(&error));
                return Err(cut_short(reason, &check, bytes));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers, if a proxy adds any, are not part of the export.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        out.write_all(&data)
            .map_err(|error| BackupError::Failed(format!("cannot write the backup: {error}")))?;
        bytes += data.len() as u64;
        let before = check.moved().sessions;
        follow_lines(&mut check, &mut partial, &data).map_err(|reason| {
            BackupError::Failed(format!("{url}{EXPORT_PATH} sent no valid export: {reason}"))
        })?;
        let moved = check.moved();
        progress.advance(moved.sessions - before);
        progress.note(&format!(
            "{} messages, {}",
            moved.messages,
            indicatif::HumanBytes(bytes)
        ));
    }
    out.flush()
        .map_err(|error| BackupError::Failed(format!("cannot write the backup: {error}")))?;
    if !partial.is_empty() || !check.is_whole() {
        let reason = "the server ended it before its end line".to_owned();
        return Err(cut_short(reason, &check, bytes));
    }
    Ok(Fetched {
        moved: check.moved(),
        bytes,
    })
}

/// Hands every line that `data` completes to `check`, keeping the start of an unfinished
/// one in `partial`.
fn follow_lines(check: &mut ExportCheck, partial: &mut Vec<u8>, data: &[u8]) -> Result<(), String> {
    let mut rest = data;
    while let Some(at) = rest.iter().position(|&byte| byte == b'\n') {
        let (line, after) = rest.split_at(at);
        if partial.is_empty() {
            check.line(line)?;
        } else {
            partial.extend_from_slice(line);
            check.line(partial)?;
            partial.clear();
        }
        rest = &after[1..];
    }
    partial.extend_from_slice(rest);
    Ok(())
}

/// The next frame of `body`, `None` at its end.
async fn next_frame(
    body: &mut Incoming,
) -> Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)).await
}

/// The start of a refusal's body, for its message.
async fn read_refusal(body: &mut Incoming) -> String {
    let mut text = Vec::new();
    while text.len() < REFUSAL_BYTES {
        match tokio::time::timeout(STALL_TIMEOUT, next_frame(body)).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    text.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// One line saying why the server refused: its error envelope's code, message and details
/// when it sent one.
fn refusal(url: &str, status: StatusCode, text: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: EnvelopeError,
    }
    #[derive(serde::Deserialize)]
    struct EnvelopeError {
        code: String,
        message: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_str::<Envelope>(text) {
        Ok(Envelope { error }) => format!(
            "{url} refused the backup: {} {}: {} ({})",
            status.as_u16(),
            printable(&error.code, 120),
            printable(&error.message, 400),
            printable(&error.details, 400)
        ),
        Err(_) => format!(
            "{url} refused the backup: {status} {}",
            printable(text, 120)
        ),
    }
}

/// The start of what a server sent, safe to print on a terminal: no control characters,
/// which could move the cursor or rewrite what the terminal shows.
fn printable(text: &str, chars: usize) -> String {
    let start: String = text
        .chars()
        .take(chars)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    start.trim().to_owned()
}

/// Makes the backup durable when stdout is a file, so that a backup reported whole is
/// still whole after the machine loses power.
///
/// # Errors
/// The file could not be synced.
pub fn sync_stdout() -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    if stdout.metadata()?.is_file() {
        stdout.sync_all()?;
    }
    Ok(())
}

/// An error and its causes, on one line.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let shown = cause.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_names_the_route_under_its_path() {
        let target = Target::parse("http://127.0.0.1:3000").expect("a URL");
        assert_eq!(
            target,
            Target {
                host: "127.0.0.1".into(),
                port: 3000,
                authority: "127.0.0.1:3000".into(),
                path: "/api/admin/export".into(),
            }
        );
        let behind = Target::parse("http://[::1]/sessiond/").expect("a URL");
        assert_eq!(
            (behind.host.as_str(), behind.port, behind.path.as_str()),
            ("::1", 80, "/sessiond/api/admin/export")
        );
    }

    #[test]
    fn a_url_that_is_not_plain_http_is_a_usage_error_that_says_what_to_do() {
        let https = Target::parse("https://sessions.example.com").unwrap_err();
        assert_eq!(https.exit_code(), 2);
        let text = https.to_string();
        assert!(text.contains("plain http:// only"), "{text}");
        assert!(
            text.contains(
                "curl -fsS -H \"X-API-Key: $KEY\" https://sessions.example.com/api/admin/export"
            ),
            "{text}"
        );
        for url in [
            "127.0.0.1:3000",
            "ftp://host/",
            "http://",
            "http://u:p@host/",
            "http://host/?a=1",
        ] {
            let error = Target::parse(url).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{url}: {error}");
        }
    }

    #[test]
    fn a_refusal_is_told_by_its_envelope() {
        let text = r#"{"success":false,"error":{"code":"UNAUTHORIZED","message":"Unauthorized","details":"a valid X-API-Key header is required"}}"#;
        assert_eq!(
            refusal("http://h", StatusCode::UNAUTHORIZED, text),
            "http://h refused the backup: 401 UNAUTHORIZED: Unauthorized (a valid X-API-Key header is required)"
        );
        assert_eq!(
            refusal(
                "http://h",
                StatusCode::BAD_GATEWAY,
                "<html>\nBad gateway</html>"
            ),
            "http://h refused the backup: 502 Bad Gateway <html> Bad gateway</html>"
        );
    }

    #[test]
    fn lines_split_across_chunks_are_followed_whole() {
        let export = "{\"format\":\"sessiond-export\",\"version\":2}\n{\"session\":{},\"messages\":[{},{}]}\n{\"end\":true,\"sessions\":1,\"messages\":2}\n";
        let (mut check, mut partial) = (ExportCheck::default(), Vec::new());
        for piece in export.as_bytes().chunks(7) {
            follow_lines(&mut check, &mut partial, piece).expect("an export");
        }
        assert!(partial.is_empty());
        assert!(check.is_whole());
        assert_eq!(
            check.moved(),
            Moved {
                sessions: 1,
                messages: 2
            }
        );
    }
}
