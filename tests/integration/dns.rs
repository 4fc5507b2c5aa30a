//! A DNS server on loopback for tests (UDP), answering from a table:
//! a name to its IPv4 address, NXDOMAIN for a name that does not exist,
//! SERVFAIL for the rest. trawler asks it through `fetch.nameservers`.
//! Messages are read and written with hickory-proto (through
//! hickory-resolver, trawler's own resolver).

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{RData, Record, RecordType};

/// How the server answers for one name.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// An A record; an empty answer for other types.
    Address(Ipv4Addr),
    /// RCODE 3: the name does not exist.
    NxDomain,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    /// Every query's name, in order.
    queries: Arc<Mutex<Vec<String>>>,
}

impl DnsServer {
    /// A server on `ip` answering as `table` says (names without the
    /// trailing dot), SERVFAIL for any other name.
    pub fn start(ip: &'static str, table: &[(&str, Answer)]) -> Self {
        let table: HashMap<String, Answer> = table.iter().map(|(n, a)| (format!("{n}."), *a)).collect();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let seen = queries.clone();
        let socket = std::net::UdpSocket::bind((ip, 0)).expect("bind a loopback port");
        let addr = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let Some(question) = query.queries.first().cloned() else { continue };
                let name = question.name().to_ascii().to_ascii_lowercase();
                seen.lock().unwrap().push(name.clone());
                let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.add_query(question.clone());
                match table.get(&name) {
                    Some(Answer::Address(ip)) => {
                        if question.query_type() == RecordType::A {
                            reply.add_answer(Record::from_rdata(
                                question.name().clone(),
                                60,
                                RData::A(A(*ip)),
                            ));
                        }
                    }
                    Some(Answer::NxDomain) => reply.metadata.response_code = ResponseCode::NXDomain,
                    None => reply.metadata.response_code = ResponseCode::ServFail,
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from);
                }
            }
        });
        Self { addr, queries }
    }

    /// How many queries named `name` (A and AAAA alike).
    pub fn queries_for(&self, name: &str) -> usize {
        let name = format!("{name}.");
        self.queries.lock().unwrap().iter().filter(|q| **q == name).count()
    }
}
