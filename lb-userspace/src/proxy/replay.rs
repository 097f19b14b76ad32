//! The upstream request on hyper's path, kept so a retry can send it again: its head
//! (method, target, headers) and its body — none, or the client's streamed on while
//! a copy is kept (up to the lean path's bound, 64 KiB), which a retry sends whole.
//! A body larger than that, or not read to its end when the answer came, cannot be
//! sent again: such a request is tried once (after a connect that failed, which sent
//! nothing, it still goes elsewhere).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The largest request body kept for a retry (as the lean path's).
pub const LIMIT: usize = 64 * 1024;

/// The body hyper sends upstream.
pub enum UpBody {
    /// The client's, as it arrives; copied into `copy` while it fits.
    Client {
        inner: Incoming,
        copy: Option<Arc<Mutex<Copy>>>,
    },
    /// A kept copy, sent again (None: no body).
    Again(Option<Bytes>),
}

/// What a streamed body left for a retry.
#[derive(Default)]
pub struct Copy {
    bytes: Vec<u8>,
    /// The body ended, every byte kept.
    whole: bool,
    /// Past [`LIMIT`]: nothing to send again.
    dropped: bool,
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Again(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Client { inner, copy } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                if let Some(copy) = copy {
                    let mut c = copy.lock().unwrap_or_else(|p| p.into_inner());
                    match &polled {
                        Poll::Ready(Some(Ok(f))) => match f.data_ref() {
                            Some(d) if !c.dropped && c.bytes.len() + d.len() <= LIMIT => {
                                c.bytes.extend_from_slice(d);
                            }
                            Some(_) => {
                                c.dropped = true;
                                c.bytes = Vec::new();
                            }
                            // Trailers are not kept: such a body is not sent again.
                            None => c.dropped = true,
                        },
                        Poll::Ready(None) => c.whole = !c.dropped,
                        _ => {}
                    }
                    // hyper stops polling a body that says it ended (its length read).
                    if inner.is_end_stream() {
                        c.whole = !c.dropped;
                    }
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Again(b) => b.is_none(),
            UpBody::Client { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Again(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Client { inner, .. } => inner.size_hint(),
        }
    }
}

/// A request that may be sent more than once.
pub struct Replayable {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// None: no body; else the copy the first send keeps.
    body: Option<Arc<Mutex<Copy>>>,
}

impl Replayable {
    /// The first send of `req`, and what a retry needs (None: its head is not kept,
    /// as no retry could go; the request is sent once).
    pub fn first(req: Request<Incoming>, keep: bool) -> (Request<UpBody>, Option<Replayable>) {
        let (parts, inner) = req.into_parts();
        let empty = inner.is_end_stream();
        let fits = inner.size_hint().upper().is_none_or(|n| n <= LIMIT as u64);
        let copy = (keep && !empty && fits).then(|| Arc::new(Mutex::new(Copy::default())));
        let again = (keep && (empty || copy.is_some())).then(|| Replayable {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            body: copy.clone(),
        });
        let body = if empty {
            UpBody::Again(None)
        } else {
            UpBody::Client { inner, copy }
        };
        (Request::from_parts(parts, body), again)
    }

    /// The request again, if its body was kept whole.
    pub fn again(&self) -> Option<Request<UpBody>> {
        let body = match &self.body {
            None => None,
            Some(c) => {
                let c = c.lock().unwrap_or_else(|p| p.into_inner());
                if !c.whole {
                    return None;
                }
                Some(Bytes::copy_from_slice(&c.bytes))
            }
        };
        let mut req = Request::new(UpBody::Again(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }
}
