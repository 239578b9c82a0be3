//! Reading the server name from a TLS ClientHello without decrypting
//! anything (as HAProxy's `req.ssl_sni` and nginx's `ssl_preread` do). The
//! bytes read are forwarded to the backend untouched.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The most of a ClientHello we read: post-quantum key shares make it large,
/// but not larger than this.
pub const MAX_HELLO: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    #[error("need more bytes")]
    Incomplete,
    #[error("not a TLS ClientHello")]
    NotTls,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("ClientHello larger than 16 KiB")]
    TooLong,
}

/// The SNI host name of the ClientHello at the start of `buf` (`None` when
/// it sends none). The hello may span several TLS records.
pub fn server_name(buf: &[u8]) -> Result<Option<String>, SniError> {
    HelloParser::default().push(buf)
}

/// A ClientHello read as it arrives, in as many segments as it takes: each
/// byte is looked at once, so a hello sent a byte at a time costs what one
/// sent whole does (re-parsing everything per read would be quadratic).
#[derive(Debug, Default)]
pub struct HelloParser {
    /// How much of the bytes given so far has been looked at.
    next: usize,
    /// Payload bytes of the current record still to come; 0 before a
    /// record header.
    record_left: usize,
    /// The handshake message, gathered from the records' payloads.
    handshake: Vec<u8>,
    /// Its whole length (4 + body) once the header is in.
    need: Option<usize>,
    /// Bytes examined so far (for the tests of linearity).
    examined: usize,
}

impl HelloParser {
    /// Looks at what `buf` — every byte read so far, the earlier ones
    /// unchanged — adds since the last call.
    pub fn push(&mut self, buf: &[u8]) -> Result<Option<String>, SniError> {
        if self.next == 0 && !buf.is_empty() && buf[0] != 0x16 {
            return Err(SniError::NotTls);
        }
        while self.next < buf.len() {
            if self.record_left == 0 {
                let Some(header) = buf.get(self.next..self.next + 5) else {
                    return Err(SniError::Incomplete);
                };
                self.examined += 5;
                if header[0] != 0x16 || header[1] != 0x03 {
                    return Err(SniError::NotTls);
                }
                let len = u16::from_be_bytes([header[3], header[4]]) as usize;
                if len == 0 || len > 16384 {
                    return Err(SniError::Malformed("record length"));
                }
                self.record_left = len;
                self.next += 5;
                continue;
            }
            let take = self.record_left.min(buf.len() - self.next);
            self.handshake
                .extend_from_slice(&buf[self.next..self.next + take]);
            self.examined += take;
            self.next += take;
            self.record_left -= take;
            if self.need.is_none() && self.handshake.len() >= 4 {
                if self.handshake[0] != 0x01 {
                    return Err(SniError::NotTls);
                }
                let h = &self.handshake;
                let body = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
                if body > MAX_HELLO {
                    return Err(SniError::TooLong);
                }
                self.need = Some(4 + body);
            }
            if let Some(need) = self.need
                && self.handshake.len() >= need
            {
                self.examined += need;
                return parse_hello(&self.handshake[4..need]);
            }
        }
        Err(SniError::Incomplete)
    }

    /// Bytes examined so far.
    pub fn examined(&self) -> usize {
        self.examined
    }
}

/// A cursor over the ClientHello body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SniError> {
        if self.0.len() < n {
            return Err(SniError::Malformed("field runs past its end"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<usize, SniError> {
        Ok(self.take(1)?[0] as usize)
    }

    fn u16(&mut self) -> Result<usize, SniError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

fn parse_hello(body: &[u8]) -> Result<Option<String>, SniError> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy version, random
    let n = r.u8()?;
    r.take(n)?; // session id
    let n = r.u16()?;
    r.take(n)?; // cipher suites
    let n = r.u8()?;
    r.take(n)?; // compression methods
    if r.0.is_empty() {
        return Ok(None);
    }
    let n = r.u16()?;
    let mut extensions = Reader(r.take(n)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let n = extensions.u16()?;
        let data = extensions.take(n)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let n = list.u16()?;
        let mut names = Reader(list.take(n)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let n = names.u16()?;
            let name = names.take(n)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name)
                    .map_err(|_| SniError::Malformed("server name is not ASCII"))?;
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(SniError::Malformed("server name"));
                }
                return Ok(Some(name.to_ascii_lowercase()));
            }
        }
        return Ok(None);
    }
    Ok(None)
}

/// Reads from `stream` until a whole ClientHello is in (up to 16 KiB,
/// across as many segments as it takes) or `timeout` passes. Returns what
/// was read, to be forwarded first, and the server name.
pub async fn peek(
    stream: &mut TcpStream,
    timeout: Duration,
) -> (Vec<u8>, Result<Option<String>, SniError>) {
    let mut buf = Vec::with_capacity(2048);
    let mut parser = HelloParser::default();
    let result = tokio::time::timeout(timeout, async {
        let mut chunk = [0u8; 4096];
        loop {
            let room = (MAX_HELLO + 5 * 4 + 4 - buf.len()).min(chunk.len());
            if room == 0 {
                return Err(SniError::TooLong);
            }
            let n = stream
                .read(&mut chunk[..room])
                .await
                .map_err(|_| SniError::Incomplete)?;
            if n == 0 {
                return Err(SniError::Incomplete);
            }
            buf.extend_from_slice(&chunk[..n]);
            match parser.push(&buf) {
                Err(SniError::Incomplete) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap_or(Err(SniError::Incomplete));
    (buf, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with `name` as SNI, padded by `pad` bytes of an
    /// extra extension, in records of at most `record` bytes.
    pub(crate) fn hello(name: Option<&str>, pad: usize, record: usize) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = name {
            let n = name.len();
            ext.extend_from_slice(&0u16.to_be_bytes());
            ext.extend_from_slice(&((n + 5) as u16).to_be_bytes());
            ext.extend_from_slice(&((n + 3) as u16).to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&(n as u16).to_be_bytes());
            ext.extend_from_slice(name.as_bytes());
        }
        if pad > 0 {
            ext.extend_from_slice(&21u16.to_be_bytes());
            ext.extend_from_slice(&(pad as u16).to_be_bytes());
            ext.extend(std::iter::repeat_n(0u8, pad));
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&2u16.to_be_bytes());
        body.extend_from_slice(&[0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut handshake = vec![1];
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);
        let mut out = Vec::new();
        for fragment in handshake.chunks(record) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
            out.extend_from_slice(fragment);
        }
        out
    }

    #[test]
    fn finds_the_name_across_records_and_segments() {
        for record in [16384, 100, 7] {
            let h = hello(Some("App.Example.com"), 3000, record);
            assert_eq!(
                server_name(&h),
                Ok(Some("app.example.com".into())),
                "records of {record}"
            );
            for cut in [1, 5, 50, h.len() - 1] {
                assert_eq!(
                    server_name(&h[..cut]),
                    Err(SniError::Incomplete),
                    "cut {cut}"
                );
            }
        }
        assert_eq!(server_name(&hello(None, 0, 16384)), Ok(None));
        // A post-quantum-sized hello (ML-KEM key shares): still parsed.
        assert_eq!(
            server_name(&hello(Some("pq.test"), 9000, 16384)),
            Ok(Some("pq.test".into()))
        );
    }

    #[test]
    fn a_hello_a_byte_at_a_time_is_parsed_in_linear_work() {
        let h = hello(Some("slow.test"), 9000, 300);
        let mut parser = HelloParser::default();
        for end in 1..h.len() {
            assert_eq!(parser.push(&h[..end]), Err(SniError::Incomplete), "{end}");
        }
        assert_eq!(parser.push(&h), Ok(Some("slow.test".into())));
        // Each byte once as it arrives, the message once more to parse it.
        assert!(
            parser.examined() <= 2 * h.len(),
            "{} bytes examined for a {}-byte hello",
            parser.examined(),
            h.len()
        );
    }

    #[test]
    fn rejects_what_is_not_a_client_hello() {
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), Err(SniError::NotTls));
        let mut h = hello(Some("a.test"), 0, 16384);
        h[5] = 2; // a ServerHello
        assert_eq!(server_name(&h), Err(SniError::NotTls));
        let mut h = hello(Some("a.test"), 0, 16384);
        let last = h.len() - 1;
        h[last - 7] = 0xff; // a name length running past the end
        assert!(matches!(server_name(&h), Err(SniError::Malformed(_))));
        let huge = [0x16, 3, 1, 0x40, 0x00, 1, 0xff, 0xff, 0xff];
        assert_eq!(server_name(&huge), Err(SniError::TooLong));
    }
}
