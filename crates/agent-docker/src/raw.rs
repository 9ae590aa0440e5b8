//! A small HTTP/1.0 exchange with the engine over the same kind of connection bollard uses (unix socket,
//! plain TCP, or TLS with the same certificates), for the requests whose bodies bollard's typed models would
//! cut down: the whole inspect document, and the create and network-connect requests built from it.
//! Written by hand because it is one request and one answer read to the end (the engine closes an HTTP/1.0
//! connection after answering); a client crate would bring a second connection stack beside bollard's.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where and how to reach the engine for raw requests. The TLS connector is built once, at connect.
#[derive(Clone)]
pub(crate) struct RawClient {
    endpoint: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for RawClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawClient")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl RawClient {
    pub(crate) fn new(endpoint: &str, tls: Option<tokio_rustls::TlsConnector>) -> RawClient {
        RawClient {
            endpoint: endpoint.to_owned(),
            tls,
        }
    }

    /// `METHOD path` with an optional JSON body: the status and the body of the answer, or why there was no
    /// answer.
    pub(crate) async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Vec<u8>), String> {
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = format!("{method} {path} HTTP/1.0\r\nHost: docker\r\n");
        if body.is_some() {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                payload.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(&payload);
        let exchange = async {
            let mut s = self.connect().await?;
            http_exchange(&mut s, &request).await
        };
        let raw = tokio::time::timeout(Duration::from_secs(120), exchange)
            .await
            .map_err(|_| format!("no answer to {method} {path} within 120 s"))?
            .map_err(|e| e.to_string())?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("a malformed answer to {method} {path}"))?;
        let head = String::from_utf8_lossy(&raw[..split]);
        let status: u16 = head
            .lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("a malformed status line in the answer to {method} {path}"))?;
        Ok((status, raw[split + 4..].to_vec()))
    }
}

/// A connection to the engine, for one HTTP/1.0 exchange.
trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

impl RawClient {
    async fn connect(&self) -> std::io::Result<Box<dyn Conn>> {
        if let Some(socket) = self.endpoint.strip_prefix("unix://") {
            return Ok(Box::new(tokio::net::UnixStream::connect(socket).await?));
        }
        let rest = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, r)| r);
        let addr = rest.split('/').next().unwrap_or(rest);
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(connector) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_matches(['[', ']']);
                let name = rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
                Ok(Box::new(connector.connect(name, tcp).await?))
            }
        }
    }

    /// `POST path` with `headers` and no body, passing each line of the answer's body to `line` as it
    /// arrives (the engine streams JSON lines for a push). Returns the status; an answer that is not 2xx is
    /// returned whole as the error.
    pub(crate) async fn post_lines(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<u16, String> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut request = format!("POST {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        let mut s = self.connect().await.map_err(|e| e.to_string())?;
        s.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut reader = tokio::io::BufReader::new(s);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.map_err(|e| e.to_string())?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("a malformed status line in the answer to POST {path}"))?;
        let mut buf = String::new();
        loop {
            buf.clear();
            if reader.read_line(&mut buf).await.map_err(|e| e.to_string())? == 0 || buf.trim().is_empty() {
                break;
            }
        }
        let mut body = String::new();
        loop {
            buf.clear();
            if reader.read_line(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                break;
            }
            if !(200..300).contains(&status) {
                body.push_str(&buf);
            } else if !buf.trim().is_empty() {
                line(buf.trim());
            }
        }
        if (200..300).contains(&status) {
            Ok(status)
        } else {
            Err(format!("the engine answered {status}: {}", body.trim()))
        }
    }
}

/// Writes `request` and reads the whole answer (HTTP/1.0: the engine closes the connection after it).
async fn http_exchange<S>(s: &mut S, request: &str) -> std::io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    Ok(buf)
}

/// A TLS client with the engine's CA as the only root and the client certificate, as the docker CLI uses.
/// Every problem names its file: an unreadable or empty file, a PEM that does not parse, a key that does not
/// match the certificate.
pub(crate) fn tls_connector(
    key: &Path,
    cert: &Path,
    ca: &Path,
) -> Result<tokio_rustls::TlsConnector, (PathBuf, String)> {
    use rustls_pki_types::pem::PemObject;
    let certs = |path: &Path| -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, (PathBuf, String)> {
        let fail = |m: String| (path.to_owned(), m);
        let all = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(format!("cannot be read: {e}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("is not a PEM certificate file: {e}")))?;
        if all.is_empty() {
            return Err(fail(
                "holds no certificate (no -----BEGIN CERTIFICATE----- block)".into(),
            ));
        }
        Ok(all)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots
            .add(c)
            .map_err(|e| (ca.to_owned(), format!("is not a usable CA certificate: {e}")))?;
    }
    let chain = certs(cert)?;
    let key_der = rustls_pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            key.to_owned(),
            format!("holds no private key agentctl can use (PEM PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => (
                key.to_owned(),
                format!("does not belong to the certificate in {}", cert.display()),
            ),
            other => (
                key.to_owned(),
                format!("cannot be used with {}: {other}", cert.display()),
            ),
        })?;
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}
