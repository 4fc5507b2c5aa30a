//! A SOCKS5 proxy on loopback for tests (RFC 1928: no authentication,
//! CONNECT to an IPv4 address or a name), whose set-up of each connection
//! takes `setup` before it answers, as a remote proxy's round trips do.
//! It runs on a thread with its own runtime, as the test server does.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct SocksProxy {
    pub addr: SocketAddr,
    /// The targets connected to, `host:port`, in order.
    connects: Arc<Mutex<Vec<String>>>,
}

impl SocksProxy {
    /// A proxy on `ip` that waits `setup` before answering each CONNECT.
    pub fn start(ip: &'static str, setup: Duration) -> Self {
        let connects = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let seen = connects.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind((ip, 0)).await.expect("bind a loopback port");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    let Ok((client, _)) = listener.accept().await else { continue };
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let _ = serve(client, setup, seen).await;
                    });
                }
            });
        });
        Self { addr: addr_rx.recv().expect("proxy address"), connects }
    }

    /// `socks5://ip:port`.
    pub fn url(&self) -> String {
        format!("socks5://{}", self.addr)
    }

    pub fn connects(&self) -> Vec<String> {
        self.connects.lock().unwrap().clone()
    }
}

async fn serve(mut client: TcpStream, setup: Duration, seen: Arc<Mutex<Vec<String>>>) -> std::io::Result<()> {
    // Greeting: version 5, n methods; answer "no authentication".
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await?;
    let mut methods = vec![0u8; head[1] as usize];
    client.read_exact(&mut methods).await?;
    client.write_all(&[5, 0]).await?;
    // Request: version, CONNECT, reserved, address type.
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await?;
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let len = client.read_u8().await? as usize;
            let mut name = vec![0u8; len];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        _ => return Ok(()),
    };
    let port = client.read_u16().await?;
    seen.lock().unwrap().push(format!("{host}:{port}"));
    let mut upstream = TcpStream::connect((host.as_str(), port)).await?;
    tokio::time::sleep(setup).await;
    client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
