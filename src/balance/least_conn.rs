//! Least connections, weighted: the backend with the fewest active
//! connections per unit of weight; ties rotate so equal backends share.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Backend, Balancer, lighter};

#[derive(Default)]
pub struct LeastConn {
    rotation: AtomicUsize,
}

impl Balancer for LeastConn {
    fn pick(
        &self,
        backends: &[Backend],
        _: IpAddr,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let len = backends.len();
        if len == 0 {
            return None;
        }
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<usize> = None;
        for k in 0..len {
            let i = (start + k) % len;
            if !usable(i) {
                continue;
            }
            if best.is_none_or(|b| lighter(&backends[i], &backends[b])) {
                best = Some(i);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{backends, client};

    #[test]
    fn prefers_the_least_loaded_relative_to_weight() {
        let b = backends(&[1, 1, 2]);
        b[0].state.active.store(3, Ordering::Relaxed);
        b[1].state.active.store(1, Ordering::Relaxed);
        b[2].state.active.store(4, Ordering::Relaxed);
        let lc = LeastConn::default();
        for _ in 0..5 {
            assert_eq!(lc.pick(&b, client(), &|_| true), Some(1));
        }
        assert_eq!(lc.pick(&b, client(), &|i| i != 1), Some(2));
    }

    #[test]
    fn ties_rotate() {
        let b = backends(&[1, 1, 1]);
        let lc = LeastConn::default();
        let mut seen = [0; 3];
        for _ in 0..30 {
            seen[lc.pick(&b, client(), &|_| true).unwrap()] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
    }
}
