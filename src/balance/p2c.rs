//! Power of two choices: two weighted random candidates, the less loaded one
//! wins. Nearly as good as least_conn without scanning every backend.

use std::net::IpAddr;

use super::{Backend, Balancer, lighter, weighted_random};

pub struct PowerOfTwo;

impl PowerOfTwo {
    pub fn new(_: &[Backend]) -> PowerOfTwo {
        PowerOfTwo
    }
}

impl Balancer for PowerOfTwo {
    fn pick(
        &self,
        backends: &[Backend],
        _: IpAddr,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let first = weighted_random(backends, usable)?;
        let second = weighted_random(backends, &|i| i != first && usable(i));
        match second {
            Some(s) if lighter(&backends[s], &backends[first]) => Some(s),
            _ => Some(first),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{backends, client};
    use std::sync::atomic::Ordering;

    #[test]
    fn never_picks_the_busier_of_two() {
        let b = backends(&[1, 1]);
        b[0].state.active.store(10, Ordering::Relaxed);
        for _ in 0..100 {
            assert_eq!(PowerOfTwo.pick(&b, client(), &|_| true), Some(1));
        }
    }

    #[test]
    fn the_busiest_of_many_is_never_chosen() {
        let b = backends(&[1, 1, 1, 1]);
        b[2].state.active.store(10, Ordering::Relaxed);
        for _ in 0..200 {
            assert_ne!(PowerOfTwo.pick(&b, client(), &|_| true), Some(2));
        }
    }
}
