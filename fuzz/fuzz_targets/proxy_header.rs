//! Any bytes: the PROXY header parser answers, never panics, and a header it
//! accepts encodes back (v1 and v2) to one it reads with the same source
//! and destination.
#![no_main]

use baton::proxy::proxy_protocol::{Header, encode_v1, encode_v2, parse};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fuzz_target!(|data: &[u8]| {
    if let Ok((header, len)) = parse(data) {
        assert!(len <= data.len());
        if let Header::Proxy {
            source,
            destination,
        } = header
        {
            for encoded in [encode_v1(source, destination), encode_v2(source, destination)] {
                let (again, n) = parse(&encoded).expect("our own header parses");
                assert_eq!(n, encoded.len());
                match again {
                    Header::Proxy {
                        source: s,
                        destination: d,
                    } => {
                        // An IPv4-mapped IPv6 address is the same client and
                        // is sent as IPv4 on purpose (as HAProxy does).
                        assert_eq!(canonical(s), canonical(source), "source survives encoding");
                        assert_eq!(
                            canonical(d),
                            canonical(destination),
                            "destination survives encoding"
                        );
                    }
                    other => panic!("{source} -> {destination} read back as {other:?}"),
                }
            }
        }
    }
});
