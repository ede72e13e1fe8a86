//! A WebDriver session with chromedriver on loopback: the handful of W3C WebDriver calls the
//! dashboard check makes (new session, navigate, execute a script, find, type, click,
//! screenshot), each one JSON request over HTTP/1.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::{Value, json};

/// The largest answer read, bytes (a screenshot of a large page is a few MB of base64).
const MAX_ANSWER: u64 = 64 << 20;
/// The key W3C WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A free port on loopback.
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One request; the answer's `value`, or the WebDriver error as an error.
fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // Read until the answer is whole (chromedriver may keep the connection open).
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let (head, payload) = loop {
        let n = s.read(&mut buf)?;
        raw.extend_from_slice(&buf[..n]);
        if raw.len() as u64 > MAX_ANSWER {
            bail!("{method} {path}: an answer over {MAX_ANSWER} bytes");
        }
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
            let body = &raw[split + 4..];
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let whole = match length {
                Some(len) => body.len() >= len,
                None if head.contains("transfer-encoding: chunked") => body.ends_with(b"0\r\n\r\n"),
                None => n == 0,
            };
            if whole {
                let body = match length {
                    Some(len) => body[..len].to_vec(),
                    None if head.contains("transfer-encoding: chunked") => dechunk(body)?,
                    None => body.to_vec(),
                };
                break (head, body);
            }
        }
        if n == 0 {
            bail!("{method} {path}: the connection closed mid-answer");
        }
    };
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("an answer without a status")?;
    let answer: Value = serde_json::from_slice(&payload)
        .with_context(|| format!("{method} {path}: an answer that is not JSON"))?;
    let value = answer.get("value").cloned().unwrap_or(Value::Null);
    if status != 200 {
        bail!(
            "{method} {path}: {status} {} {}",
            value["error"].as_str().unwrap_or(""),
            value["message"].as_str().unwrap_or("")
        );
    }
    Ok(value)
}

/// The body of a chunked answer.
fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without a size line")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16)?;
        b = &b[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = b.get(..size).context("a chunk shorter than its size")?;
        out.extend_from_slice(chunk);
        b = b.get(size + 2..).context("a chunk without its end")?;
    }
}

/// A browser session.
#[derive(Debug)]
pub(crate) struct Session {
    port: u16,
    id: String,
}

impl Session {
    /// Opens headless `chromium` through chromedriver on `port` (waiting for it to listen),
    /// with its profile in `profile`.
    pub(crate) fn start(port: u16, chromium: &str, profile: &Path) -> Result<Self> {
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                // The flags this machine's closed network needs (see the env notes).
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1400,1100",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let until = Instant::now() + Duration::from_secs(30);
        let value = loop {
            match call(port, "POST", "/session", Some(&caps)) {
                Ok(v) => break v,
                Err(e) if Instant::now() < until => {
                    tracing::debug!("chromedriver not ready: {e}");
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => return Err(e.context("opening a browser session")),
            }
        };
        let id = value["sessionId"]
            .as_str()
            .context("a session without an id")?
            .to_owned();
        Ok(Self { port, id })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        call(
            self.port,
            method,
            &format!("/session/{}{path}", self.id),
            body,
        )
    }

    /// Opens `url`.
    pub(crate) fn navigate(&self, url: &str) -> Result<()> {
        self.call("POST", "/url", Some(&json!({ "url": url })))
            .map(drop)
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub(crate) fn execute(&self, script: &str) -> Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    fn find(&self, css: &str) -> Result<String> {
        let v = self.call(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        Ok(v[ELEMENT]
            .as_str()
            .with_context(|| format!("no element for `{css}`"))?
            .to_owned())
    }

    /// Clears the input `css` and types `text` into it, as a user would.
    pub(crate) fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let e = self.find(css)?;
        self.call("POST", &format!("/element/{e}/clear"), Some(&json!({})))?;
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(&json!({ "text": text })),
        )
        .map(drop)
    }

    /// Clicks the element `css`.
    pub(crate) fn click(&self, css: &str) -> Result<()> {
        let e = self.find(css)?;
        self.call("POST", &format!("/element/{e}/click"), Some(&json!({})))
            .map(drop)
    }

    /// Saves a PNG screenshot of the window to `path`; 1.
    pub(crate) fn screenshot(&self, path: &Path) -> Result<usize> {
        let v = self.call("GET", "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("a screenshot that is not a string")?)?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
        println!("== check-dashboard: wrote {}", path.display());
        Ok(1)
    }

    /// Closes the browser.
    pub(crate) fn end(&self) {
        let _ = call(self.port, "DELETE", &format!("/session/{}", self.id), None);
    }
}
