//! How logs should look where they go. Under systemd, stderr is connected to journald, which
//! timestamps and colours nothing itself needs; `JOURNAL_STREAM` (`<dev>:<inode>` of that
//! stream, systemd.exec(5)) says so, and it is only trusted when it still describes our stderr
//! (a child of a service inherits the variable with a different stderr).

use std::os::unix::fs::MetadataExt;

/// Targets whose debug and trace lines carry credentials: the AWS SDK's orchestrator dumps its
/// config bag (the resolved identity, access key id included) at debug, SigV4 the canonical
/// request with its `x-amz-security-token` at trace. The SDK crates (a target matches by
/// prefix) are capped at info whatever filter the operator sets.
pub const SECRET_BEARING: [&str; 5] = [
    "aws_smithy=info",
    "aws_sigv4=info",
    "aws_config=info",
    "aws_runtime=info",
    "aws_sdk=info",
];

/// `filter` (tracing env-filter syntax; `info` when invalid) with [`SECRET_BEARING`] capped,
/// so AWS credentials never reach a log at any level.
pub fn env_filter(filter: &str) -> tracing_subscriber::EnvFilter {
    let mut f = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for d in SECRET_BEARING {
        if let Ok(d) = d.parse() {
            f = f.add_directive(d);
        }
    }
    f
}

/// Whether stderr is the journal stream systemd set up for this process.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    matches_stream(&v.to_string_lossy(), meta.dev(), meta.ino())
}

fn matches_stream(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_match_dev_and_inode() {
        assert!(matches_stream("2049:123", 2049, 123));
        assert!(!matches_stream("2049:124", 2049, 123));
        assert!(!matches_stream("2050:123", 2049, 123));
        assert!(!matches_stream("garbage", 2049, 123));
        assert!(!matches_stream("", 2049, 123));
    }
}
