//! A gRPC server layer that refuses a request message larger than a limit with
//! RESOURCE_EXHAUSTED and a reason, as soon as the message's length prefix arrives — before
//! the message is buffered. (tonic's own decoding limit answers OUT_OF_RANGE.) It reads the
//! gRPC length-prefixed framing of every message on the stream, so long-lived client streams
//! are held to the limit too.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

#[derive(Debug, Clone, Copy)]
pub struct MessageLimitLayer {
    limit: usize,
}

impl MessageLimitLayer {
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> MessageLimit<S> {
        MessageLimit {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for MessageLimit<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let limit = self.limit;
        self.inner.call(req.map(|body| {
            tonic::body::Body::new(Limited {
                inner: body,
                scan: Scan::new(limit),
            })
        }))
    }
}

/// Where the reader is in the gRPC framing: 1 flag byte and a 4-byte big-endian length per
/// message, then the message.
#[derive(Debug)]
struct Scan {
    limit: usize,
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl Scan {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            header: [0; 5],
            have: 0,
            remaining: 0,
        }
    }

    /// Follows `data` through the framing; the status if a message announces too many bytes.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len > self.limit {
                    return Err(Status::resource_exhausted(format!(
                        "the request message is {len} bytes; this server takes at most {} (max_message_bytes)",
                        self.limit
                    )));
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

struct Limited {
    inner: tonic::body::Body,
    scan: Scan,
}

impl Body for Limited {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
            && let Err(status) = self.scan.feed(data)
        {
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len as usize));
        v
    }

    #[test]
    fn follows_the_framing_across_chunk_boundaries() {
        let mut bytes = frame(10);
        bytes.extend(frame(100));
        bytes.extend(frame(11));
        // any split into chunks sees the same messages: the 100-byte one is refused
        for chunk in [1usize, 2, 3, 5, 7, 64, 1000] {
            let mut s = Scan::new(50);
            let outcome = bytes.chunks(chunk).try_for_each(|c| s.feed(c));
            let e = outcome.err().map(|s| (s.code(), s.message().to_string()));
            assert_eq!(
                e,
                Some((
                    tonic::Code::ResourceExhausted,
                    "the request message is 100 bytes; this server takes at most 50 (max_message_bytes)".into()
                )),
                "chunk {chunk}"
            );
        }
        let mut s = Scan::new(100);
        assert!(bytes.chunks(3).try_for_each(|c| s.feed(c)).is_ok());
    }
}
