//! Headless Chromium driven over WebDriver: Debian's `chromium` and `chromium-driver`
//! (`make test-deps` installs them). chromedriver speaks HTTP and JSON, so the tests drive it
//! with reqwest (included with `#[path]`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver, of the same version.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a wait for the page lasts before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);
/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// The window: wide enough for the session view's two columns.
const WINDOW: (u32, u32) = (1440, 1000);

/// Whether Chromium and chromedriver are installed.
pub fn available() -> bool {
    Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()
}

/// A chromedriver process and one browser session in it; both end when dropped.
pub struct Browser {
    http: reqwest::Client,
    driver: Child,
    /// `http://127.0.0.1:{port}`: chromedriver's address.
    driver_url: String,
    /// The WebDriver session's id.
    session: String,
    /// Chromium's profile, fresh for each browser.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium in it.
    pub async fn start() -> Browser {
        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut lines = BufReader::new(driver.stdout.take().expect("stdout is piped")).lines();
        let port = loop {
            let line = lines
                .next()
                .and_then(Result::ok)
                .expect("chromedriver says which port it took");
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').trim().to_owned();
            }
        };
        // Keep draining, so chromedriver never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let profile = tempfile::tempdir().expect("a profile directory");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a client");
        let driver_url = format!("http://127.0.0.1:{port}");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    // Without these Chromium keeps calling home, on a machine with no network.
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let created = send(
            &http,
            reqwest::Method::POST,
            &format!("{driver_url}/session"),
            Some(capabilities),
        )
        .await
        .unwrap_or_else(|error| panic!("chromedriver opens a session: {error}"));
        let session = created["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        Browser {
            http,
            driver,
            driver_url,
            session,
            _profile: profile,
        }
    }

    /// A command of this session: `path` is relative to `/session/{id}`.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}/session/{}{path}", self.driver_url, self.session);
        send(&self.http, method, &url, body).await
    }

    /// Loads `url` and waits for it.
    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .unwrap_or_else(|error| panic!("the browser loads {url}: {error}"));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its value.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
        .unwrap_or_else(|error| panic!("the script runs: {error}\n{script}"))
    }

    /// Runs `script` until it returns something other than null or false, for [`WAIT`]; that
    /// value. Fails the test with `what` when it never does.
    pub async fn wait_for(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.run(script, args.clone()).await;
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            if Instant::now() >= deadline {
                let page = self
                    .run("return document.body.innerText.slice(0, 3000);", json!([]))
                    .await;
                let console = self.console().await;
                panic!(
                    "waited {WAIT:?} for {what}\n--- the page:\n{}\n--- its console:\n{}",
                    page.as_str().unwrap_or_default(),
                    console.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the element `css` to be shown, and returns its reference.
    pub async fn element(&self, css: &str) -> String {
        self.wait_for(
            &format!("{css} to be shown"),
            "const e = document.querySelector(arguments[0]); return !!e && e.getClientRects().length > 0 && !e.closest('[hidden]');",
            json!([css]),
        )
        .await;
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .unwrap_or_else(|error| panic!("{css} is found: {error}"));
        found[ELEMENT]
            .as_str()
            .expect("an element reference")
            .to_owned()
    }

    /// Clicks `css` as a person would (WebDriver scrolls to it and checks that it can be
    /// clicked).
    pub async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await
        .unwrap_or_else(|error| panic!("{css} can be clicked: {error}"));
    }

    /// Replaces the text of the input `css` with `text`, typed.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await
        .unwrap_or_else(|error| panic!("{css} can be cleared: {error}"));
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await
        .unwrap_or_else(|error| panic!("{css} takes text: {error}"));
    }

    /// The text of the alert the page shows, if any.
    pub async fn alert(&self) -> Option<String> {
        self.command(reqwest::Method::GET, "/alert/text", None)
            .await
            .ok()
            .map(|text| text.as_str().unwrap_or_default().to_owned())
    }

    /// What the page wrote to its console (and what Chromium reported about it, such as
    /// policy violations), since the last call.
    pub async fn console(&self) -> Vec<String> {
        let entries = self
            .command(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await
            .unwrap_or_default();
        entries
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|entry| format!("{} {}", entry["level"], entry["message"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Saves a PNG of the whole page (the window grown to the page's height) at `path`.
    pub async fn screenshot(&self, path: &Path) {
        // The window's height includes what the browser draws around the page.
        let height = self
            .run(
                "return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)
                    + window.outerHeight - window.innerHeight;",
                json!([]),
            )
            .await
            .as_u64()
            .unwrap_or(u64::from(WINDOW.1))
            .clamp(u64::from(WINDOW.1), 4000);
        self.resize(WINDOW.0, height).await;
        let shot = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await
            .expect("a screenshot");
        self.resize(WINDOW.0, u64::from(WINDOW.1)).await;
        let png = base64_decode(shot.as_str().expect("base64 text"));
        std::fs::create_dir_all(path.parent().expect("a directory"))
            .expect("the directory is made");
        std::fs::write(path, png).expect("the screenshot is written");
    }

    async fn resize(&self, width: u32, height: u64) {
        self.command(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await
        .expect("the window can be resized");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session makes chromedriver close Chromium; killing chromedriver alone
        // would leave Chromium running. Drop cannot wait on async, so plain HTTP/1.1.
        let address = self.driver_url.trim_start_matches("http://");
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                stream,
                "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            read_response(&mut stream);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Reads one HTTP response whole: chromedriver keeps the connection open after it, so
/// reading to the end would wait for the timeout.
fn read_response(stream: &mut std::net::TcpStream) {
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        let Ok(read) = stream.read(&mut buffer) else {
            return;
        };
        if read == 0 {
            return;
        }
        received.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&received);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                return;
            }
        }
    }
}

/// One WebDriver request; its `value`, or the error WebDriver reported.
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let mut body: Value = response.json().await.map_err(|e| e.to_string())?;
    let value = body["value"].take();
    if status.is_success() {
        Ok(value)
    } else {
        Err(format!("{status}: {} {}", value["error"], value["message"]))
    }
}

/// Standard base64 (WebDriver's screenshots), padding allowed.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |byte: u8| match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {byte}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|byte| !byte.is_ascii_whitespace() && *byte != b'=')
        .map(value)
        .collect();
    let mut bytes = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let bits = chunk.iter().enumerate().fold(0u32, |bits, (i, &digit)| {
            bits | (u32::from(digit) << (18 - 6 * i))
        });
        let [_, a, b, c] = bits.to_be_bytes();
        bytes.extend_from_slice(&[a, b, c][..chunk.len() - 1]);
    }
    bytes
}

#[test]
fn base64_decodes_what_it_should() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8h"), b"hello!");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode(""), b"");
}
