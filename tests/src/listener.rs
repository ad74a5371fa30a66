//! A TCP listener on `[::]:port` inside a namespace, on a thread of its own, handing each
//! connection to a handler; stopped and joined on drop. The HTTP origin and the IdP stand-in are
//! built on it.

use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;

use crate::netns::{self, Netns};

#[derive(Debug)]
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Listens inside `ns`; returns once bound. `what` names the server in errors. Connections
    /// arrive blocking, with no timeouts set.
    pub fn start(
        ns: &Netns,
        port: u16,
        what: &str,
        mut on_connection: impl FnMut(TcpStream) + Send + 'static,
    ) -> anyhow::Result<Listener> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (stop2, path) = (Arc::clone(&stop), ns.path());
        let thread = std::thread::spawn(move || {
            if let Err(e) = netns::enter(&path) {
                let _ = ready_tx.send(Err(format!("{e:#}")));
                return;
            }
            let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            let listener =
                match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
            let _ = ready_tx.send(Ok(()));
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        on_connection(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .with_context(|| format!("{what} on {port} in {} did not start", ns.name()))?
            .map_err(|e| anyhow::anyhow!("{what} on {port} in {}: {e}", ns.name()))?;
        Ok(Listener {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
