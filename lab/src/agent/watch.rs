//! Watches an agent's counters from outside, as Prometheus would: a scrape every interval on a
//! thread of its own, through restarts and crashes (a failed scrape is a gap, not an error),
//! recording every counter sample that was ever lower than one scraped before it.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{http::Client, prom::Scrape};

/// What the watch saw.
#[derive(Debug, Default, Clone)]
pub struct Watched {
    /// Scrapes that answered.
    pub scrapes: usize,
    /// Scrapes that failed (the agent down).
    pub gaps: usize,
    /// Every decrease: `series: before → after`.
    pub decreases: Vec<String>,
    /// The highest value each counter series reached.
    pub highest: BTreeMap<String, f64>,
}

impl Watched {
    /// Folds one scrape in: every sample of a counter family (`# TYPE … counter`).
    fn add(&mut self, text: &str) {
        let Ok(scrape) = Scrape::parse(text) else {
            self.gaps += 1;
            return;
        };
        let counters: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        self.scrapes += 1;
        for s in scrape.samples.iter().filter(|s| counters.contains(&s.name.as_str())) {
            let series = crate::prom::format_sample(s);
            let series = series.rsplit_once(' ').map_or(series.as_str(), |(k, _)| k).to_string();
            let highest = self.highest.entry(series.clone()).or_insert(s.value);
            if s.value < *highest {
                self.decreases.push(format!("{series}: {highest} → {}", s.value));
            } else {
                *highest = s.value;
            }
        }
    }
}

/// A running watch; [`CounterWatch::finish`] stops it and returns what it saw.
pub struct CounterWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Watched>>,
    thread: Option<JoinHandle<()>>,
}

impl CounterWatch {
    /// Scrapes `url` with `client` (bound to the agent's namespace) every `interval` until
    /// finished.
    pub fn start(client: Client, url: String, interval: Duration) -> CounterWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Watched::default()));
        let thread = {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let scraped = client.get_ok(&url);
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    match scraped {
                        Ok(text) => seen.add(&text),
                        Err(_) => seen.gaps += 1,
                    }
                    drop(seen);
                    std::thread::sleep(interval);
                }
            })
        };
        CounterWatch { stop, seen, thread: Some(thread) }
    }

    /// What it saw so far.
    pub fn seen(&self) -> Watched {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn finish(mut self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen()
    }
}

impl Drop for CounterWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_counter_is_a_decrease_and_gauges_are_not_watched() {
        let mut w = Watched::default();
        let scrape = |bytes: u64, gauge: u64| {
            format!(
                "# TYPE gwsensor_client_bytes_total counter\n\
                 gwsensor_client_bytes_total{{client=\"a\",direction=\"upload\"}} {bytes}\n\
                 # TYPE gwsensor_flows_tracked gauge\ngwsensor_flows_tracked {gauge}\n"
            )
        };
        w.add(&scrape(10, 5));
        w.add(&scrape(12, 1));
        assert!(w.decreases.is_empty(), "{:?}", w.decreases);
        w.add(&scrape(11, 9));
        assert_eq!(
            w.decreases,
            vec![
                "gwsensor_client_bytes_total{client=\"a\",direction=\"upload\"}: 12 → 11"
                    .to_string()
            ]
        );
        assert_eq!(w.scrapes, 3);
    }
}
