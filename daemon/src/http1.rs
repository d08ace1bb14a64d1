//! The HTTP/1 settings of frontdesk's own servers (webhook, metrics, admin socket), and the
//! bounded body read and plain-text answers of the webhook receivers (WhatsApp's, MagicLine's).
//!
//! hyper's HTTP/1 server has no timer unless given one, and without a timer it enforces no
//! header timeout: a client that connects and sends nothing, or one header byte a minute, holds
//! a task and a descriptor for as long as it likes. Every local server is built here so none
//! forgets the timer; every webhook body is read here so none forgets the size or time limit.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::{HeaderMap, Response, StatusCode};
use hyper_util::rt::TokioTimer;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's body once the headers are in (WhatsApp's
/// webhook bodies are a few KiB).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP/1 connection builder with the timer and the header timeout set.
pub fn server() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
}

/// Why a request body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRefused {
    /// Declared or found larger than allowed.
    TooLarge,
    /// Not complete within [`BODY_READ_TIMEOUT`].
    Timeout,
    /// The connection failed while it was read.
    Unreadable,
}

impl BodyRefused {
    /// The answer's status.
    pub fn status(self) -> StatusCode {
        match self {
            BodyRefused::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyRefused::Timeout => StatusCode::REQUEST_TIMEOUT,
            BodyRefused::Unreadable => StatusCode::BAD_REQUEST,
        }
    }

    /// The reason code in metrics and the audit log.
    pub fn reason(self) -> &'static str {
        match self {
            BodyRefused::TooLarge => "too_large",
            BodyRefused::Timeout => "body_timeout",
            BodyRefused::Unreadable => "body_read_failed",
        }
    }
}

/// Reads a request body of at most `max` bytes within [`BODY_READ_TIMEOUT`]; a
/// `content-length` over `max` in `headers` is refused before a byte is read.
pub async fn read_body<B>(headers: &HeaderMap, body: B, max: usize) -> Result<Bytes, BodyRefused>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(BodyRefused::TooLarge);
    }
    match tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, max).collect()).await {
        Err(_) => Err(BodyRefused::Timeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyRefused::TooLarge),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "request body read failed");
            Err(BodyRefused::Unreadable)
        }
    }
}

/// A plain-text answer (`body` and a newline).
pub fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(format!("{body}\n"))))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A client that sends half a request line and then nothing is cut off by the server (with
    /// paused time, so the test waits for no real timeout).
    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_disconnected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<
                    bytes::Bytes,
                >::new()))
            });
            server()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"POST /webhook HT").await.unwrap();
        // The server ends the connection: either closed (0 bytes) or a 408 first.
        let mut buf = Vec::new();
        let _ = client.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
        let ended = server.await.unwrap();
        assert!(
            ended.is_err(),
            "the connection ends with a header timeout error"
        );
    }
}
