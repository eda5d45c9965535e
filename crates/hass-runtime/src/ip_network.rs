//! Addresses and networks as Home Assistant's `trusted_proxies` takes them:
//! Python's `ip_network`, strict, and written as `str(ip_network(x))` writes
//! them. One parser for the values that render them and the watcher that
//! applies them.

use std::net::IpAddr;

/// `10.0.0.0/8` or a single address (`127.0.0.1` → `127.0.0.1/32`), as
/// Python writes it; a network with host bits set (`10.1.2.3/8`) is refused,
/// as `ip_network` refuses it.
pub fn ip_network(text: &str) -> Result<String, String> {
    let net: ipnet::IpNet = match text.parse::<IpAddr>() {
        Ok(addr) => addr.into(),
        Err(_) => text
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or network"))?,
    };
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has host bits set (the network is {})",
            net.trunc()
        ));
    }
    Ok(net.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_written_as_python_writes_them() {
        for (text, written) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("127.0.0.1", "127.0.0.1/32"),
            ("fd00::/8", "fd00::/8"),
            ("::1", "::1/128"),
            ("2001:db8:0:0::/64", "2001:db8::/64"),
        ] {
            assert_eq!(ip_network(text).as_deref(), Ok(written), "{text}");
        }
        for bad in ["10.1.2.3/8", "example.com", "10.0.0.0/33", "10.0.0.0/", ""] {
            assert!(ip_network(bad).is_err(), "{bad}");
        }
    }
}
