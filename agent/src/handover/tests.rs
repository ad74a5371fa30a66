use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

#[derive(Default)]
struct Recorder {
    paused: AtomicUsize,
    resumed: AtomicUsize,
    lost: AtomicUsize,
    handed: AtomicUsize,
}

impl Predecessor for Recorder {
    async fn pause(&self) -> Result<Offer, String> {
        self.paused.fetch_add(1, Ordering::SeqCst);
        Ok(Offer {
            pushed: [("a.yaml".to_owned(), "kind: x".to_owned())].into(),
            ..Offer::default()
        })
    }
    fn resume(&self) {
        self.resumed.fetch_add(1, Ordering::SeqCst);
    }
    fn kernel_lost(&self) {
        self.lost.fetch_add(1, Ordering::SeqCst);
    }
    fn handed_over(&self) -> u64 {
        self.handed.fetch_add(1, Ordering::SeqCst);
        3
    }
}

fn hello(node: &str) -> Hello {
    Hello {
        version: "test".into(),
        pid: std::process::id(),
        node_name: node.into(),
        bpffs_root: "/sys/fs/bpf/rampart".into(),
    }
}

fn socket_path() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "rampart-handover-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// An old agent with one real TCP listener offered, serving handovers at a fresh path.
async fn old_agent() -> (
    PathBuf,
    Arc<Recorder>,
    std::net::SocketAddr,
    tokio::task::JoinHandle<()>,
) {
    let path = socket_path();
    let listener = bind(&path).expect("bind");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
    let addr = tcp.local_addr().expect("addr");
    let sockets = Arc::new(Sockets::default());
    sockets
        .offer("metrics", std::os::fd::AsFd::as_fd(&tcp))
        .expect("offer");
    drop(tcp);
    let recorder = Arc::new(Recorder::default());
    let task = tokio::spawn(serve(
        listener,
        hello("node-1"),
        sockets,
        Arc::clone(&recorder),
    ));
    (path, recorder, addr, task)
}

#[tokio::test]
async fn the_successor_gets_the_listening_sockets_and_the_pushed_files() {
    let (path, old, addr, task) = old_agent().await;
    let sockets = Sockets::default();
    let mut takeover = find_predecessor(&path, hello("node-1"), &sockets)
        .await
        .expect("handover")
        .expect("an agent answers");
    assert_eq!(takeover.offer.listeners, vec!["metrics".to_owned()]);
    assert_eq!(takeover.offer.pushed.len(), 1);
    assert_eq!(old.paused.load(Ordering::SeqCst), 1);
    // The same listening socket: a connection to the old agent's address is accepted here.
    let listener = sockets.inherit_tcp("metrics", addr).expect("same address");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio");
    let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("accepted in time")
        .expect("accepted");
    takeover.taking_kernel().await.expect("taking");
    assert_eq!(takeover.ready().await.expect("ready"), 3);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the old agent stops serving handovers")
        .expect("task");
    assert_eq!(old.handed.load(Ordering::SeqCst), 1);
    assert_eq!(old.resumed.load(Ordering::SeqCst), 0);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_listener_on_another_address_is_not_inherited() {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
    let sockets = Sockets::default();
    sockets.inherited.lock().expect("lock").insert(
        "metrics".into(),
        std::os::fd::AsFd::as_fd(&tcp)
            .try_clone_to_owned()
            .expect("dup"),
    );
    assert!(
        sockets
            .inherit_tcp("metrics", "127.0.0.1:1".parse().expect("addr"))
            .is_none()
    );
    assert!(
        sockets.close_unused().is_empty(),
        "taken (and closed), not left over"
    );
}

#[tokio::test]
async fn another_nodes_agent_is_refused_and_nothing_pauses() {
    let (path, old, _, _task) = old_agent().await;
    let err = find_predecessor(&path, hello("node-2"), &Sockets::default())
        .await
        .expect_err("refused");
    assert!(matches!(err, HandoverError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("node-2"), "{err}");
    assert_eq!(old.paused.load(Ordering::SeqCst), 0);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_successor_that_goes_away_resumes_the_old_agent_or_tells_it_the_kernel_is_lost() {
    let (path, old, _, _task) = old_agent().await;
    let t = find_predecessor(&path, hello("node-1"), &Sockets::default())
        .await
        .expect("ok")
        .expect("some");
    drop(t);
    wait_for(|| old.resumed.load(Ordering::SeqCst) == 1).await;
    // The old agent serves the next one.
    let mut t = find_predecessor(&path, hello("node-1"), &Sockets::default())
        .await
        .expect("ok")
        .expect("some");
    t.taking_kernel().await.expect("taking");
    drop(t);
    wait_for(|| old.lost.load(Ordering::SeqCst) == 1).await;
    assert_eq!(old.handed.load(Ordering::SeqCst), 0);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn no_socket_or_a_stale_one_means_no_predecessor() {
    let path = socket_path();
    assert!(
        find_predecessor(&path, hello("n"), &Sockets::default())
            .await
            .expect("ok")
            .is_none()
    );
    drop(bind(&path).expect("bind"));
    assert!(path.exists());
    assert!(
        find_predecessor(&path, hello("n"), &Sockets::default())
            .await
            .expect("ok")
            .is_none()
    );
    assert!(!path.exists(), "the stale socket is removed");
}

async fn wait_for(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Hostile peers of the handover socket: one that connects and says nothing, one that sends a
/// message that is not JSON, one that sends something else first. None pauses the old agent, and
/// a real successor is served after them.
#[tokio::test]
async fn silent_or_garbled_peers_are_dropped_and_the_next_agent_is_served() {
    use tokio::io::AsyncWriteExt as _;
    let (path, old, _, _task) = old_agent().await;
    let _silent = UnixStream::connect(&path).await.expect("connect");
    let mut garbled = UnixStream::connect(&path).await.expect("connect");
    garbled.write_all(&5u32.to_be_bytes()).await.expect("write");
    garbled.write_all(b"{{{{{").await.expect("write");
    let mut wrong = UnixStream::connect(&path).await.expect("connect");
    wire::send(&mut wrong, &FromSuccessor::Ready)
        .await
        .expect("send");
    let t = tokio::time::timeout(
        HELLO_TIMEOUT * 3,
        find_predecessor(&path, hello("node-1"), &Sockets::default()),
    )
    .await
    .expect("served after the silent peer's time ran out")
    .expect("ok")
    .expect("some");
    assert_eq!(t.offer.listeners, vec!["metrics".to_owned()]);
    assert_eq!(
        old.paused.load(Ordering::SeqCst),
        1,
        "only the real successor paused it"
    );
    let _ = std::fs::remove_file(&path);
}
