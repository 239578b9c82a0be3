//! The PROXY protocol (v1 text, v2 binary): reading the header an upstream
//! load balancer puts before the client's bytes, and writing ours to a
//! backend. Parsing is strict and bounded; the reader never consumes a byte
//! past the header.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;
/// Address block and TLVs of a v2 header; more is refused.
const V2_MAX_PAYLOAD: usize = 4096;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection's real endpoints.
    Proxy {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v2 `LOCAL` (an upstream's own health check) or v1 `UNKNOWN`: use the
    /// connection's own addresses.
    Local,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("need more bytes")]
    Incomplete,
    #[error("not a PROXY protocol header")]
    Signature,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("PROXY header longer than allowed")]
    TooLong,
}

/// Parses a complete header at the start of `buf`; returns it and its
/// length in bytes.
pub fn parse(buf: &[u8]) -> Result<(Header, usize), ParseError> {
    if buf.len() >= 12 && buf[..12] == V2_SIGNATURE {
        return parse_v2(buf);
    }
    if buf.len() < 12 && V2_SIGNATURE.starts_with(buf) && !buf.is_empty() {
        return Err(ParseError::Incomplete);
    }
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Err(ParseError::Signature);
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Result<(Header, usize), ParseError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ParseError::TooLong)
        } else {
            Err(ParseError::Incomplete)
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Err(ParseError::TooLong);
    }
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError::Malformed("not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next();
    let header = match fields.next() {
        Some("UNKNOWN") => Header::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut next = || fields.next().ok_or(ParseError::Malformed("missing field"));
            let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
            if fields.next().is_some() {
                return Err(ParseError::Malformed("extra field"));
            }
            let ip = |s: &str| -> Result<IpAddr, ParseError> {
                let ip = s
                    .parse::<IpAddr>()
                    .map_err(|_| ParseError::Malformed("bad address"))?;
                match (family, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(ParseError::Malformed("address of the wrong family")),
                }
            };
            let port = |s: &str| -> Result<u16, ParseError> {
                if s.is_empty()
                    || s.len() > 5
                    || (s.len() > 1 && s.starts_with('0'))
                    || !s.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(ParseError::Malformed("bad port"));
                }
                s.parse().map_err(|_| ParseError::Malformed("bad port"))
            };
            Header::Proxy {
                source: SocketAddr::new(ip(src)?, port(sport)?),
                destination: SocketAddr::new(ip(dst)?, port(dport)?),
            }
        }
        _ => return Err(ParseError::Malformed("unknown protocol family")),
    };
    Ok((header, len))
}

fn parse_v2(buf: &[u8]) -> Result<(Header, usize), ParseError> {
    if buf.len() < 16 {
        return Err(ParseError::Incomplete);
    }
    let version_command = buf[12];
    let family = buf[13];
    let payload = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if version_command >> 4 != 2 {
        return Err(ParseError::Malformed("version is not 2"));
    }
    if payload > V2_MAX_PAYLOAD {
        return Err(ParseError::TooLong);
    }
    let len = 16 + payload;
    if buf.len() < len {
        return Err(ParseError::Incomplete);
    }
    let body = &buf[16..len];
    match version_command & 0x0f {
        0x0 => return Ok((Header::Local, len)),
        0x1 => {}
        _ => return Err(ParseError::Malformed("unknown command")),
    }
    let header = match family {
        // TCP over IPv4.
        0x11 => {
            if body.len() < 12 {
                return Err(ParseError::Malformed("short IPv4 address block"));
            }
            let src = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let dst = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            Header::Proxy {
                source: SocketAddr::new(src.into(), u16::from_be_bytes([body[8], body[9]])),
                destination: SocketAddr::new(dst.into(), u16::from_be_bytes([body[10], body[11]])),
            }
        }
        // TCP over IPv6.
        0x21 => {
            if body.len() < 36 {
                return Err(ParseError::Malformed("short IPv6 address block"));
            }
            let octets =
                |at: usize| -> [u8; 16] { body[at..at + 16].try_into().expect("16 bytes") };
            Header::Proxy {
                source: SocketAddr::new(
                    Ipv6Addr::from(octets(0)).into(),
                    u16::from_be_bytes([body[32], body[33]]),
                ),
                destination: SocketAddr::new(
                    Ipv6Addr::from(octets(16)).into(),
                    u16::from_be_bytes([body[34], body[35]]),
                ),
            }
        }
        // UNSPEC: addresses unknown.
        0x00 => Header::Local,
        _ => return Err(ParseError::Malformed("unsupported address family")),
    };
    Ok((header, len))
}

/// Reads exactly one header from `stream`, never a byte past it.
pub async fn read(stream: &mut TcpStream) -> Result<Header, ParseError> {
    let io = |_: io::Error| ParseError::Malformed("connection closed inside the header");
    let mut buf = [0u8; 16 + V2_MAX_PAYLOAD];
    // Both versions are at least 12 bytes long ("PROXY UNKNOWN\r\n" is 15).
    stream.read_exact(&mut buf[..12]).await.map_err(io)?;
    if buf[..12] == V2_SIGNATURE {
        stream.read_exact(&mut buf[12..16]).await.map_err(io)?;
        let payload = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if payload > V2_MAX_PAYLOAD {
            return Err(ParseError::TooLong);
        }
        stream
            .read_exact(&mut buf[16..16 + payload])
            .await
            .map_err(io)?;
        return parse(&buf[..16 + payload]).map(|(h, _)| h);
    }
    if &buf[..6] != b"PROXY " {
        return Err(ParseError::Signature);
    }
    // v1: the line ends at CRLF; read byte by byte so nothing after it is
    // consumed (v1 is short and rare).
    let mut len = 12;
    loop {
        if let Ok((header, _)) = parse(&buf[..len]) {
            return Ok(header);
        }
        if len >= V1_MAX {
            return Err(ParseError::TooLong);
        }
        stream
            .read_exact(&mut buf[len..len + 1])
            .await
            .map_err(io)?;
        len += 1;
        match parse(&buf[..len]) {
            Ok((header, _)) => return Ok(header),
            Err(ParseError::Incomplete) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The v1 line for a connection from `source` to `destination`.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// The v2 header for a connection from `source` to `destination`.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

/// Both ends in one family: IPv4 mapped into IPv6 when they differ.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let unmap = |s: SocketAddr| match s.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), s.port()),
            None => s,
        },
        IpAddr::V4(_) => s,
    };
    let (a, b) = (unmap(a), unmap(b));
    if a.is_ipv4() == b.is_ipv4() {
        return (a, b);
    }
    let map = |s: SocketAddr| match s.ip() {
        IpAddr::V4(v4) => SocketAddr::new(v4.to_ipv6_mapped().into(), s.port()),
        IpAddr::V6(_) => s,
    };
    (map(a), map(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_round_trips_and_rejects_malformed_lines() {
        let line = encode_v1(addr("192.0.2.1:5000"), addr("198.51.100.2:443"));
        assert_eq!(line, b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n");
        assert_eq!(
            parse(&line),
            Ok((
                Header::Proxy {
                    source: addr("192.0.2.1:5000"),
                    destination: addr("198.51.100.2:443")
                },
                line.len()
            ))
        );
        let v6 = encode_v1(addr("[2001:db8::1]:1"), addr("[2001:db8::2]:2"));
        assert_eq!(
            parse(&v6).unwrap().0,
            Header::Proxy {
                source: addr("[2001:db8::1]:1"),
                destination: addr("[2001:db8::2]:2")
            }
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok((Header::Local, 15)));
        let cases: [(&[u8], ParseError); 8] = [
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", ParseError::Incomplete),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                ParseError::Malformed("missing field"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
                ParseError::Malformed("extra field"),
            ),
            (
                b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
                ParseError::Malformed("address of the wrong family"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
                ParseError::Malformed("bad port"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
                ParseError::Malformed("bad port"),
            ),
            (
                b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
                ParseError::Malformed("unknown protocol family"),
            ),
            (b"GET / HTTP/1.1\r\n", ParseError::Signature),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input).unwrap_err(),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long).unwrap_err(), ParseError::TooLong);
    }

    #[test]
    fn v2_round_trips_local_and_bounds() {
        for (s, d) in [
            ("10.0.0.1:1234", "10.0.0.2:80"),
            ("[2001:db8::1]:1", "[2001:db8::2]:2"),
        ] {
            let header = encode_v2(addr(s), addr(d));
            assert_eq!(
                parse(&header),
                Ok((
                    Header::Proxy {
                        source: addr(s),
                        destination: addr(d)
                    },
                    header.len()
                ))
            );
            // Every prefix is incomplete, never an error.
            for cut in 1..header.len() {
                assert_eq!(
                    parse(&header[..cut]).unwrap_err(),
                    ParseError::Incomplete,
                    "cut at {cut}"
                );
            }
        }
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&local), Ok((Header::Local, 16)));
        let mut bad_version = encode_v2(addr("1.1.1.1:1"), addr("2.2.2.2:2"));
        bad_version[12] = 0x31;
        assert_eq!(
            parse(&bad_version).unwrap_err(),
            ParseError::Malformed("version is not 2")
        );
        let mut bad_family = encode_v2(addr("1.1.1.1:1"), addr("2.2.2.2:2"));
        bad_family[13] = 0x12;
        assert_eq!(
            parse(&bad_family).unwrap_err(),
            ParseError::Malformed("unsupported address family")
        );
        let mut short = encode_v2(addr("1.1.1.1:1"), addr("2.2.2.2:2"));
        short[15] = 4;
        assert_eq!(
            parse(&short).unwrap_err(),
            ParseError::Malformed("short IPv4 address block")
        );
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge).unwrap_err(), ParseError::TooLong);
    }

    #[test]
    fn mixed_families_are_mapped_into_ipv6() {
        let line = encode_v1(addr("192.0.2.1:1"), addr("[2001:db8::2]:2"));
        assert_eq!(line, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1 2\r\n");
    }
}
