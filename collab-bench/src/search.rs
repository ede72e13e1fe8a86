//! The sustainable rate (SPEC §2): the highest request rate at which at least 90% of requests
//! meet their deadline, found by bisection over trials.

use crate::serving::Trial;

/// The fraction on time a rate must reach to count as sustained (SPEC §2).
pub const TARGET: f64 = 0.9;

/// A bisection step that fails with at least this fraction on time is a near miss: the rate
/// is tried once more on fresh seeds and judged on both looks pooled, because one slow spell
/// of a shared machine can sink a trial, and a bisection never returns to a rate above a
/// failure. Clear failures (overload) are not repeated.
pub const CONFIRM_ABOVE: f64 = 0.7;

/// Bisection (in log space) for the highest rate with at least [`TARGET`] of requests on time,
/// between a sixteenth and twice the capacity guess (the top raised x4 up to three times while
/// it is sustained), driven one trial at a time so that several searches can advance in
/// lockstep.
///
/// A near miss in the bisection (see [`CONFIRM_ABOVE`]) is looked at twice before the top
/// moves down.
///
/// The answer ([`RateSearch::crossing`]) interpolates the fraction on time, linearly in log
/// rate, between the highest sustained rate and the lowest failed rate above it. Two schemes
/// whose searches try the same rates and agree at each one would otherwise report the same
/// bracket, a ratio of exactly 1 whatever their margins were.
#[derive(Clone, Debug)]
pub struct RateSearch {
    lo: f64,
    hi: f64,
    steps_left: usize,
    /// The highest rate seen to meet the target, with its trial.
    best: Option<(f64, Trial)>,
    /// The lowest rate above `best` seen to miss the target, with its fraction on time.
    failed: Option<(f64, f64)>,
    /// Set when the search is over (`best` then holds its answer, if any).
    done: bool,
    tried_lo: bool,
    tried_hi: bool,
    /// How many more times a sustained top may be raised (x4 each).
    raises_left: usize,
    /// The top was still sustained after every raise: the answer is only a lower bound.
    capped: bool,
    /// The first look at a near miss whose second look is due.
    first_look: Option<Trial>,
    /// A single trial at `lo`, no search.
    once: bool,
}

impl RateSearch {
    /// A search around `guess` (requests per second) with `steps` bisection steps.
    pub fn new(guess: f64, steps: usize) -> Self {
        Self {
            lo: guess / 16.0,
            hi: guess * 2.0,
            steps_left: steps,
            best: None,
            failed: None,
            done: false,
            tried_lo: false,
            tried_hi: false,
            raises_left: 3,
            capped: false,
            first_look: None,
            once: false,
        }
    }

    /// No search: one (pooled) trial at `rate`, whose result is the answer: `rate` if it was
    /// sustained, else 0.
    pub fn once(rate: f64) -> Self {
        Self {
            lo: rate,
            hi: rate,
            once: true,
            ..Self::new(rate, 0)
        }
    }

    /// Which look at [`RateSearch::next_rate`] the next trial is: 0, or 1 for the second look
    /// at a near miss, which must run on fresh seeds.
    pub fn look(&self) -> u64 {
        u64::from(self.first_look.is_some())
    }

    /// The next rate to try, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        if self.done {
            None
        } else if !self.tried_lo {
            Some(self.lo)
        } else if !self.tried_hi {
            Some(self.hi)
        } else {
            Some((self.lo * self.hi).sqrt())
        }
    }

    /// Records the (pooled) trial at `rate`, the rate [`RateSearch::next_rate`] gave.
    pub fn record(&mut self, rate: f64, t: Trial) {
        let second_look = self.first_look.is_some();
        let t = match self.first_look.take() {
            Some(first) => first.pooled(t),
            None => t,
        };
        let ok = t.met() >= TARGET;
        if !self.tried_lo {
            self.tried_lo = true;
            self.done = self.once;
            if ok {
                self.best = Some((rate, t));
            } else {
                // Even a sixteenth of the guess misses.
                self.failed = Some((rate, t.met()));
                self.done = true;
            }
            return;
        }
        if !self.tried_hi {
            if ok && self.raises_left > 0 {
                // The top was sustained: it becomes the floor and the top moves up.
                self.raises_left -= 1;
                self.lo = rate;
                self.best = Some((rate, t));
                self.hi = rate * 4.0;
                return;
            }
            self.tried_hi = true;
            if ok {
                self.best = Some((rate, t));
                self.capped = true;
                self.done = true;
                return;
            }
            self.failed = Some((rate, t.met()));
        } else {
            if !ok && !second_look && t.met() >= CONFIRM_ABOVE {
                self.first_look = Some(t);
                return;
            }
            if ok {
                self.lo = rate;
                self.best = Some((rate, t));
            } else {
                self.hi = rate;
                self.failed = Some((rate, t.met()));
            }
            self.steps_left = self.steps_left.saturating_sub(1);
        }
        if self.steps_left == 0 {
            self.done = true;
        }
    }

    /// Whether the top of the search was still sustained after every raise: the answer is then
    /// only a lower bound on the sustainable rate.
    pub fn capped(&self) -> bool {
        self.capped
    }

    /// The highest sustained rate tried and its trial (rate 0 and an empty trial if none was).
    pub fn best(&self) -> (f64, Trial) {
        self.best.unwrap_or((0.0, Trial::default()))
    }

    /// Where the fraction on time crosses [`TARGET`]: interpolated linearly in log rate
    /// between the highest sustained rate and the lowest failed rate above it; the highest
    /// sustained rate itself when the search was capped or nothing above it failed; 0 when
    /// nothing was sustained.
    pub fn crossing(&self) -> f64 {
        let Some((lo, t)) = self.best else {
            return 0.0;
        };
        match self.failed {
            Some((hi, met_hi)) if !self.capped && hi > lo && t.met() > met_hi => {
                let w = ((t.met() - TARGET) / (t.met() - met_hi)).clamp(0.0, 1.0);
                (lo * (hi / lo).powf(w)).clamp(lo, hi)
            }
            _ => lo,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frac(met: f64) -> Trial {
        Trial::on_time(1000, (met * 1000.0).round() as usize)
    }

    /// A search driven by a scheme whose fraction on time falls linearly from 1 at rate 0 to
    /// 0 at rate `2 * knee` (so it crosses 0.9 at `0.2 * knee`).
    fn drive(guess: f64, knee: f64, steps: usize) -> RateSearch {
        let mut s = RateSearch::new(guess, steps);
        let mut tries = 0;
        while let Some(rate) = s.next_rate() {
            let met = (1.0 - rate / (2.0 * knee)).clamp(0.0, 1.0);
            s.record(rate, frac(met));
            tries += 1;
            assert!(tries < 50, "the search ends");
        }
        s
    }

    #[test]
    fn the_crossing_lies_in_the_final_bracket_and_near_the_true_one() {
        for knee in [5.0, 40.0, 300.0] {
            let s = drive(10.0, knee, 7);
            let (best, t) = s.best();
            assert!(t.met() >= TARGET, "best is sustained");
            let x = s.crossing();
            assert!(x >= best, "crossing {x} below the sustained {best}");
            let truth = 0.2 * knee;
            assert!(
                (x / truth - 1.0).abs() < 0.02,
                "knee {knee}: crossing {x} against {truth}"
            );
        }
    }

    #[test]
    fn nothing_sustained_gives_zero_and_a_capped_search_its_top() {
        let s = drive(1000.0, 1.0, 5); // even guess/16 = 62.5 fails
        assert_eq!(s.crossing(), 0.0);
        assert_eq!(s.best().0, 0.0);
        let s = drive(1.0, 1e6, 5); // every rate is sustained: the top is raised 3 times
        let top = 2.0 * 4f64.powi(3);
        assert!((s.crossing() - top).abs() < 1e-9, "{}", s.crossing());
    }

    #[test]
    fn once_tries_one_rate() {
        for (met, want) in [(0.95, 7.5), (0.5, 0.0)] {
            let mut s = RateSearch::once(7.5);
            assert_eq!(s.next_rate(), Some(7.5));
            s.record(7.5, frac(met));
            assert!(s.next_rate().is_none());
            assert_eq!(s.crossing(), want);
        }
    }

    #[test]
    fn a_near_miss_is_looked_at_twice_and_judged_pooled() {
        let mut s = RateSearch::new(10.0, 3);
        s.record(s.next_rate().unwrap(), frac(1.0));
        s.record(s.next_rate().unwrap(), frac(0.1)); // 20: overload
        let mid = s.next_rate().unwrap();
        assert_eq!(s.look(), 0);
        s.record(mid, frac(0.85)); // a near miss
        assert_eq!(s.next_rate(), Some(mid), "the same rate again");
        assert_eq!(s.look(), 1, "on fresh seeds");
        s.record(mid, frac(0.97)); // pooled: 0.91, sustained
        assert_eq!(s.look(), 0);
        assert_eq!(s.best().0, mid);
        assert!((s.best().1.met() - 0.91).abs() < 1e-9);
        let up = s.next_rate().unwrap();
        assert!(up > mid, "the search moves up");
        s.record(up, frac(0.3)); // a clear failure: no second look
        assert_eq!(s.look(), 0);
        let next = s.next_rate().unwrap();
        assert!(next > mid && next < up);
        s.record(next, frac(0.8));
        s.record(next, frac(0.8)); // pooled 0.8: the failure stands
        assert!(s.next_rate().is_none(), "three steps taken");
        assert_eq!(s.best().0, mid);
    }

    #[test]
    fn same_rates_with_different_margins_give_different_crossings() {
        let mut a = RateSearch::new(10.0, 1);
        let mut b = RateSearch::new(10.0, 1);
        for (rate, ma, mb) in [(0.625, 1.0, 1.0), (20.0, 0.5, 0.5), (3.54, 0.95, 0.91)] {
            assert_eq!(
                a.next_rate().map(|r| (r * 100.0).round()),
                Some((rate * 100.0f64).round())
            );
            a.record(a.next_rate().unwrap(), frac(ma));
            b.record(b.next_rate().unwrap(), frac(mb));
        }
        assert!(a.next_rate().is_none() && b.next_rate().is_none());
        assert_eq!(a.best().0, b.best().0, "the same bracket");
        assert!(
            a.crossing() > b.crossing(),
            "the larger margin crosses later"
        );
    }
}
