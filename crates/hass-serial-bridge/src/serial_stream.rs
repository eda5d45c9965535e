//! An open serial device as tokio reads and writes it, woken only when it
//! has bytes to read.

use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::line_control::TtyControl;

/// An open tty, registered with the runtime for reads only. A pty wakes its
/// writers each time its buffer drains: with write interest, each of those
/// would wake the device's thread for nothing, once per frame, which costs
/// latency on every round trip. Writability is watched only while a write
/// waits for room, through a second handle on the same tty.
#[derive(Debug)]
pub struct SerialStream {
    port: AsyncFd<mio_serial::SerialStream>,
    write_side: WriteSide,
}

#[derive(Debug)]
enum WriteSide {
    /// Not registered: writes are going through.
    Idle(mio_serial::SerialStream),
    /// Registered for writability while the tty buffer is full.
    Waiting(AsyncFd<mio_serial::SerialStream>),
    /// Registering or deregistering failed; writes report it.
    Broken,
}

impl SerialStream {
    /// Opens the port exclusively with the builder's line settings; returns
    /// it with a handle for its settings and modem lines.
    pub fn open(builder: mio_serial::SerialPortBuilder) -> Result<(Self, TtyControl), String> {
        let port = builder.open_native().map_err(|e| e.to_string())?;
        // Dups of the fd: one open file, one exclusive lock, three handles.
        let write_handle = port.try_clone_native().map_err(|e| e.to_string())?;
        let control = port.try_clone_native().map_err(|e| e.to_string())?;
        let nonblocking = |port| {
            mio_serial::SerialStream::try_from(port).map_err(|e: mio_serial::Error| e.to_string())
        };
        let (port, write_handle) = (nonblocking(port)?, nonblocking(write_handle)?);
        let stream = Self {
            port: register(port, Interest::READABLE).map_err(|e| e.to_string())?,
            write_side: WriteSide::Idle(write_handle),
        };
        Ok((stream, TtyControl(nonblocking(control)?)))
    }
}

/// `AsyncFd::register_with_interest` is unsafe because a type may not own the
/// fd it hands out; `mio_serial::SerialStream` does (it closes it on drop),
/// so the safe, deprecated form is sound here.
#[allow(deprecated)]
fn register(
    port: mio_serial::SerialStream,
    interest: Interest,
) -> std::io::Result<AsyncFd<mio_serial::SerialStream>> {
    AsyncFd::with_interest(port, interest)
}

impl AsyncRead for SerialStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.port.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let unfilled_len = unfilled.len();
            match guard.try_io(|port| port.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    // A short read emptied the tty: skip the read that would
                    // only say so (as tokio's own sockets do). The guard
                    // keeps any readiness that arrived since.
                    if n < unfilled_len {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Readiness cleared; wait for the next edge.
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for SerialStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        loop {
            match this.port.get_ref().write(data) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                written => {
                    // Room again: stop watching, or every drain of the
                    // buffer would wake the thread.
                    this.write_side =
                        match std::mem::replace(&mut this.write_side, WriteSide::Broken) {
                            WriteSide::Waiting(waiting) => WriteSide::Idle(waiting.into_inner()),
                            other => other,
                        };
                    return Poll::Ready(written);
                }
            }
            let waiting = match std::mem::replace(&mut this.write_side, WriteSide::Broken) {
                WriteSide::Idle(port) => register(port, Interest::WRITABLE)?,
                WriteSide::Waiting(waiting) => waiting,
                WriteSide::Broken => {
                    return Poll::Ready(Err(std::io::Error::other(
                        "cannot watch the tty for writability",
                    )));
                }
            };
            let ready = match waiting.poll_write_ready(cx) {
                // The readiness may predate the failed write: clear it, and
                // the write below tells.
                Poll::Ready(Ok(mut guard)) => {
                    guard.clear_ready();
                    Ok(())
                }
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => {
                    this.write_side = WriteSide::Waiting(waiting);
                    return Poll::Pending;
                }
            };
            this.write_side = WriteSide::Waiting(waiting);
            ready?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Nothing is buffered in user space; tcdrain would block the thread.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
