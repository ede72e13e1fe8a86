//! How bytes get between a device and the cloud: a [`Transport`] opens duplex byte streams to
//! a server, a [`Listener`] accepts them on the server's side.
//!
//! | implementation | what it is |
//! | --- | --- |
//! | [`Tcp`] / [`TcpAcceptor`] | real TCP sockets (tokio), `TCP_NODELAY` set |
//! | [`InProcess`] / [`InProcessAcceptor`] | in-memory pipes (`tokio::io::duplex`) for tests |
//! | [`Shaped`] | any transport behind an emulated link: bandwidth, RTT, jitter, loss |
//! | [`Failover`] | several servers tried in turn, staying with the one that answered |
//! | [`Faulty`] | any transport whose connections die and stall at random (soak tests) |
//!
//! The traits return boxed futures so that a server or client can hold a `dyn Transport`
//! chosen at run time (DESIGN: async only here, in collab-net).

mod failover;
mod faulty;
mod in_process;
mod shaped;
mod tcp;

use std::fmt::Debug;
use std::io;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

pub use failover::Failover;
pub use faulty::{Faults, Faulty};
pub use in_process::{InProcess, InProcessAcceptor, in_process};
pub use shaped::{Link, LinkControl, SEGMENT, Shaped, shape, shape_with};
pub use tcp::{Tcp, TcpAcceptor};

/// A duplex byte stream: what a connection reads and writes.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// Opens connections to one server.
pub trait Transport: Debug + Send + Sync + 'static {
    /// Connects; each call is a new connection.
    ///
    /// # Errors
    /// The connection failed (refused, unreachable, the in-process server is gone).
    fn connect(&self) -> BoxFuture<'_, io::Result<BoxStream>>;

    /// Where it connects to, for logs.
    fn describe(&self) -> String;
}

/// Accepts connections on the server's side.
pub trait Listener: Debug + Send + 'static {
    /// Waits for the next connection; returns it with a label of the peer.
    ///
    /// # Errors
    /// The listener failed or was closed.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>>;
}
