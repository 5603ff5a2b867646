//! `[remediate.fleet]`: the shared out-of-service budget (a DynamoDB table) that every host of
//! an Auto Scaling group asks before it takes itself out of service.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::de::{BadValue, checked_str, nonzero, percent};

/// See `default.toml` and `docs/fleet.md` for what each key does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct Fleet {
    /// Empty: no shared budget; the Auto Scaling breaker gates every step instead.
    #[serde(deserialize_with = "table")]
    pub table: String,
    #[serde(deserialize_with = "super::remediate::endpoint_url")]
    pub endpoint_url: Option<String>,
    #[serde(deserialize_with = "fleet_percent")]
    pub max_out_of_service_percent: f64,
    #[serde(deserialize_with = "fleet_percent")]
    pub outage_percent: f64,
    /// A lease (and a failure record) not renewed this long is free again.
    #[serde(with = "nonzero")]
    pub lease: Duration,
    /// A held host asks again at a jittered time in `[retry/2, 3*retry/2]`.
    #[serde(with = "nonzero")]
    pub retry: Duration,
    /// One DynamoDB call, retries included.
    #[serde(with = "nonzero")]
    pub timeout: Duration,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            table: String::new(),
            endpoint_url: None,
            max_out_of_service_percent: 20.0,
            outage_percent: 50.0,
            lease: Duration::from_secs(600),
            retry: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Fleet {
    /// A table is configured: the budget, not the breaker, gates the ladder.
    pub fn enabled(&self) -> bool {
        !self.table.is_empty()
    }

    /// Leases allowed at once in a group of `size`: `max(1, floor(percent × size))`.
    pub fn budget(&self, size: usize) -> usize {
        let n = (self.max_out_of_service_percent / 100.0 * size as f64).floor();
        (n as usize).max(1)
    }
}

fn fleet_percent<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    percent(d, "")
}

/// DynamoDB table names: 3 to 255 of `[A-Za-z0-9_.-]`, or empty (no table).
fn table<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_str(d, |t| {
        let ok = t.is_empty()
            || ((3..=255).contains(&t.len())
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
        if ok {
            Ok(t.to_owned())
        } else {
            Err(BadValue(format!(
                "{t:?} is not a DynamoDB table name (3-255 of A-Z a-z 0-9 _ . -)"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_at_least_one_host() {
        let f = Fleet::default();
        assert_eq!(f.budget(10), 2);
        assert_eq!(f.budget(3), 1);
        assert_eq!(f.budget(1), 1);
        assert_eq!(f.budget(0), 1);
        assert_eq!(f.budget(14), 2);
        assert_eq!(f.budget(15), 3);
    }
}
