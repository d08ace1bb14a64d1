//! The HTTP/1 settings of frontdesk's own servers (webhook, metrics, admin socket).
//!
//! hyper's HTTP/1 server has no timer unless given one, and without a timer it enforces no
//! header timeout: a client that connects and sends nothing, or one header byte a minute, holds
//! a task and a descriptor for as long as it likes. Every local server is built here so none
//! forgets the timer.

use std::time::Duration;

use hyper::server::conn::http1;
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
