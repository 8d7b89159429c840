//! A fault-injecting TCP proxy for loopback tests: it sits between a client and a real relay
//! and can cut every connection, refuse new ones, stall traffic both ways, or drop whole
//! websocket frames from the relay, while the relay itself keeps its data.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

#[derive(Debug)]
struct Control {
    refuse: AtomicBool,
    stall: AtomicBool,
    drop_frames: AtomicU32,
    /// Pass bytes through untouched (not websocket traffic, e.g. TLS to an API server).
    raw: bool,
    accepted: AtomicUsize,
    active: AtomicUsize,
    max_active: AtomicUsize,
    cut_tx: broadcast::Sender<()>,
}

/// A running proxy. Dropping it stops accepting; open connections end with their peers.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    ctl: Arc<Control>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(upstream, false).await
    }

    /// Like [`FaultProxy::start`] for any TCP protocol (TLS, HTTP): cut, refuse and stall
    /// work; frame dropping does not.
    pub async fn start_raw(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(upstream, true).await
    }

    async fn start_with(upstream: SocketAddr, raw: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut_tx, _) = broadcast::channel(16);
        let ctl = Arc::new(Control {
            refuse: AtomicBool::new(false),
            stall: AtomicBool::new(false),
            drop_frames: AtomicU32::new(0),
            raw,
            accepted: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            cut_tx,
        });
        let c = ctl.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if c.refuse.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                c.accepted.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(upstream).await {
                        pipe(inbound, outbound, c).await;
                    }
                });
            }
        });
        Ok(FaultProxy { addr, ctl, task })
    }

    /// The `ws://` URL clients should use.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Closes every open connection now.
    pub fn cut(&self) {
        let _ = self.ctl.cut_tx.send(());
    }

    /// Refuses (immediately closes) new connections while `on`.
    pub fn refuse(&self, on: bool) {
        self.ctl.refuse.store(on, Ordering::SeqCst);
    }

    /// Holds all traffic, both ways, while `on`; connections stay open.
    pub fn stall(&self, on: bool) {
        self.ctl.stall.store(on, Ordering::SeqCst);
    }

    /// Drops the next `n` websocket frames sent by the relay.
    pub fn drop_next_frames(&self, n: u32) {
        self.ctl.drop_frames.store(n, Ordering::SeqCst);
    }

    /// Websocket connections open now (a NIP-11 GET beside one is not counted).
    pub fn active(&self) -> usize {
        self.ctl.active.load(Ordering::SeqCst)
    }

    /// The most websocket connections open at once since the start or the last reset.
    pub fn max_active(&self) -> usize {
        self.ctl.max_active.load(Ordering::SeqCst)
    }

    /// Restarts [`FaultProxy::max_active`] from the connections open now.
    pub fn reset_max_active(&self) {
        self.ctl
            .max_active
            .store(self.ctl.active.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.ctl.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn pipe(inbound: TcpStream, outbound: TcpStream, ctl: Arc<Control>) {
    let mut cut = ctl.cut_tx.subscribe();
    let (mut ci, mut co) = inbound.into_split();
    let (mut ri, mut ro) = outbound.into_split();
    let up_ctl = ctl.clone();
    let counted = ctl.clone();
    let websocket = Arc::new(AtomicBool::new(false));
    let is_ws = websocket.clone();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut first = true;
        loop {
            let n = match ci.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Count websocket upgrades only: the client's NIP-11 GET is a second, short
            // connection that says nothing about who holds the relay.
            if std::mem::take(&mut first) && is_upgrade(&buf[..n]) {
                is_ws.store(true, Ordering::SeqCst);
                let now = up_ctl.active.fetch_add(1, Ordering::SeqCst) + 1;
                up_ctl.max_active.fetch_max(now, Ordering::SeqCst);
            }
            wait_while_stalled(&up_ctl).await;
            if ro.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut frames = FrameFilter::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match ri.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            wait_while_stalled(&ctl).await;
            let out = if ctl.raw {
                buf[..n].to_vec()
            } else {
                frames.pass(&buf[..n], &ctl.drop_frames)
            };
            if co.write_all(&out).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.recv() => {}
    }
    if websocket.load(Ordering::SeqCst) {
        counted.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn is_upgrade(request: &[u8]) -> bool {
    String::from_utf8_lossy(request)
        .to_ascii_lowercase()
        .contains("upgrade: websocket")
}

async fn wait_while_stalled(ctl: &Control) {
    // Bounded: a stalled test ends by un-stalling or cutting within its own time limit.
    for _ in 0..12_000 {
        if !ctl.stall.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Splits the relay→client byte stream into websocket frames (after the HTTP upgrade) so that
/// whole frames can be dropped without corrupting the stream.
#[derive(Debug, Default)]
struct FrameFilter {
    upgraded: bool,
    pending: Vec<u8>,
}

impl FrameFilter {
    fn pass(&mut self, chunk: &[u8], drop_budget: &AtomicU32) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        if !self.upgraded {
            let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                return out;
            };
            out.extend(self.pending.drain(..end + 4));
            self.upgraded = true;
        }
        while let Some(len) = frame_len(&self.pending) {
            let frame: Vec<u8> = self.pending.drain(..len).collect();
            let data_frame = matches!(frame[0] & 0x0f, 0x0..=0x2);
            let dropped = data_frame
                && drop_budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if !dropped {
                out.extend(frame);
            }
        }
        out
    }
}

/// Total length of the first complete frame in `buf`, if complete.
fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (payload, header) = match buf[1] & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes), 10)
        }
        n => (u64::from(n), 2),
    };
    let total = header + if masked { 4 } else { 0 } + usize::try_from(payload).ok()?;
    (buf.len() >= total).then_some(total)
}
