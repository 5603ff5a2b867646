//! How times appear in JSON and logs (RFC 3339). Here, below `publish`, because a target's
//! reasons carry their first-seen time and serialize it themselves.

use std::time::SystemTime;

use serde::Serializer;

pub fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

pub fn format_time(t: SystemTime) -> String {
    let odt = time::OffsetDateTime::from(t);
    odt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| odt.unix_timestamp().to_string())
}

pub fn rfc3339_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}
