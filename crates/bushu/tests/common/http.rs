//! Raw HTTP/1.1 for the server tests: one request per connection (`Connection: close`), the status
//! and the whole body (de-chunked), without an HTTP client crate.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One request on its own connection: status and (de-chunked) body. `auth` is the whole
/// `Authorization` header value. Writes may fail once the server has answered and closed (a 413, a
/// connection cap's 503): the answer is still read.
pub fn raw(addr: SocketAddr, method: &str, path: &str, ctype: &str, body: &str, auth: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let auth = auth.map(|k| format!("Authorization: {k}\r\n")).unwrap_or_default();
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(body.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{text:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

/// A JSON request (`body` may be absent), with a bearer `key` if given: status and body.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>, key: Option<&str>) -> (u16, String) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = key.map(|k| format!("Bearer {k}"));
    raw(addr, method, path, "application/json", &body, auth.as_deref())
}

/// POSTs JSON: the status and the body as JSON (a string if it is not JSON).
pub fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let (status, b) = request(addr, "POST", path, Some(&body), None);
    (status, serde_json::from_str(&b).unwrap_or(Value::String(b)))
}

/// GET: status and body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, None, None)
}

/// The body of a chunked transfer.
pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}
