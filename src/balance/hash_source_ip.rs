//! Consistent hashing of the client address (weighted rendezvous hashing):
//! each backend scores every client, the best usable score wins. No random
//! seed, so a client keeps its backend across reloads, upgrades and restarts,
//! and removing one of n backends moves only the clients it had (about 1/n).

use std::net::IpAddr;

use super::{Backend, Balancer};

pub struct HashSourceIp {
    /// Per backend, a stable hash of its identity (label and address).
    keys: Vec<u64>,
}

impl HashSourceIp {
    pub fn new(backends: &[Backend]) -> HashSourceIp {
        HashSourceIp {
            keys: backends
                .iter()
                .map(|b| fnv1a(format!("{}|{}", b.address, b.addr).as_bytes()))
                .collect(),
        }
    }
}

impl Balancer for HashSourceIp {
    fn pick(
        &self,
        backends: &[Backend],
        client: IpAddr,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let client = match client {
            IpAddr::V4(v4) => fnv1a(&v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => fnv1a(&v4.octets()),
                None => fnv1a(&v6.octets()),
            },
        };
        let mut best: Option<(usize, f64)> = None;
        for (i, (b, key)) in backends.iter().zip(&self.keys).enumerate() {
            if !usable(i) {
                continue;
            }
            let score = score(client, *key, b.weight);
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Weighted rendezvous score: `-w / ln(u)` with `u` uniform in (0, 1) drawn
/// from the pair's hash, so each backend wins in proportion to its weight.
fn score(client: u64, backend: u64, weight: u32) -> f64 {
    let h = splitmix64(client ^ backend.rotate_left(17));
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::backends;

    fn clients() -> impl Iterator<Item = IpAddr> {
        (0..4000u32).map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
    }

    #[test]
    fn same_client_same_backend_across_instances() {
        let b = backends(&[1, 1, 1, 1]);
        let (h1, h2) = (HashSourceIp::new(&b), HashSourceIp::new(&b));
        for c in clients() {
            assert_eq!(h1.pick(&b, c, &|_| true), h2.pick(&b, c, &|_| true));
        }
    }

    #[test]
    fn removing_one_of_n_moves_only_its_clients() {
        let all = backends(&[1, 1, 1, 1, 1]);
        let fewer: Vec<Backend> = all[..4].to_vec();
        let (h_all, h_fewer) = (HashSourceIp::new(&all), HashSourceIp::new(&fewer));
        let mut moved = 0;
        for c in clients() {
            let before = h_all.pick(&all, c, &|_| true).unwrap();
            let after = h_fewer.pick(&fewer, c, &|_| true).unwrap();
            if before != 4 {
                assert_eq!(before, after, "a client of a remaining backend moved");
            } else {
                moved += 1;
            }
        }
        // About 1/5 of 4000 clients were on the removed backend.
        assert!((650..950).contains(&moved), "{moved} moved");
    }

    #[test]
    fn weights_and_unusable_backends() {
        let b = backends(&[3, 1]);
        let h = HashSourceIp::new(&b);
        let on_first = clients()
            .filter(|&c| h.pick(&b, c, &|_| true) == Some(0))
            .count();
        assert!((2800..3200).contains(&on_first), "{on_first}");
        for c in clients().take(50) {
            assert_eq!(h.pick(&b, c, &|i| i == 1), Some(1));
        }
    }
}
