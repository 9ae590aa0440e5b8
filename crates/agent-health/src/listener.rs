//! The control center's listener: a cap on open connections and an idle timeout on each, which axum's own
//! `serve` does not offer. A client that connects and sends nothing (or stops half-way through its headers)
//! is dropped after the idle timeout instead of holding a connection, and with it a shutdown, forever.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A TCP listener that admits at most `max` connections at once (the next waits in the backlog) and closes a
/// connection idle for `idle`. Accept errors (EMFILE and the like) back off and retry.
pub(crate) struct GuardedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl GuardedListener {
    pub(crate) fn new(inner: TcpListener, max: usize, idle: Duration) -> GuardedListener {
        GuardedListener {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            idle,
        }
    }
}

/// A client's address as a [`GuardedListener`] accepted it, for `ConnectInfo`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GuardedListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let mut backoff = Duration::from_millis(10);
        loop {
            // Waits while `max` connections are open: the kernel's backlog holds the next ones.
            let permit = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .unwrap_or_else(|_| unreachable!("the semaphore is never closed"));
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let idle = Box::pin(tokio::time::sleep(self.idle));
                    let io = GuardedStream {
                        stream,
                        _permit: permit,
                        idle,
                        limit: self.idle,
                    };
                    return (io, addr);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "control center: accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that holds its slot and fails with `TimedOut` after `limit` without any byte either way.
pub(crate) struct GuardedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl GuardedStream {
    fn touched(&mut self) {
        let deadline = tokio::time::Instant::now() + self.limit;
        self.idle.as_mut().reset(deadline);
    }

    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }
}

use std::future::Future;

impl AsyncRead for GuardedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.touched();
                }
                Poll::Ready(r)
            }
            Poll::Pending if this.timed_out(cx) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "idle connection closed",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touched();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_the_cap_holds_the_next_one() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = GuardedListener::new(tcp, 1, Duration::from_millis(300));
        let mut first = TcpStream::connect(addr).await.unwrap();
        let (mut io, _) = listener.accept().await;
        // The cap: a second client is not accepted while the first holds the only slot.
        let _second = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(waiting.is_err(), "a second connection was admitted beyond the cap");
        // Activity keeps it open; silence closes it.
        first.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 3];
        io.read_exact(&mut buf).await.unwrap();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        drop(io);
        // Its slot is free again.
        let admitted = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
        assert!(admitted.is_ok(), "the slot of the closed connection was not given back");
    }
}
