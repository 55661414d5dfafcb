//! Waiting on things that settle on their own time (a service starting, an agent's next poll,
//! counters catching up), with a deadline and an error that says what was awaited.

use std::time::{Duration, Instant};

use anyhow::bail;

/// Calls `f` every `interval` until it returns Some, or fails after `timeout` with "timed out
/// after … waiting for `what`". An error from `f` ends the wait at once.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(interval);
    }
}

/// How long [`settle`] looks.
#[derive(Debug, Clone, Copy)]
pub struct Settle {
    /// Until the first match.
    pub timeout: Duration,
    /// How long a match must then hold: a late change (a double count at the next poll) must
    /// not slip through.
    pub hold: Duration,
    /// Between two looks.
    pub interval: Duration,
}

/// What [`settle`] saw last when it gave up: the observation and what was wrong with it.
#[derive(Debug)]
pub struct Mismatch<T> {
    pub last: T,
    pub complaints: Vec<String>,
}

/// Observes until `check` finds nothing wrong, then keeps observing for `hold`; returns the
/// last observation, or the [`Mismatch`] if `check` complains after the timeout or at any
/// time after a first match. An error from `observe` ends the wait at once.
pub fn settle<T>(
    timing: Settle,
    mut observe: impl FnMut() -> anyhow::Result<T>,
    check: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<Result<T, Mismatch<T>>> {
    let deadline = Instant::now() + timing.timeout;
    let mut matched_since: Option<Instant> = None;
    loop {
        let seen = observe()?;
        let complaints = check(&seen);
        if complaints.is_empty() {
            let since = *matched_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= timing.hold {
                return Ok(Ok(seen));
            }
        } else if matched_since.is_some() || Instant::now() > deadline {
            return Ok(Err(Mismatch { last: seen, complaints }));
        }
        std::thread::sleep(timing.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Settle = Settle {
        timeout: Duration::from_millis(200),
        hold: Duration::from_millis(30),
        interval: Duration::from_millis(5),
    };

    #[test]
    fn settles_once_a_match_holds_and_catches_a_late_change() {
        let mut n = 0;
        let got = settle(QUICK, || Ok(n), |_| vec![]).unwrap().unwrap();
        assert_eq!(got, 0);
        // Matches from the third look on: settled.
        let got = settle(
            QUICK,
            || {
                n += 1;
                Ok(n)
            },
            |v| if *v >= 3 { vec![] } else { vec![format!("{v} < 3")] },
        )
        .unwrap()
        .unwrap();
        assert!(got >= 3);
        // Matches once, then changes: the change is reported at once.
        let mut looks = 0;
        let m = settle(
            QUICK,
            || {
                looks += 1;
                Ok(looks)
            },
            |v| if *v == 1 { vec![] } else { vec![format!("look {v}")] },
        )
        .unwrap()
        .unwrap_err();
        assert_eq!((m.last, m.complaints), (2, vec!["look 2".to_string()]));
        // Never matches: the last complaint after the timeout.
        let m = settle(QUICK, || Ok(()), |_| vec!["no".into()]).unwrap().unwrap_err();
        assert_eq!(m.complaints, ["no"]);
    }

    #[test]
    fn until_returns_the_value_or_says_what_it_waited_for() {
        let mut n = 0;
        let v = until("n to reach 3", QUICK.timeout, QUICK.interval, || {
            n += 1;
            Ok((n >= 3).then_some(n))
        })
        .unwrap();
        assert_eq!(v, 3);
        let e = until("never", QUICK.timeout, QUICK.interval, || Ok(None::<()>)).unwrap_err();
        assert!(e.to_string().contains("waiting for never"), "{e}");
    }
}
