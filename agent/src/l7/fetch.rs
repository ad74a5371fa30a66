//! One bounded HTTP(S) request, for documents the agent reads from outside the policy set (JWKS,
//! OIDC discovery) and the OIDC token endpoint's form posts: hyper over TCP, or over rustls with
//! the Mozilla root set (webpki-roots), with a time limit, a size limit and the response's
//! `cache-control: max-age`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Whole fetch, connection to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest document read.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}: not an http:// or https:// URL with a host")]
    Url(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("status {0}")]
    Status(StatusCode),
    #[error("the body is over {MAX_DOCUMENT_BYTES} bytes or broke off")]
    Body,
    #[error("no answer within {FETCH_TIMEOUT:?}")]
    Timeout,
}

/// A fetched document and how long it may be cached (`cache-control: max-age`).
#[derive(Debug)]
pub struct Fetched {
    pub body: Bytes,
    pub max_age: Option<Duration>,
}

/// GETs `url`.
pub async fn get(url: &str) -> Result<Fetched, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, send(url, None))
        .await
        .map_err(|_| FetchError::Timeout)?
}

/// A form post (`application/x-www-form-urlencoded`), with `authorization` if given.
#[derive(Debug)]
pub struct Form {
    pub authorization: Option<String>,
    pub body: String,
}

/// POSTs `form` to `url`.
pub async fn post_form(url: &str, form: Form) -> Result<Fetched, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, send(url, Some(form)))
        .await
        .map_err(|_| FetchError::Timeout)?
}

async fn send(url: &str, form: Option<Form>) -> Result<Fetched, FetchError> {
    let uri: Uri = url.parse().map_err(|_| FetchError::Url(url.into()))?;
    let host = uri.host().ok_or_else(|| FetchError::Url(url.into()))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(FetchError::Url(url.into())),
    };
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| FetchError::Connect(format!("{host}:{port}"), e))?;
    let _ = tcp.set_nodelay(true);
    if tls {
        let name = ServerName::try_from(host.clone()).map_err(|_| FetchError::Url(url.into()))?;
        let config = public_tls().ok_or_else(|| FetchError::Url(url.into()))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::Tls(host.clone(), e))?;
        request(stream, &uri, &host, form).await
    } else {
        request(tcp, &uri, &host, form).await
    }
}

async fn request<S>(
    stream: S,
    uri: &Uri,
    host: &str,
    form: Option<Form>,
) -> Result<Fetched, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let mut req = Request::builder()
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "rampart")
        .header(hyper::header::ACCEPT, "application/json");
    let body = match form {
        None => Full::new(Bytes::new()),
        Some(form) => {
            req = req.method(hyper::Method::POST).header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
            if let Some(authorization) = form.authorization {
                req = req.header(hyper::header::AUTHORIZATION, authorization);
            }
            Full::new(Bytes::from(form.body))
        }
    };
    let req = req
        .body(body)
        .map_err(|_| FetchError::Url(uri.to_string()))?;
    let response = sender.send_request(req).await?;
    if response.status() != StatusCode::OK {
        return Err(FetchError::Status(response.status()));
    }
    let max_age = response
        .headers()
        .get_all(hyper::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(max_age);
    let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map_err(|_| FetchError::Body)?
        .to_bytes();
    Ok(Fetched { body, max_age })
}

/// `max-age=N` of a `cache-control` value (`no-store`/`no-cache` mean 0).
pub fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|directive| {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            return Some(Duration::ZERO);
        }
        let seconds = directive.strip_prefix("max-age=")?;
        seconds
            .trim_matches('"')
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    })
}

/// TLS to public servers: the Mozilla root set, TLS 1.2 and 1.3.
fn public_tls() -> Option<Arc<ClientConfig>> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    Some(Arc::clone(
        CONFIG.get_or_init(|| Arc::new(super::tls_client::config(None))),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
