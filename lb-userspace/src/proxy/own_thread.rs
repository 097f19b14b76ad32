//! The proxy on a thread and runtime of its own. The daemon's thread loads, compiles
//! and applies configurations — seconds for a large one — and a request must never
//! wait for that (with both on one thread, a request waited 13 s while a 57 MB file
//! parsed). The proxy's sockets join this runtime's reactor when it starts serving.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Proxy, ProxyError, Shared};

/// A proxy serving on its own thread.
pub struct Serving {
    stop: oneshot::Sender<()>,
    /// How serving ended; None once `ended` has told.
    done: Option<oneshot::Receiver<Result<(), ProxyError>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Proxy {
    /// Starts serving on a new thread (see [`Proxy::serve`]).
    pub fn spawn(self, shared: Arc<Shared>, drain: Duration) -> Result<Serving, ProxyError> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (ended, done) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("lb-proxy".into())
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(ProxyError::Thread)
                    .and_then(|rt| {
                        rt.block_on(self.serve(shared, drain, async {
                            let _ = stopped.await;
                        }))
                    });
                let _ = ended.send(served);
            })
            .map_err(ProxyError::Thread)?;
        Ok(Serving {
            stop,
            done: Some(done),
            thread,
        })
    }
}

impl Serving {
    /// Resolves only if the proxy stops by itself (it does not, but for an error).
    pub async fn ended(&mut self) -> Result<(), ProxyError> {
        match self.done.as_mut() {
            Some(done) => {
                let served = done.await.unwrap_or(Ok(()));
                self.done = None;
                served
            }
            None => std::future::pending().await,
        }
    }

    /// Stops accepting, drains (Proxy::serve) and waits for the thread to end.
    pub async fn stop(self) -> Result<(), ProxyError> {
        let _ = self.stop.send(());
        let served = match self.done {
            Some(done) => done.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        served
    }
}
