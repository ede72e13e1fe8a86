//! The write side of a connection: drains the read side's control channel and the compute
//! thread's answers into frames, writing whatever is ready before one flush.
//!
//! A `Goodbye` is written after every answer already queued (at shutdown those are all the
//! connection's answers), then the stream is closed. Each write has `frame_timeout` to
//! complete: a device that stops reading is closed rather than buffered for.

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::WriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;
use tracing::debug;

use super::state::{Phase, Shared};
use crate::transport::BoxStream;
use crate::wire::{FrameCodec, Message};

/// The framed write half of a connection.
pub(crate) type Sink = FramedWrite<WriteHalf<BoxStream>, FrameCodec>;

/// Messages written before one flush at most.
const BATCH: usize = 64;

/// Runs the write side until both channels close, a `Goodbye` is written, a write fails or
/// times out, or the server is killed.
pub(crate) async fn write_side(
    mut sink: Sink,
    mut control: mpsc::Receiver<Message>,
    mut answers: mpsc::UnboundedReceiver<Message>,
    shared: &Arc<Shared>,
    peer: &str,
) {
    let limit = shared.config.frame_timeout;
    let mut phase = shared.subscribe();
    let (mut control_open, mut answers_open, mut watching) = (true, true, true);
    while control_open || answers_open {
        let first = tokio::select! {
            biased;
            changed = phase.changed(), if watching => {
                match changed {
                    Err(_) => watching = false,
                    Ok(()) if *phase.borrow_and_update() == Phase::Killed => return,
                    Ok(()) => {}
                }
                continue;
            }
            m = answers.recv(), if answers_open => match m {
                Some(m) => m,
                None => {
                    answers_open = false;
                    continue;
                }
            },
            m = control.recv(), if control_open => match m {
                Some(m) => m,
                None => {
                    control_open = false;
                    continue;
                }
            },
        };
        let batch = gather(first, &mut control, &mut answers);
        let goodbye = batch
            .last()
            .is_some_and(|m| matches!(m, Message::Goodbye(_)));
        if let Err(e) = write(&mut sink, batch, limit).await {
            debug!(peer, "write failed: {e}");
            return;
        }
        if goodbye {
            break;
        }
    }
    let _ = tokio::time::timeout(limit, sink.close()).await;
}

/// `first` and whatever else is ready, up to [`BATCH`]; a `Goodbye` goes last, after every
/// answer already queued.
fn gather(
    first: Message,
    control: &mut mpsc::Receiver<Message>,
    answers: &mut mpsc::UnboundedReceiver<Message>,
) -> Vec<Message> {
    let mut batch = Vec::with_capacity(4);
    let mut next = Some(first);
    while let Some(m) = next.take() {
        if let Message::Goodbye(_) = m {
            while let Ok(a) = answers.try_recv() {
                batch.push(a);
            }
            batch.push(m);
            return batch;
        }
        batch.push(m);
        if batch.len() < BATCH {
            next = answers.try_recv().ok().or_else(|| control.try_recv().ok());
        }
    }
    batch
}

async fn write(sink: &mut Sink, batch: Vec<Message>, limit: Duration) -> Result<(), String> {
    let written = tokio::time::timeout(limit, async {
        for m in batch {
            sink.feed(m).await?;
        }
        sink.flush().await
    })
    .await;
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the device read nothing for {} ms",
            limit.as_millis()
        )),
    }
}
