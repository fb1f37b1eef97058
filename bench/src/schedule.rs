//! Open-loop send schedules: every message's intended send time is fixed before the run starts.
//!
//! A load generator that waits for one reply before sending the next request hides a stalled server's latency
//! (coordinated omission): while the server stalls nobody sends, so nobody measures. Here message `g` of a run
//! at `rate` messages per second is *intended* to leave at `start + g / rate`, whatever happened before, and its
//! latency is measured from that intended time. A sender that falls behind sends its overdue messages at once,
//! each stamped with its own intended time, so the delay it suffered is counted.
//!
//! [`Schedule`] is the arithmetic (pure, unit-tested); [`Pacer`] is a thread that releases the messages of a
//! schedule as their times come, to any number of sender tasks, without unbounded queues: a sender only learns
//! "you may send up to your message `k`" and computes the intended times itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Nanoseconds since the Unix epoch, from the system clock (comparable across processes on one machine).
pub fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// A fixed-rate schedule of `count` messages spread round-robin over `senders` senders.
///
/// Message `g` (global index, `0..count`) is intended at `start_ns + g * 1e9 / rate` and belongs to sender
/// `g % senders`, as that sender's message number `g / senders`. The aggregate is evenly spaced at `rate`.
///
/// ```
/// use herald_bench::schedule::Schedule;
/// let s = Schedule { start_ns: 1_000, rate: 1_000.0, count: 10, senders: 2 };
/// assert_eq!(s.intended_ns(3), 1_000 + 3_000_000);
/// assert_eq!(s.sender_of(3), (1, 1));
/// assert_eq!(s.global(1, 1), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Intended time of message 0 (Unix nanoseconds).
    pub start_ns: u64,
    /// Messages per second, all senders together (must be > 0).
    pub rate: f64,
    /// Messages in the run.
    pub count: u64,
    /// Senders sharing the run (at least 1).
    pub senders: u64,
}

impl Schedule {
    /// A schedule of `duration` at `rate` (the count is rounded down, at least 1).
    pub fn for_duration(start_ns: u64, rate: f64, duration: Duration, senders: u64) -> Self {
        let count = ((rate * duration.as_secs_f64()) as u64).max(1);
        Self { start_ns, rate, count, senders: senders.max(1) }
    }

    /// The interval between two consecutive messages, in nanoseconds (fractional).
    pub fn interval_ns(&self) -> f64 {
        1e9 / self.rate
    }

    /// The intended send time of global message `g`.
    pub fn intended_ns(&self, g: u64) -> u64 {
        self.start_ns + (g as f64 * self.interval_ns()) as u64
    }

    /// The intended time of the end of the run (one interval after the last message).
    pub fn end_ns(&self) -> u64 {
        self.intended_ns(self.count)
    }

    /// `(sender, k)`: which sender sends global message `g`, as its `k`-th message.
    pub fn sender_of(&self, g: u64) -> (u64, u64) {
        (g % self.senders, g / self.senders)
    }

    /// The global index of sender `sender`'s `k`-th message.
    pub fn global(&self, sender: u64, k: u64) -> u64 {
        k * self.senders + sender
    }

    /// How many messages sender `sender` sends in the whole run.
    pub fn count_of(&self, sender: u64) -> u64 {
        self.released_to(sender, self.count)
    }

    /// How many of sender `sender`'s messages are among the first `due` global messages.
    pub fn released_to(&self, sender: u64, due: u64) -> u64 {
        if due <= sender { 0 } else { (due - sender).div_ceil(self.senders) }
    }

    /// How many global messages are due at time `now_ns` (those with an intended time ≤ `now_ns`), at most
    /// `count`.
    pub fn due_at(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        let elapsed = (now_ns - self.start_ns) as f64;
        // Floating point may put a message exactly on `now` one either side; fix it up with the exact formula.
        let mut due = ((elapsed / self.interval_ns()) as u64 + 1).min(self.count);
        while due > 0 && self.intended_ns(due - 1) > now_ns {
            due -= 1;
        }
        while due < self.count && self.intended_ns(due) <= now_ns {
            due += 1;
        }
        due
    }
}

/// One sender's share of a paced run: how many of its messages may be sent now.
#[derive(Debug, Default)]
pub struct Slot {
    released: AtomicU64,
    notify: Notify,
}

impl Slot {
    /// How many of this sender's messages have been released so far.
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Acquire)
    }

    /// Waits until more than `sent` messages are released (returns at once if they already are).
    pub async fn wait_beyond(&self, sent: u64) -> u64 {
        loop {
            let notified = self.notify.notified();
            let r = self.released();
            if r > sent {
                return r;
            }
            notified.await;
        }
    }

    fn release(&self, n: u64) {
        if self.released.swap(n, Ordering::AcqRel) != n {
            self.notify.notify_one();
        }
    }
}

/// Releases the messages of a [`Schedule`] at their intended times to the senders' [`Slot`]s.
///
/// It runs on its own thread, sleeping with the operating system's timer (tens of microseconds of precision,
/// where tokio's timer has one millisecond), so the send times do not bunch up at millisecond boundaries.
#[derive(Debug)]
pub struct Pacer {
    slots: Arc<[Slot]>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pacer {
    /// Starts releasing `schedule` to `schedule.senders` fresh slots.
    pub fn start(schedule: Schedule) -> Self {
        let slots: Arc<[Slot]> = (0..schedule.senders).map(|_| Slot::default()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (slots.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || pace(schedule, &s, &st))
            .expect("spawning the pacer thread");
        Self { slots, stop, thread: Some(thread) }
    }

    /// The senders' slots, indexed by sender.
    pub fn slots(&self) -> &Arc<[Slot]> {
        &self.slots
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pace(schedule: Schedule, slots: &[Slot], stop: &AtomicBool) {
    let mut released = 0;
    while released < schedule.count && !stop.load(Ordering::Acquire) {
        let now = unix_nanos();
        let due = schedule.due_at(now);
        if due > released {
            let senders = schedule.senders.min(due - released);
            // Only the senders whose count changed need a wake-up.
            for i in 0..senders {
                let sender = (released + i) % schedule.senders;
                slots[sender as usize].release(schedule.released_to(sender, due));
            }
            released = due;
        }
        if released < schedule.count {
            let next = schedule.intended_ns(released);
            let wait = next.saturating_sub(unix_nanos());
            // Sleep in slices so that a stop request is seen within 50 ms.
            std::thread::sleep(Duration::from_nanos(wait.min(50_000_000)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_evenly_spaced_and_fixed_up_front() {
        let s = Schedule { start_ns: 5_000, rate: 3.0, count: 7, senders: 3 };
        let times: Vec<u64> = (0..7).map(|g| s.intended_ns(g)).collect();
        assert_eq!(times[0], 5_000);
        assert_eq!(times[1], 5_000 + 333_333_333);
        assert_eq!(times[3], 5_000 + 1_000_000_000);
        assert!(times.windows(2).all(|w| w[1] > w[0]));
        assert_eq!(s.end_ns(), 5_000 + 2_333_333_333);
    }

    #[test]
    fn round_robin_shares_add_up() {
        let s = Schedule { start_ns: 0, rate: 100.0, count: 10, senders: 4 };
        assert_eq!((0..4).map(|i| s.count_of(i)).collect::<Vec<_>>(), vec![3, 3, 2, 2]);
        for g in 0..10 {
            let (sender, k) = s.sender_of(g);
            assert_eq!(s.global(sender, k), g);
        }
        // After 5 global messages: senders 0 has g=0,4; sender 1 has g=1; sender 3 has g=3.
        assert_eq!(s.released_to(0, 5), 2);
        assert_eq!(s.released_to(1, 5), 1);
        assert_eq!(s.released_to(3, 5), 1);
        assert_eq!(s.released_to(3, 3), 0);
    }

    #[test]
    fn due_counts_messages_whose_time_has_come() {
        let s = Schedule { start_ns: 1_000_000, rate: 1_000.0, count: 5, senders: 1 };
        assert_eq!(s.due_at(0), 0);
        assert_eq!(s.due_at(999_999), 0);
        assert_eq!(s.due_at(1_000_000), 1);
        assert_eq!(s.due_at(1_999_999), 1);
        assert_eq!(s.due_at(2_000_000), 2);
        assert_eq!(s.due_at(u64::MAX / 2), 5);
        // A rate whose interval is not a whole number of nanoseconds.
        let s = Schedule { start_ns: 0, rate: 3.0, count: 100, senders: 1 };
        for g in 0..100 {
            assert_eq!(s.due_at(s.intended_ns(g)), g + 1, "message {g}");
            if s.intended_ns(g) > 0 {
                assert_eq!(s.due_at(s.intended_ns(g) - 1), g, "just before message {g}");
            }
        }
    }

    #[test]
    fn for_duration_rounds_down_but_sends_something() {
        let s = Schedule::for_duration(0, 50_000.0, Duration::from_secs(2), 0);
        assert_eq!((s.count, s.senders), (100_000, 1));
        assert_eq!(Schedule::for_duration(0, 0.1, Duration::from_secs(1), 1).count, 1);
    }

    #[tokio::test]
    async fn pacer_releases_every_message_by_its_time() {
        let start = unix_nanos() + 5_000_000;
        let s = Schedule { start_ns: start, rate: 2_000.0, count: 40, senders: 3 };
        let pacer = Pacer::start(s);
        let slots = pacer.slots().clone();
        let mut totals = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            let mut seen = 0;
            while seen < s.count_of(i as u64) {
                seen = tokio::time::timeout(Duration::from_secs(5), slot.wait_beyond(seen))
                    .await
                    .expect("the pacer releases within 5 s");
            }
            totals.push(seen);
        }
        assert_eq!(totals, vec![14, 13, 13]);
        // Not before its time: the last message is intended 19.5 ms after the start.
        assert!(unix_nanos() >= s.intended_ns(39));
    }
}
