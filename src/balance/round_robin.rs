//! Smooth weighted round robin (nginx's): weights 3:1 give `a a b a`, spreading
//! each backend's turns instead of bunching them.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Backend, Balancer};

/// The schedule is computed once per config generation; a pick is one atomic
/// increment, so the data path takes no lock.
pub struct RoundRobin {
    schedule: Vec<usize>,
    cursor: AtomicUsize,
}

impl RoundRobin {
    pub fn new(backends: &[Backend]) -> RoundRobin {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        RoundRobin {
            schedule: smooth_schedule(&weights),
            cursor: AtomicUsize::new(0),
        }
    }
}

/// One full cycle of smooth weighted round robin: each step adds every weight
/// to its current value, picks the largest, and takes the total from it.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let gcd = weights.iter().copied().fold(0, gcd);
    if gcd == 0 {
        return Vec::new();
    }
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / gcd)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
            .expect("weights is not empty when gcd > 0");
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Balancer for RoundRobin {
    fn pick(&self, _: &[Backend], _: IpAddr, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|k| self.schedule[(start + k) % len])
            .find(|&i| usable(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{backends, client};

    #[test]
    fn schedules_spread_weights() {
        let cases: [(&[u32], &[usize]); 5] = [
            (&[1], &[0]),
            (&[1, 1], &[0, 1]),
            (&[3, 1], &[0, 0, 1, 0]),
            (&[5, 1, 1], &[0, 0, 1, 0, 2, 0, 0]),
            (&[2, 2], &[0, 1]),
        ];
        for (weights, want) in cases {
            assert_eq!(smooth_schedule(weights), want, "weights {weights:?}");
        }
    }

    #[test]
    fn picks_follow_the_schedule_and_skip_unusable() {
        let b = backends(&[3, 1]);
        let rr = RoundRobin::new(&b);
        let picks: Vec<usize> = (0..8)
            .map(|_| rr.pick(&b, client(), &|_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 0, 0, 1, 0]);
        let picks: Vec<usize> = (0..4)
            .map(|_| rr.pick(&b, client(), &|i| i == 1).unwrap())
            .collect();
        assert_eq!(picks, [1, 1, 1, 1]);
        assert_eq!(rr.pick(&b, client(), &|_| false), None);
    }
}
