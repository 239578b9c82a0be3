//! Weighted random choice.

use std::net::IpAddr;

use super::{Backend, Balancer, weighted_random};

pub struct Random;

impl Random {
    pub fn new(_: &[Backend]) -> Random {
        Random
    }
}

impl Balancer for Random {
    fn pick(
        &self,
        backends: &[Backend],
        _: IpAddr,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        weighted_random(backends, usable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{backends, client};

    #[test]
    fn respects_weights_roughly() {
        let b = backends(&[3, 1]);
        let mut seen = [0u32; 2];
        for _ in 0..8000 {
            seen[Random.pick(&b, client(), &|_| true).unwrap()] += 1;
        }
        // 6000 expected; 5 standard deviations is about ±200.
        assert!((5700..6300).contains(&seen[0]), "{seen:?}");
        assert_eq!(Random.pick(&b, client(), &|i| i == 1), Some(1));
        assert_eq!(Random.pick(&b, client(), &|_| false), None);
    }
}
