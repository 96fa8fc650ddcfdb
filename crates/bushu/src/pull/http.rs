//! HTTP(S) for `bushu pull`: a blocking `ureq` client over rustls (the system CA store, so `SSL_CERT_FILE`
//! and corporate roots work; proxies from `HTTPS_PROXY`/`ALL_PROXY`), JSON/page fetches, and a resumable
//! download into a `.partial` file.
//!
//! A download appends to what the `.partial` file already holds by asking for `Range: bytes=N-`. A `206` must
//! start at `N`; a `200` (a server that ignores ranges) restarts the file from zero. When the connection drops
//! mid-body (or the body ends short of its announced length) the transfer is retried from the bytes on disk,
//! up to [`MAX_RETRIES`] times in a row without progress, with a growing pause; redirects are followed.

use super::progress::Progress;
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// Attempts in a row that bring no new byte before a download gives up.
pub const MAX_RETRIES: u32 = 5;

/// The client: proxies from `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`, except for loopback hosts and the hosts
/// of `NO_PROXY` (which `ureq` itself does not read).
pub struct Client {
    proxied: ureq::Agent,
    direct: ureq::Agent,
}

fn builder() -> ureq::AgentBuilder {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .redirects(10)
        .user_agent(concat!("bushu/", env!("CARGO_PKG_VERSION")))
}

/// The host of a URL, lower case, without port or brackets.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map(|x| x.1).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map(|x| x.1).unwrap_or(authority);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.to_ascii_lowercase()
}

/// Whether `url` is reached without the proxy: loopback, or a host `no_proxy` names (`*`, `host`,
/// `.domain` or `domain` for its subdomains too).
fn bypass(url: &str, no_proxy: &str) -> bool {
    let host = host_of(url);
    if host == "localhost" || host == "::1" || host.starts_with("127.") {
        return true;
    }
    no_proxy.split(',').map(|e| e.trim().to_ascii_lowercase()).any(|e| {
        let e = e.trim_start_matches('.');
        !e.is_empty() && (e == "*" || host == e || host.ends_with(&format!(".{e}")))
    })
}

impl Client {
    pub fn new() -> Client {
        Client {
            proxied: builder().try_proxy_from_env(true).build(),
            direct: builder().try_proxy_from_env(false).build(),
        }
    }

    /// A GET request for `url` on the right agent.
    pub fn get(&self, url: &str) -> ureq::Request {
        let no_proxy = std::env::var("NO_PROXY")
            .or_else(|_| std::env::var("no_proxy"))
            .unwrap_or_default();
        match bypass(url, &no_proxy) {
            true => self.direct.get(url),
            false => self.proxied.get(url),
        }
    }
}

impl Default for Client {
    fn default() -> Client {
        Client::new()
    }
}

/// One line for a failed request: the HTTP status, or why the host could not be reached.
pub fn describe(url: &str, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Status(code, r) => {
            anyhow::anyhow!("{url}: HTTP {code} {}", r.status_text())
        }
        ureq::Error::Transport(t) => {
            anyhow::anyhow!("cannot reach {url} ({t}); check the network connection and try again")
        }
    }
}

/// GETs `url` with `accept` and returns the body as text with its content type.
pub fn get_text(agent: &Client, url: &str, accept: &str) -> Result<(String, String)> {
    let r = agent
        .get(url)
        .set("Accept", accept)
        .call()
        .map_err(|e| describe(url, e))?;
    let ctype = r.content_type().to_string();
    let body = r
        .into_string()
        .with_context(|| format!("cannot read the answer of {url}"))?;
    Ok((ctype, body))
}

/// Pause before retry `n` (1-based): 0.25 s, 0.5 s, 1 s, ... at most 8 s.
fn backoff(n: u32) -> Duration {
    Duration::from_millis((250u64 << n.saturating_sub(1).min(5)).min(8000))
}

/// `bytes START-END/TOTAL` → (START, TOTAL if given).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let v = v.trim().strip_prefix("bytes")?.trim();
    let (range, total) = v.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// Downloads `url` into `partial`, resuming from its current length. `expected`: the full size when known
/// (a longer partial file is started over). Returns the final size. `progress` counts the bytes of this file
/// on top of `offset` (earlier files of the same pull).
pub fn download(
    agent: &Client,
    url: &str,
    partial: &Path,
    expected: Option<u64>,
    progress: &mut Progress,
    offset: u64,
) -> Result<u64> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(partial)
        .with_context(|| format!("cannot open {}", partial.display()))?;
    let mut expected = expected;
    let mut failures = 0u32;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let mut have = file.metadata()?.len();
        if let Some(n) = expected {
            if have == n {
                return Ok(have);
            }
            if have > n {
                truncate(&file, partial)?;
                have = 0;
            }
        }
        progress.set_position(offset + have);
        let mut req = agent.get(url).set("Accept-Encoding", "identity");
        if have > 0 {
            req = req.set("Range", &format!("bytes={have}-"));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(416, _)) if have > 0 => {
                // Nothing past what we hold: a complete file when the size is unknown, else start over.
                if expected.is_none() {
                    return Ok(have);
                }
                truncate(&file, partial)?;
                continue;
            }
            Err(ureq::Error::Transport(t)) if failures < MAX_RETRIES => {
                failures += 1;
                progress.note(&format!("connection failed ({t}); retrying in {:?}", backoff(failures)));
                std::thread::sleep(backoff(failures));
                continue;
            }
            Err(e) => return Err(describe(url, e)),
        };
        let status = resp.status();
        // Where this body starts and how long the whole file is.
        let total = match status {
            206 => {
                let cr = resp.header("Content-Range").unwrap_or("");
                let Some((start, total)) = parse_content_range(cr) else {
                    bail!("{url}: partial answer with a bad Content-Range {cr:?}");
                };
                if start != have {
                    bail!("{url}: asked for bytes from {have}, the server sent from {start}");
                }
                total
            }
            200 => {
                if have > 0 {
                    // The server ignores ranges: start over.
                    truncate(&file, partial)?;
                    have = 0;
                    progress.set_position(offset);
                }
                resp.header("Content-Length").and_then(|v| v.trim().parse().ok())
            }
            s => bail!("{url}: unexpected HTTP {s} {}", resp.status_text()),
        };
        if let (Some(t), Some(e)) = (total, expected) {
            if t != e {
                bail!("{url}: the server has {t} bytes, expected {e}");
            }
        }
        expected = expected.or(total);
        let mut body = resp.into_reader();
        let before = have;
        let dropped = loop {
            match body.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => {
                    file.write_all(&buf[..n])
                        .with_context(|| format!("cannot write {}", partial.display()))?;
                    have += n as u64;
                    progress.inc(n as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e.to_string()),
            }
        };
        file.flush()?;
        let short = expected.is_some_and(|e| have < e);
        if dropped.is_none() && !short {
            if let Some(e) = expected {
                if have != e {
                    bail!("{url}: received {have} bytes, expected {e}");
                }
            }
            return Ok(have);
        }
        if have > before {
            failures = 0;
        }
        failures += 1;
        if failures > MAX_RETRIES {
            bail!(
                "{url}: the connection keeps dropping ({}); {have} bytes are kept, run the same command to resume",
                dropped.unwrap_or_else(|| "the body ended early".into())
            );
        }
        progress.note(&format!(
            "connection lost after {} ({}); resuming",
            super::progress::human(have),
            dropped.unwrap_or_else(|| "the body ended early".into())
        ));
        std::thread::sleep(backoff(failures));
    }
}

fn truncate(file: &File, path: &Path) -> Result<()> {
    file.set_len(0)
        .with_context(|| format!("cannot truncate {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_bypass() {
        assert!(bypass("http://127.0.0.1:8080/simple", ""));
        assert!(bypass("http://[::1]:80/x", ""));
        assert!(bypass("http://LOCALHOST/x", ""));
        assert!(!bypass("https://pypi.org/simple", ""));
        assert!(bypass("https://pypi.org/simple", "example.com, pypi.org"));
        assert!(bypass("https://files.pythonhosted.org/p", ".pythonhosted.org"));
        assert!(bypass("https://user:pw@mirror.corp:8443/simple", "corp"));
        assert!(!bypass("https://notcorp/simple", "corp"));
        assert!(bypass("https://x/", "*"));
    }

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 100-199/1000"), Some((100, Some(1000))));
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("items 0-0/1"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(20), Duration::from_millis(8000));
    }
}
