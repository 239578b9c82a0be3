//! Name lookups for backends: `HOST:PORT` names (A/AAAA) and SRV names,
//! asked of `dns.servers` (how Consul DNS or a cluster DNS is used) with
//! hickory-resolver, else of the system resolver. Every function here
//! blocks; the proxy calls them off its workers (`spawn_blocking`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Resolver as Dns, TokioResolver};

/// One name to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `HOST:PORT`.
    Host(String),
    /// An SRV name, such as `_app._tcp.app.internal`.
    Srv(String),
}

/// The answer to a [`Query`] of the same index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Addrs(Result<Vec<SocketAddr>, String>),
    Srv(Result<Vec<SrvTarget>, String>),
}

/// One target of an SRV answer, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// `target:port`, the trailing dot dropped: the `backend` label.
    pub label: String,
    pub priority: u16,
    /// The record's weight, 0 made 1 and capped at 256.
    pub weight: u32,
    pub addrs: Vec<SocketAddr>,
}

/// How long one DNS question may take, over all attempts: a stopped
/// server costs a refresh this much, then the last answer is kept.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers every query, each in its slot. DNS questions go out at once
/// (one resolver for the batch, on a runtime of its own in a thread of its
/// own, so no caller's runtime is borrowed or blocked).
pub fn lookup(servers: &[SocketAddr], queries: &[Query]) -> Vec<Answer> {
    let needs_dns = !servers.is_empty() || queries.iter().any(|q| matches!(q, Query::Srv(_)));
    // A process-wide resolver (the config fuzzer's) keeps every name off
    // the network.
    if !needs_dns || RESOLVER.get().is_some() {
        return queries
            .iter()
            .map(|q| match q {
                Query::Host(address) => Answer::Addrs(resolve_host(address)),
                Query::Srv(name) => Answer::Srv(Err(format!(
                    "{name:?}: SRV lookups are off in this process"
                ))),
            })
            .collect();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(r) => r,
                    Err(e) => {
                        let why = format!("cannot start a DNS client: {e}");
                        return queries.iter().map(|q| failed(q, &why)).collect();
                    }
                };
                runtime.block_on(lookup_async(servers, queries))
            })
            .join()
            .unwrap_or_else(|_| {
                queries
                    .iter()
                    .map(|q| failed(q, "the DNS client failed"))
                    .collect()
            })
    })
}

fn failed(query: &Query, why: &str) -> Answer {
    match query {
        Query::Host(_) => Answer::Addrs(Err(why.to_string())),
        Query::Srv(_) => Answer::Srv(Err(why.to_string())),
    }
}

fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let mut options = ResolverOpts::default();
    options.timeout = QUERY_TIMEOUT / 2;
    options.attempts = 2;
    // A fresh resolver per batch: answers are never older than the batch.
    options.cache_size = 0;
    let builder = if servers.is_empty() {
        Dns::builder_tokio().map_err(|e| format!("cannot read the system's DNS settings: {e}"))?
    } else {
        let mut config = ResolverConfig::new();
        for &server in servers {
            config.add_name_server(NameServerConfig::new(server, Protocol::Udp));
            // Large answers (many SRV targets) come truncated over UDP.
            config.add_name_server(NameServerConfig::new(server, Protocol::Tcp));
        }
        // Every lookup goes to the configured servers, /etc/hosts included.
        options.use_hosts_file = ResolveHosts::Never;
        Dns::builder_with_config(config, TokioConnectionProvider::default())
    };
    Ok(builder.with_options(options).build())
}

async fn lookup_async(servers: &[SocketAddr], queries: &[Query]) -> Vec<Answer> {
    let dns = match resolver(servers) {
        Ok(r) => r,
        Err(why) => return queries.iter().map(|q| failed(q, &why)).collect(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, query) in queries.iter().cloned().enumerate() {
        let (dns, servers) = (dns.clone(), servers.to_vec());
        tasks.spawn(async move {
            let answer = match &query {
                Query::Host(address) => Answer::Addrs(host_async(&dns, &servers, address).await),
                Query::Srv(name) => Answer::Srv(srv_async(&dns, &servers, name).await),
            };
            (i, answer)
        });
    }
    let mut answers: Vec<Option<Answer>> = vec![None; queries.len()];
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, answer)) = done {
            answers[i] = Some(answer);
        }
    }
    answers
        .into_iter()
        .zip(queries)
        .map(|(a, q)| a.unwrap_or_else(|| failed(q, "the lookup failed")))
        .collect()
}

/// What `HOST:PORT` is without asking a resolver: an IP address, or what
/// the hooks say (the process's resolver, the pinned hosts file); else
/// the host and port to look up.
fn without_dns(address: &str) -> Result<Result<Vec<SocketAddr>, (&str, u16)>, String> {
    let (host, port) = match host_port(address)? {
        Ok(hp) => hp,
        Err(addr) => return Ok(Ok(vec![addr])),
    };
    if let Some(resolver) = RESOLVER.get() {
        return resolver(host, port).map(Ok);
    }
    match pinned(host, port) {
        Some(pinned) => pinned.map(Ok),
        None => Ok(Err((host, port))),
    }
}

/// A `HOST:PORT` through the hooks, then the system resolver.
fn resolve_host(address: &str) -> Result<Vec<SocketAddr>, String> {
    match without_dns(address)? {
        Ok(addrs) => Ok(addrs),
        Err((host, _)) => system_lookup(address, host),
    }
}

async fn host_async(
    dns: &TokioResolver,
    servers: &[SocketAddr],
    address: &str,
) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = match without_dns(address)? {
        Ok(addrs) => return Ok(addrs),
        Err(hp) => hp,
    };
    if servers.is_empty() {
        // The system resolver knows /etc/hosts and nsswitch; off this
        // runtime's only thread.
        let (address, host) = (address.to_string(), host.to_string());
        return tokio::task::spawn_blocking(move || system_lookup(&address, &host))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
    }
    match tokio::time::timeout(QUERY_TIMEOUT * 2, dns.lookup_ip(host)).await {
        Ok(Ok(found)) => found_addresses(host, found.iter().map(|ip| SocketAddr::new(ip, port))),
        Ok(Err(e)) => Err(format!("{host:?} does not resolve: {e}")),
        Err(_) => Err(format!(
            "{host:?}: no DNS answer within {}s",
            (QUERY_TIMEOUT * 2).as_secs()
        )),
    }
}

async fn srv_async(
    dns: &TokioResolver,
    servers: &[SocketAddr],
    name: &str,
) -> Result<Vec<SrvTarget>, String> {
    let answer = match tokio::time::timeout(QUERY_TIMEOUT * 2, dns.srv_lookup(name)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(format!("SRV {name:?} does not resolve: {e}")),
        Err(_) => {
            return Err(format!(
                "SRV {name:?}: no DNS answer within {}s",
                (QUERY_TIMEOUT * 2).as_secs()
            ));
        }
    };
    let mut targets = Vec::new();
    let mut unresolved = Vec::new();
    for record in answer.iter() {
        let target = record.target().to_utf8();
        let target = target.trim_end_matches('.');
        // "." means: no service here.
        if target.is_empty() {
            continue;
        }
        let label = format!("{target}:{}", record.port());
        match host_async(dns, servers, &label).await {
            Ok(addrs) => targets.push(SrvTarget {
                label,
                priority: record.priority(),
                weight: u32::from(record.weight()).clamp(1, 256),
                addrs,
            }),
            Err(e) => unresolved.push(e),
        }
    }
    if targets.is_empty() {
        return Err(match unresolved.first() {
            Some(e) => format!("SRV {name:?}: no target resolves ({e})"),
            None => format!("SRV {name:?} names no target"),
        });
    }
    for e in unresolved {
        tracing::warn!(
            srv = name,
            error = e,
            "an SRV target does not resolve; left out"
        );
    }
    targets.sort_by(|a, b| (a.priority, &a.label).cmp(&(b.priority, &b.label)));
    targets.dedup_by(|a, b| a.label == b.label);
    Ok(targets)
}

/// A hosts-format file consulted before the system resolver: pins names
/// without touching /etc/hosts (and lets tests change what a name means).
pub const HOSTS_FILE_ENV: &str = "BATON_HOSTS_FILE";

/// A lookup that replaces the hosts file and DNS in this process.
pub type Resolver = fn(host: &str, port: u16) -> Result<Vec<SocketAddr>, String>;

static RESOLVER: std::sync::OnceLock<Resolver> = std::sync::OnceLock::new();

/// Makes every name lookup of this process go to `resolver` (the config
/// fuzzer keeps names off the network this way). Set once; false if a
/// resolver was already set.
pub fn set_resolver(resolver: Resolver) -> bool {
    RESOLVER.set(resolver).is_ok()
}

/// Resolves `HOST:PORT` (an IP or a DNS name) to every address it names,
/// asking `servers` (none: the system resolver). Blocks: call it off the
/// runtime's workers.
pub fn resolve(servers: &[SocketAddr], address: &str) -> Result<Vec<SocketAddr>, String> {
    let mut answers = lookup(servers, &[Query::Host(address.to_string())]);
    match answers.pop() {
        Some(Answer::Addrs(result)) => result,
        _ => Err(format!("{address:?}: no answer")),
    }
}

/// `HOST:PORT` checked and split; an IP address is its own answer.
fn host_port(address: &str) -> Result<Result<(&str, u16), SocketAddr>, String> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("{address:?}: the port must be 1 to 65535, not 0"));
        }
        return Ok(Err(addr));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("{address:?} needs a port: write HOST:PORT"));
    };
    let (true, Ok(port)) = (!host.is_empty(), port.parse::<u16>()) else {
        return Err(format!("{address:?} is not HOST:PORT"));
    };
    if port == 0 {
        return Err(format!("{address:?}: the port must be 1 to 65535, not 0"));
    }
    Ok(Ok((host, port)))
}

/// A lookup's addresses in a stable order, each once; none is an error.
fn found_addresses(
    host: &str,
    addrs: impl Iterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, String> {
    let mut addrs: Vec<SocketAddr> = addrs.collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        Err(format!("{host:?} resolves to no address"))
    } else {
        Ok(addrs)
    }
}

/// The system resolver (getaddrinfo: /etc/hosts, nsswitch, resolv.conf).
fn system_lookup(address: &str, host: &str) -> Result<Vec<SocketAddr>, String> {
    match address.to_socket_addrs() {
        Ok(addrs) => found_addresses(host, addrs),
        Err(e) => Err(format!("{host:?} does not resolve: {e}")),
    }
}

/// `host` looked up in the file named by [`HOSTS_FILE_ENV`], if set and
/// the file names it.
fn pinned(host: &str, port: u16) -> Option<Result<Vec<SocketAddr>, String>> {
    let path = std::env::var_os(HOSTS_FILE_ENV)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return Some(Err(format!("cannot read {HOSTS_FILE_ENV} file: {e}"))),
    };
    let mut found: Vec<SocketAddr> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip: std::net::IpAddr = words.next()?.parse().ok()?;
            words
                .any(|w| w == host)
                .then_some(SocketAddr::new(ip, port))
        })
        .collect();
    if found.is_empty() {
        return None;
    }
    found.sort();
    found.dedup();
    Some(Ok(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_accepts_ips_and_names() {
        assert_eq!(
            resolve(&[], "127.0.0.1:9").unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        assert!(!resolve(&[], "localhost:9").unwrap().is_empty());
        assert!(
            resolve(&[], "localhost")
                .unwrap_err()
                .contains("needs a port")
        );
        assert!(
            resolve(&[], "localhost:x")
                .unwrap_err()
                .contains("not HOST:PORT")
        );
        assert!(
            resolve(&[], "no-such-host.invalid:9")
                .unwrap_err()
                .contains("does not resolve")
        );
    }
}
