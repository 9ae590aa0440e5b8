//! A minimal HTTP/1.0 client for probes and metric scrapes over plain HTTP (agents and Prometheus on loopback
//! or container addresses). HTTP/1.0 keeps servers from chunking, so a body is everything up to the close.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body as text (lossy UTF-8).
    pub body: String,
    /// Body as received (a protobuf answer).
    pub bytes: Vec<u8>,
    /// The response headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

const MAX_BODY: usize = 16 * 1024 * 1024;

fn split_url(url: &str) -> std::io::Result<(&str, &str)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{url}: only http:// URLs are supported"),
        )
    })?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// GET `url` (`http://host:port/path`), all within `timeout`.
pub async fn get(url: &str, timeout: Duration) -> std::io::Result<Response> {
    request("GET", url, &[], None, timeout).await
}

/// Sends a request with optional headers and body, all within `timeout`.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<Response> {
    let (host, path) = split_url(url)?;
    let fut = async {
        let mut s = TcpStream::connect(host).await?;
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: agentctl\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        if let Some(b) = body {
            s.write_all(b).await?;
        }
        let mut buf = Vec::new();
        (&mut s).take(MAX_BODY as u64).read_to_end(&mut buf).await?;
        parse(&buf)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}")))?
}

fn parse(buf: &[u8]) -> std::io::Result<Response> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(bad)?;
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad())?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&buf[head_end + 4..]).into_owned(),
        bytes: buf[head_end + 4..].to_vec(),
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let r = parse(b"HTTP/1.1 503 Service Unavailable\r\nA: b\r\n\r\nunhealthy\n").unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "unhealthy\n"));
        assert_eq!(r.header("a"), Some("b"));
        assert!(parse(b"garbage").is_err());
        assert!(split_url("https://x").is_err());
    }
}
