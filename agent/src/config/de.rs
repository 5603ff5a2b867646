//! Field (de)serializers shared by the sections: durations, percentages, counts.
//!
//! A value that cannot be right is refused while it is deserialized, so toml's span and the
//! serde path of the field locate the error without the sections spelling their keys again.
//! Errors raised inside a visitor keep the span of the value itself, which matters for array
//! elements (the array has one span, each element its own line).

use std::fmt;
use std::time::Duration;

use serde::Serializer;
use serde::de::{self, Deserialize, Deserializer};

/// `#[serde(with = "duration")]`: a humantime string ("250ms", "1h 30m") both ways.
pub(super) mod duration {
    use super::{Deserializer, Duration, Serializer, de, fmt};

    pub(in crate::config) fn serialize<S: Serializer>(
        d: &Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        d.deserialize_str(Text)
    }

    /// A custom visitor so a wrong type says what is expected.
    struct Text;

    impl de::Visitor<'_> for Text {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration string such as \"30s\" or \"250ms\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v)
                .map_err(|e| E::custom(format!("invalid duration {v:?}: {e}")))
        }
    }
}

/// `#[serde(with = "nonzero")]`: a [`duration`] that must elapse (periods, timeouts).
pub(super) mod nonzero {
    pub(in crate::config) use super::duration::serialize;
    use super::{Deserializer, Duration, de};

    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        let v = super::duration::deserialize(d)?;
        if v.is_zero() {
            return Err(de::Error::custom("must be greater than 0"));
        }
        Ok(v)
    }
}

/// A percentage in 0..=100; `note` follows the range in the message.
pub(super) fn percent<'de, D: Deserializer<'de>>(d: D, note: &str) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(de::Error::custom(format!("{v} is outside 0..=100{note}")))
    }
}

/// A count of at least 1 (rates, attempts).
pub(super) fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    u32::try_from(v)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| de::Error::custom(format!("{v} is out of range; expected an integer >= 1")))
}

/// Why a value is refused: the message of its config error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct BadValue(pub(super) String);

/// A check of a string value, turning it into `T`.
pub(super) type StrCheck<T> = fn(&str) -> Result<T, BadValue>;

/// Deserializes a string and checks it inside the visitor (see the module doc).
pub(super) fn checked_str<'de, D: Deserializer<'de>, T>(
    d: D,
    check: StrCheck<T>,
) -> Result<T, D::Error> {
    struct Checked<T>(StrCheck<T>);

    impl<T> de::Visitor<'_> for Checked<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }

    d.deserialize_str(Checked(check))
}
