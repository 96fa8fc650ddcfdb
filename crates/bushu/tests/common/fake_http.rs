//! A small HTTP/1.1 server on 127.0.0.1 for the download tests: one thread per connection, `Connection:
//! close`, routes given as a closure. [`serve_bytes`] answers like a file host (byte ranges: `206` with
//! `Content-Range`, `416` past the end); a [`Reply`] can announce its full length and drop the connection after
//! some bytes of the body. Every request is logged (method, path, headers) for the tests to check.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A request as the handler sees it (header names lower-case).
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// An answer.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send only this many bytes of the body (the announced length stays the full one), then close.
    pub drop_after: Option<usize>,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            drop_after: None,
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    pub fn json(v: &serde_json::Value) -> Reply {
        Reply::new(200, v.to_string()).header("Content-Type", "application/vnd.pypi.simple.v1+json")
    }
    pub fn redirect(location: &str) -> Reply {
        Reply::new(302, Vec::new()).header("Location", location)
    }
    pub fn drop_after(mut self, n: usize) -> Reply {
        self.drop_after = Some(n);
        self
    }
}

/// `data` served like a file host: the whole file, or the range asked for.
pub fn serve_bytes(req: &Request, data: &[u8]) -> Reply {
    let n = data.len();
    let Some(range) = req.header("range") else {
        return Reply::new(200, data.to_vec()).header("Accept-Ranges", "bytes");
    };
    let spec = range.trim().strip_prefix("bytes=").expect("a bytes range");
    let (a, b) = spec.split_once('-').expect("START-END");
    let start: usize = a.parse().expect("a range start");
    let end: usize = if b.is_empty() {
        n.saturating_sub(1)
    } else {
        b.parse::<usize>().unwrap().min(n - 1)
    };
    if start >= n {
        return Reply::new(416, Vec::new()).header("Content-Range", &format!("bytes */{n}"));
    }
    Reply::new(206, data[start..=end].to_vec())
        .header("Content-Range", &format!("bytes {start}-{end}/{n}"))
        .header("Accept-Ranges", "bytes")
}

pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// The running server; stops when dropped.
pub struct Server {
    pub base: String,
    pub log: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl Server {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Handler = Arc::new(handler);
        let (log2, stop2) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (h, l) = (handler.clone(), log2.clone());
                std::thread::spawn(move || handle(conn, &h, &l));
            }
        });
        Server {
            base: format!("http://127.0.0.1:{port}"),
            log,
            stop,
            port,
        }
    }

    /// The logged requests for `path`.
    pub fn requests(&self, path: &str) -> Vec<Request> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn handle(conn: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let req = Request { method, path, headers };
    log.lock().unwrap().push(req.clone());
    let reply = handler(&req);
    let mut out = conn;
    let reason = match reply.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    let _ = out.write_all(head.as_bytes());
    let n = reply.drop_after.unwrap_or(reply.body.len()).min(reply.body.len());
    let _ = out.write_all(&reply.body[..n]);
    let _ = out.flush();
    let _ = out.shutdown(std::net::Shutdown::Both);
}
