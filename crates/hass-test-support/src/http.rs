//! A blocking HTTP GET for admin endpoints, returning any status as data.

use std::net::SocketAddr;
use std::time::Duration;

/// A response as a test looks at it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
    /// Every header, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// Every value of header `name` (lower case).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// `GET http://{addr}{path}`; an `Err` only when no HTTP answer came back.
pub fn get(addr: SocketAddr, path: &str) -> Result<Reply, String> {
    get_with(addr, path, &[])
}

/// [`get`] with request headers (`Authorization`, say).
pub fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let mut request = agent.get(&url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().map_err(|e| format!("GET {url}: {e}"))?;
    let all: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let content_type = all
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| v.clone());
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("GET {url}: reading body: {e}"))?;
    Ok(Reply {
        status: response.status().as_u16(),
        content_type,
        body,
        headers: all,
    })
}
