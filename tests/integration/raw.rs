//! A raw TCP peer on a loopback address for faults that a well-behaved HTTP
//! server cannot produce: a body cut short of its `Content-Length`, a reset
//! mid-body, a keep-alive connection closed just as a request arrives.
//! Each connection is served on its own thread; `reply` decides, from the
//! request's path and its number on the connection (0 = first), what bytes to
//! send and how to end.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// What to do with one request.
pub enum Reply {
    /// Send these bytes and keep the connection open for the next request.
    KeepAlive(Vec<u8>),
    /// Send these bytes and close the connection (FIN).
    Close(Vec<u8>),
    /// Send these bytes and reset the connection (RST: SO_LINGER 0).
    Reset(Vec<u8>),
    /// Answer nothing, and hold the connection open for a minute.
    Stall,
}

/// A running raw server; its threads end with the test process.
pub struct RawServer {
    pub addr: SocketAddr,
    /// `(path, request number on its connection)` of every request.
    requests: Arc<Mutex<Vec<(String, usize)>>>,
}

type ReplyFn = dyn Fn(&str, usize) -> Reply + Send + Sync;

impl RawServer {
    /// Listens on `ip` (port 0) and answers every request with `reply`.
    pub fn start(ip: &str, reply: impl Fn(&str, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind((ip, 0)).expect("bind a loopback port");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (reply, log): (Arc<ReplyFn>, _) = (Arc::new(reply), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (reply, log) = (reply.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &*reply, &log));
            }
        });
        Self { addr, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every request so far: its path and its number on its connection.
    pub fn requests(&self) -> Vec<(String, usize)> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, reply: &ReplyFn, log: &Mutex<Vec<(String, usize)>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    for n in 0.. {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        // The headers, up to the blank line (GET requests have no body).
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        log.lock().unwrap().push((path.clone(), n));
        match reply(&path, n) {
            Reply::KeepAlive(bytes) => {
                if stream.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::Close(bytes) => {
                let _ = stream.write_all(&bytes);
                return;
            }
            Reply::Stall => {
                std::thread::sleep(std::time::Duration::from_secs(60));
                return;
            }
            Reply::Reset(bytes) => {
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
                reset(&stream);
                return;
            }
        }
    }
}

/// Closes `stream` with a RST instead of a FIN (SO_LINGER with a zero timeout).
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// An HTTP/1.1 response head with these extra header lines.
pub fn head(status: &str, headers: &[&str]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use flate2::write::GzEncoder;
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}
