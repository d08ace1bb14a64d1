//! A blocking client for the admin socket (HTTP/1.1 over a unix stream), used by the CLI.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Why a call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket is missing or nobody listens on it.
    #[error("the frontdesk daemon is not running (cannot connect to {path}: {source}); start it with `systemctl start frontdesk`")]
    Unreachable {
        /// The admin socket.
        path: PathBuf,
        /// Why the connection failed.
        #[source]
        source: std::io::Error,
    },
    /// The caller may not use the admin API (not root and not in the admin group).
    #[error("{0}")]
    Denied(String),
    /// The daemon refused or failed the request.
    #[error("{message} (HTTP {status})")]
    Failed {
        /// HTTP status code of the answer.
        status: u16,
        /// The daemon's error message.
        message: String,
    },
    /// The answer was not what the admin API sends (broken connection, bad JSON, …).
    #[error("admin socket: {0}")]
    Protocol(String),
}

/// A successful answer.
pub struct Answer {
    /// The answer's `content-type`.
    pub content_type: String,
    /// The answer's body (JSON, or an export's bytes).
    pub body: Vec<u8>,
}

impl Answer {
    /// Parses the body as JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ClientError::Protocol(format!("unexpected answer: {e}")))
    }
}

/// Calls the daemon's admin API over its unix socket, one connection per call.
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    /// A client for the admin socket at `socket`; nothing is connected yet.
    pub fn new(socket: &Path) -> AdminClient {
        AdminClient {
            socket: socket.to_path_buf(),
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Answer, ClientError> {
        self.call("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &impl serde::Serialize) -> Result<Answer, ClientError> {
        let body = serde_json::to_vec(body).expect("requests serialise");
        self.call("POST", path, Some(body))
    }

    fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Answer, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        rt.block_on(self.call_async(method, path, body))
    }

    async fn call_async(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::PermissionDenied {
                    ClientError::Denied(format!(
                        "permission denied: cannot connect to {} (only root and members of the admin group may)",
                        self.socket.display()
                    ))
                } else {
                    ClientError::Unreachable {
                        path: self.socket.clone(),
                        source,
                    }
                }
            })?;
        let proto = |e: hyper::Error| ClientError::Protocol(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(proto)?;
        let driver = tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "frontdesk")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(proto)?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.into_body().collect().await.map_err(proto)?.to_bytes();
        driver.abort();
        if status == 200 {
            return Ok(Answer {
                content_type,
                body: body.to_vec(),
            });
        }
        let message = serde_json::from_slice::<super::api::ErrorReply>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        if status == 403 {
            Err(ClientError::Denied(message))
        } else {
            Err(ClientError::Failed { status, message })
        }
    }
}
