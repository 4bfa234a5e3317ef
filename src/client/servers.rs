//! Where the relay is: [`ServerList`], addresses and host names to resolve and try in order.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use super::error::ClientError;

/// One or more relay addresses, tried in order ([`super::ClientConfig::server`]). Each is
/// an IP address or a host name, with a port: `127.0.0.1:4433`, `[::1]:4433`,
/// `localhost:4433`, `relay.example.com:4433`; several are separated by commas,
/// `relay-a.example.com:4433,relay-b.example.com:4433`.
///
/// The client resolves host names (with the system resolver, `tokio::net::lookup_host`) each
/// time it connects, so a changed DNS record is followed on the next reconnect, and tries the
/// addresses in order (a host name's in the resolver's order) until one connects, each within
/// [`super::ClientConfig::connect_timeout`]. After a lost connection it starts with the
/// address after the one it lost, so that a relay that went away is tried last.
///
/// ```
/// use qrelay::client::ServerList;
///
/// let one: ServerList = "127.0.0.1:4433".parse()?;
/// let named: ServerList = "localhost:4433".parse()?;
/// let several: ServerList = "relay-a.example.com:4433,10.0.0.2:4433".parse()?;
/// assert_eq!(several.to_string(), "relay-a.example.com:4433,10.0.0.2:4433");
/// assert!("localhost".parse::<ServerList>().is_err()); // no port
/// let from_addr = ServerList::from(std::net::SocketAddr::from(([127, 0, 0, 1], 4433)));
/// assert_eq!(from_addr, one);
/// # Ok::<(), qrelay::client::ServerListError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerList {
    /// The entries, in order; never empty.
    entries: Vec<Entry>,
}

/// One entry of a [`ServerList`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// An IP address and port.
    Addr(SocketAddr),
    /// A host name to resolve, and the port.
    Host {
        /// The name, as given.
        host: String,
        /// The port.
        port: u16,
    },
}

/// Why a text is not a [`ServerList`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{entry:?} is not a relay address: {reason} (expected HOST:PORT or IP:PORT, e.g. \
     localhost:4433 or [::1]:4433, several separated by commas)"
)]
pub struct ServerListError {
    /// The entry that is wrong.
    pub entry: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ServerList {
    /// Resolves every entry, in order, into the addresses to try (duplicates removed). Fails
    /// with [`ClientError::Connect`] when no entry resolves; an entry that does not resolve
    /// while others do is skipped (and logged).
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, ClientError> {
        let mut addrs = Vec::new();
        let mut failures = Vec::new();
        for entry in &self.entries {
            let found: Vec<SocketAddr> = match entry {
                Entry::Addr(addr) => vec![*addr],
                Entry::Host { host, port } => {
                    match tokio::net::lookup_host((host.as_str(), *port)).await {
                        Ok(found) => found.collect(),
                        Err(error) => {
                            tracing::debug!(host, %error, "relay host name not resolved");
                            failures.push(format!("{host}: {error}"));
                            continue;
                        }
                    }
                }
            };
            if found.is_empty() {
                failures.push(format!("{entry}: no address"));
            }
            for addr in found {
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        if addrs.is_empty() {
            return Err(ClientError::Connect(format!(
                "cannot resolve {self}: {}",
                failures.join("; ")
            )));
        }
        Ok(addrs)
    }
}

impl FromStr for ServerList {
    type Err = ServerListError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let entries =
            text.split(',').map(|entry| entry.trim().parse()).collect::<Result<_, _>>()?;
        Ok(ServerList { entries })
    }
}

impl FromStr for Entry {
    type Err = ServerListError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let error = |reason| ServerListError { entry: entry.to_owned(), reason };
        if entry.is_empty() {
            return Err(error("empty"));
        }
        if let Ok(addr) = entry.parse::<SocketAddr>() {
            return match addr.port() {
                0 => Err(error("port 0")),
                _ => Ok(Entry::Addr(addr)),
            };
        }
        let Some((host, port)) = entry.rsplit_once(':') else {
            return Err(error("no port"));
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(error("not a host name"));
        }
        if host.contains(':') || host.contains('[') {
            return Err(error("an IPv6 address needs brackets and a port, as in [::1]:4433"));
        }
        match port.parse::<u16>() {
            Ok(0) => Err(error("port 0")),
            Ok(port) => Ok(Entry::Host { host: host.to_owned(), port }),
            Err(_) => Err(error("the port is not a number from 1 to 65535")),
        }
    }
}

impl From<SocketAddr> for ServerList {
    fn from(addr: SocketAddr) -> Self {
        ServerList { entries: vec![Entry::Addr(addr)] }
    }
}

impl fmt::Display for ServerList {
    /// The entries as given, separated by commas (the form [`ServerList::from_str`] reads).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, entry) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{entry}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Addr(addr) => write!(f, "{addr}"),
            Entry::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The order in which to try `addrs` after losing the connection to `lost`: from the
/// address after it, round the list (from the first when `lost` is not in it).
pub(crate) fn after(addrs: &[SocketAddr], lost: Option<SocketAddr>) -> Vec<SocketAddr> {
    let canonical = |addr: SocketAddr| SocketAddr::new(addr.ip().to_canonical(), addr.port());
    let lost = lost.map(canonical);
    let start = addrs.iter().position(|a| Some(canonical(*a)) == lost).map_or(0, |i| i + 1);
    addrs[start.min(addrs.len())..]
        .iter()
        .chain(&addrs[..start.min(addrs.len())])
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServerList, &'static str> {
        text.parse::<ServerList>().map_err(|e| e.reason)
    }

    #[test]
    fn addresses_host_names_and_lists_parse_and_print_back() {
        for text in [
            "127.0.0.1:4433",
            "[::1]:4433",
            "localhost:4433",
            "relay-a.example.com:4433,10.0.0.2:1,[2001:db8::1]:65535",
        ] {
            assert_eq!(parse(text).map(|list| list.to_string()), Ok(text.to_owned()));
        }
        assert_eq!(
            parse(" localhost:4433 , 127.0.0.1:1").unwrap().to_string(),
            "localhost:4433,127.0.0.1:1"
        );
        let addr: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        assert_eq!(ServerList::from(addr), parse("127.0.0.1:4433").unwrap());
    }

    #[test]
    fn what_is_not_an_address_is_refused_with_a_reason() {
        assert_eq!(parse(""), Err("empty"));
        assert_eq!(parse("a:1,,b:2"), Err("empty"));
        assert_eq!(parse("localhost"), Err("no port"));
        assert_eq!(parse("localhost:"), Err("the port is not a number from 1 to 65535"));
        assert_eq!(parse("localhost:65536"), Err("the port is not a number from 1 to 65535"));
        assert_eq!(parse("localhost:0"), Err("port 0"));
        assert_eq!(parse("127.0.0.1:0"), Err("port 0"));
        assert!(parse("::1:4433").unwrap_err().contains("brackets"));
        assert_eq!(parse(":4433"), Err("not a host name"));
        assert_eq!(parse("my relay:4433"), Err("not a host name"));
        assert_eq!(parse("https://relay:4433"), Err("not a host name"));
        let error = "localhost".parse::<ServerList>().unwrap_err().to_string();
        assert!(error.contains("\"localhost\" is not a relay address: no port"), "{error}");
    }

    #[tokio::test]
    async fn names_resolve_in_order_without_duplicates() {
        let list = parse("127.0.0.1:4433,localhost:4433,127.0.0.2:4433").unwrap();
        let addrs = list.resolve().await.expect("localhost resolves");
        assert_eq!(addrs[0], "127.0.0.1:4433".parse().unwrap());
        assert_eq!(addrs.last(), Some(&"127.0.0.2:4433".parse().unwrap()));
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 4433));
        let unique: std::collections::HashSet<_> = addrs.iter().collect();
        assert_eq!(unique.len(), addrs.len());
    }

    #[test]
    fn after_a_loss_the_next_address_comes_first() {
        let addrs: Vec<SocketAddr> =
            ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"].map(|a| a.parse().unwrap()).to_vec();
        let order = |lost: Option<&str>| after(&addrs, lost.map(|a| a.parse().unwrap()));
        assert_eq!(order(None), addrs);
        assert_eq!(order(Some("10.0.0.1:1")), [addrs[1], addrs[2], addrs[0]]);
        assert_eq!(order(Some("10.0.0.3:1")), addrs);
        assert_eq!(order(Some("10.9.9.9:1")), addrs);
        // A dual-stack socket reports an IPv4 peer as IPv4-mapped IPv6.
        assert_eq!(order(Some("[::ffff:10.0.0.2]:1")), [addrs[2], addrs[0], addrs[1]]);
        assert!(after(&[], None).is_empty());
    }
}
