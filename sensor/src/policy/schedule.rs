//! Time windows (quiet hours, weekdays) that restrict a rule to the traffic inside them.

use jiff::{Timestamp, civil::Weekday, tz::TimeZone};
use serde::{Deserialize, Deserializer};

use super::{
    error::PolicyError,
    values::{OneOrMany, from_text},
};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// IANA name (Europe/Berlin); the system's time zone when left out.
    #[serde(default)]
    pub timezone: Option<Zone>,
    pub windows: Vec<Window>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Days the window starts on; every day when left out.
    #[serde(default)]
    pub days: OneOrMany<Day>,
    /// `HH:MM`; `from` after `to` crosses midnight (22:00–06:00); equal means the whole day.
    pub from: TimeOfDay,
    pub to: TimeOfDay,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Zone(pub TimeZone);

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |name| {
            TimeZone::get(name).map(Zone).map_err(|_| PolicyError::TimeZone(name.into()))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day(pub Weekday);

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |name| {
            let day = match name.to_ascii_lowercase().get(..3).unwrap_or("") {
                "mon" => Weekday::Monday,
                "tue" => Weekday::Tuesday,
                "wed" => Weekday::Wednesday,
                "thu" => Weekday::Thursday,
                "fri" => Weekday::Friday,
                "sat" => Weekday::Saturday,
                "sun" => Weekday::Sunday,
                _ => return Err(PolicyError::Day(name.into())),
            };
            Ok(Day(day))
        })
    }
}

/// Minutes after midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeOfDay(pub u32);

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |text| {
            let parsed = text
                .split_once(':')
                .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)));
            match parsed {
                Some((h, m)) if (h < 24 && m < 60) || (h == 24 && m == 0) => {
                    Ok(TimeOfDay(h * 60 + m))
                }
                _ => Err(PolicyError::TimeOfDay(text.into())),
            }
        })
    }
}

impl Schedule {
    /// Whether the Unix second `unix` falls inside one of the windows.
    pub fn contains(&self, unix: u64) -> bool {
        let tz = self.timezone.as_ref().map(|z| z.0.clone()).unwrap_or_else(TimeZone::system);
        let Ok(ts) = Timestamp::from_second(unix as i64) else {
            return false;
        };
        let local = ts.to_zoned(tz);
        let minute = local.hour() as u32 * 60 + local.minute() as u32;
        let today = local.weekday();
        let yesterday = today.previous();
        self.windows.iter().any(|w| {
            let on = |day: Weekday| w.days.any_or_empty(|d| d.0 == day);
            let (from, to) = (w.from.0, w.to.0);
            if from == to {
                on(today)
            } else if from < to {
                on(today) && (from..to).contains(&minute)
            } else {
                // Crosses midnight: the evening part belongs to today, the morning to yesterday.
                (on(today) && minute >= from) || (on(yesterday) && minute < to)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(yaml: &str) -> Schedule {
        serde_yaml::from_str(yaml).unwrap()
    }

    /// 2026-11-23 is a Monday.
    fn at(hh: u32, mm: u32, day_offset: u64) -> u64 {
        let monday_utc: u64 = 1_795_392_000; // 2026-11-23T00:00:00Z
        monday_utc + day_offset * 86_400 + (hh as u64) * 3600 + (mm as u64) * 60
    }

    #[test]
    fn reference_date_is_a_monday() {
        let z = Timestamp::from_second(at(0, 0, 0) as i64).unwrap().to_zoned(TimeZone::UTC);
        assert_eq!(z.weekday(), Weekday::Monday);
        assert_eq!((z.year(), z.month(), z.day()), (2026, 11, 23));
    }

    #[test]
    fn quiet_hours_cross_midnight() {
        let s =
            schedule("timezone: UTC\nwindows: [{days: [fri], from: \"22:00\", to: \"06:00\"}]\n");
        assert!(!s.contains(at(21, 59, 4)), "Friday 21:59");
        assert!(s.contains(at(22, 0, 4)), "Friday 22:00");
        assert!(s.contains(at(5, 59, 5)), "Saturday 05:59 belongs to Friday night");
        assert!(!s.contains(at(6, 0, 5)), "Saturday 06:00");
        assert!(!s.contains(at(23, 0, 5)), "Saturday night is not a Friday");
    }

    #[test]
    fn weekdays_and_time_zones() {
        let s = schedule(
            "timezone: Asia/Shanghai\nwindows: [{days: [mon, tue, wed, thu, fri], from: \"09:00\", to: \"17:00\"}]\n",
        );
        // 09:30 in Shanghai (UTC+8) on Monday is 01:30 UTC.
        assert!(s.contains(at(1, 30, 0)));
        assert!(!s.contains(at(9, 30, 0)), "17:30 in Shanghai");
        assert!(!s.contains(at(1, 30, 5)), "Saturday");
        let all_day =
            schedule("timezone: UTC\nwindows: [{days: sun, from: \"00:00\", to: \"00:00\"}]\n");
        assert!(all_day.contains(at(13, 0, 6)) && !all_day.contains(at(13, 0, 0)));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(
            serde_yaml::from_str::<Schedule>("windows: [{from: \"25:00\", to: \"06:00\"}]")
                .is_err()
        );
        assert!(
            serde_yaml::from_str::<Schedule>(
                "windows: [{days: [funday], from: \"01:00\", to: \"06:00\"}]"
            )
            .is_err()
        );
        assert!(serde_yaml::from_str::<Schedule>("timezone: Mars/Olympus\nwindows: []").is_err());
        // In full, as check-config prints them (after the key and before the location).
        for (yaml, message) in [
            (
                "timezone: Mars/Olympus\nwindows: []",
                "unknown time zone `Mars/Olympus` (an IANA name such as Europe/Berlin or UTC)",
            ),
            (
                "windows: [{days: funday, from: \"1:00\", to: \"2:00\"}]",
                "`funday` is not a day (mon, tue, wed, thu, fri, sat, sun)",
            ),
            (
                "windows: [{from: \"25:00\", to: \"06:00\"}]",
                "`25:00` is not a time of day (write HH:MM, e.g. 22:00)",
            ),
        ] {
            let e = serde_yaml::from_str::<Schedule>(yaml).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(message), "{e}");
        }
    }
}
