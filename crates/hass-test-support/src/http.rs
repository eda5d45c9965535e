//! A blocking HTTP GET for admin endpoints, returning any status as data.

use std::net::SocketAddr;
use std::time::Duration;

/// A response as a test looks at it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

/// `GET http://{addr}{path}`; an `Err` only when no HTTP answer came back.
pub fn get(addr: SocketAddr, path: &str) -> Result<Reply, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let mut response = agent
        .get(&url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("GET {url}: reading body: {e}"))?;
    Ok(Reply {
        status: response.status().as_u16(),
        content_type,
        body,
    })
}
