//! The board served in-process on 127.0.0.1:0 (the router of `rewind_board`), reading a store
//! other processes write, and a plain HTTP/1.0 GET to read its pages.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses a subset; a panic is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// A running board; stopped (gracefully) when dropped.
pub struct Board {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    rt: tokio::runtime::Runtime,
}

impl Board {
    /// Serves the store at `db` on a free port of 127.0.0.1.
    pub fn start(db: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = rt.block_on(rewind_store::open(db)).unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let state = rewind_board::AppState::new(store);
        rt.spawn(rewind_board::serve(listener, state, async {
            let _ = rx.await;
        }));
        Self { addr, stop: Some(tx), rt }
    }

    /// `http://ADDR{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path`: the status code and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, body.to_owned())
    }

    /// GET `path`, which must answer 200.
    pub fn page(&self, path: &str) -> String {
        let (code, body) = self.get(path);
        assert_eq!(code, 200, "GET {path}: {body}");
        body
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = &self.rt;
    }
}
