//! Opening connections to remote relays: SSRF-checked resolution, dialling exactly the checked
//! addresses (never re-resolving), TLS for `wss://`, the websocket handshake with tight
//! buffers (idle sessions must stay cheap), and the NIP-11 document over the same path.

use super::ssrf::{resolve_checked, SsrfError};
use crate::core::settings::RelayLimits;
use crate::core::url::RelayUrl;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// An open websocket to a relay.
pub type RelaySocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How to dial.
#[derive(Debug, Clone, Copy)]
pub struct DialOptions {
    /// Admit loopback/private/link-local addresses (an allowlist said so).
    pub allow_private: bool,
    /// Bound on TCP connect + TLS + handshake.
    pub timeout: Duration,
    /// Largest websocket message accepted; larger ones end the connection.
    pub max_message: usize,
}

impl Default for DialOptions {
    fn default() -> Self {
        DialOptions {
            allow_private: false,
            timeout: Duration::from_secs(10),
            max_message: 1 << 20,
        }
    }
}

/// Why a connection could not be opened.
#[derive(Debug, Error)]
pub enum DialError {
    /// The SSRF guard refused the target (no socket was opened).
    #[error(transparent)]
    Refused(#[from] SsrfError),
    /// TCP connect failed on every address.
    #[error("connect failed: {0}")]
    Connect(String),
    /// TLS failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The websocket handshake failed.
    #[error("websocket handshake: {0}")]
    Handshake(String),
    /// Took longer than the timeout.
    #[error("timed out")]
    Timeout,
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth())
                // The ring provider supports the default versions; this cannot fail, but an
                // empty config (every handshake fails) is the safe fallback if it ever does.
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                });
            Arc::new(config)
        })
        .clone()
}

async fn tcp(addrs: &[SocketAddr]) -> Result<TcpStream, DialError> {
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(DialError::Connect(last))
}

async fn transport(
    url: &RelayUrl,
    addrs: &[SocketAddr],
) -> Result<MaybeTlsStream<TcpStream>, DialError> {
    let stream = tcp(addrs).await?;
    if !url.is_secure() {
        return Ok(MaybeTlsStream::Plain(stream));
    }
    let host = url
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let name = ServerName::try_from(host).map_err(|e| DialError::Tls(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(tls_config())
        .connect(name, stream)
        .await
        .map_err(|e| DialError::Tls(e.to_string()))?;
    Ok(MaybeTlsStream::Rustls(tls))
}

/// Small buffers: a thousand idle sessions must fit in a few hundred MB.
fn ws_config(max_message: usize) -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.read_buffer_size = 8 * 1024;
    c.write_buffer_size = 0;
    c.max_message_size = Some(max_message);
    c.max_frame_size = Some(max_message);
    c
}

/// Resolves (SSRF-checked), then opens the websocket and fetches the NIP-11 document
/// concurrently, both to exactly the checked addresses. NIP-11 is advisory: `None` when absent.
pub async fn open(
    url: &RelayUrl,
    opts: DialOptions,
    info_timeout: Duration,
    defaults: RelayLimits,
) -> Result<(RelaySocket, Option<RelayInfo>), DialError> {
    let addrs = resolve_checked(url, opts.allow_private).await?;
    let socket = async {
        let stream = transport(url, &addrs).await?;
        let (socket, _resp) = tokio_tungstenite::client_async_with_config(
            url.as_str(),
            stream,
            Some(ws_config(opts.max_message)),
        )
        .await
        .map_err(|e| DialError::Handshake(e.to_string()))?;
        Ok::<_, DialError>(socket)
    };
    let socket = async {
        tokio::time::timeout(opts.timeout, socket)
            .await
            .map_err(|_| DialError::Timeout)?
    };
    let (socket, info) = tokio::join!(socket, fetch_info(url, &addrs, info_timeout, defaults));
    Ok((socket?, info))
}

/// Opens a websocket to our own relay for publishing. Our relay is operator configuration, so
/// private addresses are admitted (the SSRF guard is for relays learned from announcements), no
/// NIP-11 is fetched, and the write buffer is large: many EVENTs are queued and flushed together.
pub async fn open_own(url: &RelayUrl, timeout: Duration) -> Result<RelaySocket, DialError> {
    let connect = async {
        let addrs = resolve_checked(url, true).await?;
        let stream = transport(url, &addrs).await?;
        let mut config = ws_config(DialOptions::default().max_message);
        config.write_buffer_size = 128 * 1024;
        config.read_buffer_size = 64 * 1024;
        let (socket, _resp) =
            tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
                .await
                .map_err(|e| DialError::Handshake(e.to_string()))?;
        Ok::<_, DialError>(socket)
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| DialError::Timeout)?
}

/// What a relay's NIP-11 document says about us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayInfo {
    /// Limits, with absent fields taken from the defaults.
    pub limits: Option<RelayLimits>,
    /// Whether `supported_nips` lists 77 (None when the list is absent).
    pub nip77: Option<bool>,
}

/// Largest NIP-11 response read.
const MAX_INFO: usize = 64 * 1024;

/// Parses a NIP-11 document.
pub fn parse_info(body: &[u8], defaults: RelayLimits) -> Option<RelayInfo> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let nip77 = doc
        .get("supported_nips")
        .and_then(|n| n.as_array())
        .map(|nips| {
            nips.iter()
                .any(|n| n.as_u64() == Some(77) || n.as_str() == Some("77"))
        });
    let limits = doc
        .get("limitation")
        .and_then(|l| l.as_object())
        .and_then(|l| {
            let field = |name: &str| {
                l.get(name)
                    .and_then(|v| v.as_u64())
                    .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
            };
            let (s, f, m) = (
                field("max_subscriptions"),
                field("max_filters"),
                field("max_limit"),
            );
            if s.is_none() && f.is_none() && m.is_none() {
                return None;
            }
            Some(
                RelayLimits {
                    max_subscriptions: s.unwrap_or(defaults.max_subscriptions),
                    max_filters: f.unwrap_or(defaults.max_filters),
                    max_limit: m.unwrap_or(defaults.max_limit),
                }
                .sanitized(),
            )
        });
    Some(RelayInfo { limits, nip77 })
}

/// Fetches the NIP-11 document from the already-checked addresses. Any failure is `None`:
/// NIP-11 is advisory.
pub async fn fetch_info(
    url: &RelayUrl,
    addrs: &[SocketAddr],
    timeout: Duration,
    defaults: RelayLimits,
) -> Option<RelayInfo> {
    let work = async {
        let mut stream = transport(url, addrs).await.ok()?;
        let body = http_get(&mut stream, url).await?;
        parse_info(&body, defaults)
    };
    tokio::time::timeout(timeout, work).await.ok().flatten()
}

async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    url: &RelayUrl,
) -> Option<Vec<u8>> {
    let path = url.path_and_query();
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    http_get_raw(
        stream,
        url.host_port(),
        &path,
        "application/nostr+json",
        MAX_INFO,
    )
    .await
}

/// A minimal HTTP/1.1 GET (Connection: close) returning the body of a 200 response, reading at
/// most `max` bytes. Used for NIP-11 and by `grasp-sync status`.
pub async fn http_get_raw<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    path: &str,
    accept: &str,
    max: usize,
) -> Option<Vec<u8>> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nUser-Agent: grasp-sync\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > max {
            return None;
        }
        if response_complete(&buf) {
            break;
        }
    }
    parse_http(&buf)
}

fn split_head(buf: &[u8]) -> Option<(&str, &[u8])> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    Some((head, &buf[end + 4..]))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn response_complete(buf: &[u8]) -> bool {
    let Some((head, body)) = split_head(buf) else {
        return false;
    };
    if let Some(len) = header(head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        return body.len() >= len;
    }
    header(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        && body.windows(5).any(|w| w == b"0\r\n\r\n")
}

/// The body of a 200 response (Content-Length, chunked, or read-to-close).
fn parse_http(buf: &[u8]) -> Option<Vec<u8>> {
    let (head, body) = split_head(buf)?;
    let status = head.split_whitespace().nth(1)?;
    if status != "200" {
        return None;
    }
    if header(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return dechunk(body);
    }
    match header(head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(len) => body.get(..len).map(<[u8]>::to_vec),
        None => Some(body.to_vec()),
    }
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nip11_limits_and_nip77() {
        let d = RelayLimits::default();
        let info = parse_info(
            br#"{"supported_nips":[1,11,77],"limitation":{"max_subscriptions":3,"max_limit":100}}"#,
            d,
        )
        .expect("parses");
        assert_eq!(info.nip77, Some(true));
        let l = info.limits.expect("limits");
        assert_eq!(
            (l.max_subscriptions, l.max_filters, l.max_limit),
            (3, d.max_filters, 100)
        );
        let info = parse_info(br#"{"supported_nips":[1,11]}"#, d).expect("parses");
        assert_eq!(
            info,
            RelayInfo {
                limits: None,
                nip77: Some(false)
            }
        );
        assert_eq!(parse_info(b"{}", d), Some(RelayInfo::default()));
        assert_eq!(parse_info(b"<html>", d), None);
    }

    #[test]
    fn hostile_limits_are_clamped() {
        let info = parse_info(
            br#"{"limitation":{"max_subscriptions":0,"max_filters":99999999999}}"#,
            RelayLimits::default(),
        )
        .expect("parses");
        let l = info.limits.expect("limits");
        assert_eq!(l.max_subscriptions, 2);
        assert_eq!(l.max_filters, 256);
    }

    #[test]
    fn http_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert!(response_complete(plain));
        assert_eq!(parse_http(plain), Some(b"{}".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert!(response_complete(chunked));
        assert_eq!(parse_http(chunked), Some(b"{}".to_vec()));
        assert_eq!(parse_http(b"HTTP/1.1 404 Not Found\r\n\r\n"), None);
    }
}
