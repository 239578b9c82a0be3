//! Memory given back to the kernel after a wave of connections ends.
//!
//! Every connection's task and socket registrations come from the C
//! allocator, which keeps what they free for later: after 5,000 idle
//! connections close, the process would stay at its peak. When the number
//! of open connections has fallen by half (and by a few hundred) since its
//! last peak, the owner asks glibc to return its free pages (`malloc_trim`,
//! which walks the heap: once per wave, never per connection).

/// Open connections below which nothing is worth returning.
const WAVE: usize = 256;

/// Follows the number of open connections; says when a trim is due.
#[derive(Debug, Default)]
pub struct Waves {
    peak: usize,
}

impl Waves {
    /// Records `open` connections now and the most open at once since the
    /// last call (`peak`); true when enough of a peak has ended to give
    /// memory back (the peak then starts again from `open`).
    pub fn ended(&mut self, open: usize, peak: usize) -> bool {
        self.peak = self.peak.max(open).max(peak);
        if self.peak >= open + WAVE && open <= self.peak / 2 {
            self.peak = open;
            return true;
        }
        false
    }
}

/// Returns the allocator's free memory to the kernel (glibc only).
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own
    // arenas; it takes no pointer and has no precondition.
    #[allow(unsafe_code)]
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_follows_each_halving_of_a_peak_not_every_close() {
        let mut waves = Waves::default();
        let seen: Vec<bool> = [0, 100, 5_000, 4_000, 2_600, 2_400, 2_300, 0, 0, 200, 100]
            .iter()
            .map(|&open| waves.ended(open, open))
            .collect();
        // 5,000 → 2,400: half gone; 2,400 → 0: half again; a small peak
        // (200) is not worth a walk of the heap.
        assert_eq!(
            seen,
            [
                false, false, false, false, false, true, false, true, false, false, false
            ]
        );
        // A wave that came and went between two looks still counts.
        let mut waves = Waves::default();
        assert!(waves.ended(0, 1_000));
    }
}
