//! TCP: the real network (the loopback interface in tests and the demo).

use std::io;
use std::net::SocketAddr;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::net::{TcpListener, TcpStream};

use super::{BoxStream, Listener, Transport};

/// Connects to a server's TCP address.
#[derive(Clone, Debug)]
pub struct Tcp {
    addr: SocketAddr,
}

impl Tcp {
    /// A transport to `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }
}

impl Transport for Tcp {
    fn connect(&self) -> BoxFuture<'_, io::Result<BoxStream>> {
        async move {
            let stream = TcpStream::connect(self.addr).await?;
            // Frames are written whole; Nagle would hold a small request behind an unacked one.
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("tcp://{}", self.addr)
    }
}

/// Accepts TCP connections.
#[derive(Debug)]
pub struct TcpAcceptor {
    listener: TcpListener,
}

impl TcpAcceptor {
    /// Binds `addr` (port 0 picks a free port; see [`TcpAcceptor::local_addr`]).
    ///
    /// # Errors
    /// The address is taken or not local.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// The socket is gone.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl Listener for TcpAcceptor {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        async move {
            let (stream, peer) = self.listener.accept().await?;
            stream.set_nodelay(true)?;
            Ok((Box::new(stream) as BoxStream, peer.to_string()))
        }
        .boxed()
    }
}
