//! [`TcpGate`]: a TCP relay to one upstream address that the test opens and closes, to cut
//! some clients off a server (etcd) while others reach it directly.
//!
//! Closed, it accepts and drops every new connection at once (the client sees its connection
//! reset, as when the server is down) and shuts down every connection it relays; open, it
//! relays bytes both ways, each connection on two threads. It binds `127.0.0.1:0` itself.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A relay `addr()` → `upstream`; stops accepting when dropped (its threads end with the
/// connections, which closing the gate ends).
#[derive(Debug)]
pub struct TcpGate {
    addr: String,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    open: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every relayed connection, for `close`.
    conns: Mutex<Vec<(TcpStream, TcpStream)>>,
}

impl TcpGate {
    /// An open gate to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> TcpGate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the gate");
        let addr = listener.local_addr().expect("gate addr").to_string();
        let shared = Arc::new(Shared {
            open: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let upstream = upstream.to_owned();
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if !s.open.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                s.conns.lock().unwrap().push((c2, s2));
                relay(&client, &server);
                relay(&server, &client);
            }
        });
        TcpGate { addr, shared }
    }

    /// `127.0.0.1:PORT`, what clients connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Refuses new connections and cuts the relayed ones.
    pub fn close(&self) {
        self.shared.open.store(false, Ordering::SeqCst);
        for (c, s) in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub fn open(&self) {
        self.shared.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.close();
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Copies `from` → `to` on a thread until either side ends, then shuts both down.
fn relay(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
