//! How logs should look where they go. Under systemd, stderr is connected to journald, which
//! timestamps and colours nothing itself needs; `JOURNAL_STREAM` (`<dev>:<inode>` of that
//! stream, systemd.exec(5)) says so, and it is only trusted when it still describes our stderr
//! (a child of a service inherits the variable with a different stderr).

use std::os::unix::fs::MetadataExt;

/// Crates whose debug and trace lines carry credentials: the AWS SDK's orchestrator dumps its
/// config bag (the resolved identity, access key id included) at debug, SigV4 the canonical
/// request with its `x-amz-security-token` at trace. Matched by target prefix.
pub const SECRET_BEARING: [&str; 5] = [
    "aws_smithy",
    "aws_sigv4",
    "aws_config",
    "aws_runtime",
    "aws_sdk",
];

fn allowed(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() <= tracing::Level::INFO
        || !SECRET_BEARING.iter().any(|p| meta.target().starts_with(p))
}

/// A global filter layer that keeps the AWS SDK at `info` or quieter whatever the operator's
/// filter says (a more specific directive such as `aws_smithy_runtime=trace` included), so AWS
/// credentials never reach a log.
pub fn no_secrets() -> tracing_subscriber::filter::FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::FilterFn::new(allowed as fn(&tracing::Metadata<'_>) -> bool)
}

/// The operator's filter (tracing env-filter syntax), `info` when invalid.
pub fn env_filter(filter: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
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

    /// Whatever the operator's filter, the AWS SDK's debug/trace lines (which dump the
    /// resolved credentials) stay off; everything else follows the filter.
    #[test]
    fn the_aws_sdk_is_capped_at_info() {
        use tracing::Level;
        use tracing_subscriber::layer::SubscriberExt;
        for filter in ["trace", "aws_smithy_runtime=trace,trace", "aws_sigv4=trace"] {
            let sub = tracing_subscriber::registry()
                .with(env_filter(filter))
                .with(no_secrets());
            tracing::subscriber::with_default(sub, || {
                assert!(
                    !tracing::enabled!(target: "aws_smithy_runtime::client::orchestrator", Level::DEBUG),
                    "{filter}"
                );
                assert!(
                    !tracing::enabled!(target: "aws_sigv4::http_request", Level::TRACE),
                    "{filter}"
                );
                assert!(
                    !tracing::enabled!(target: "aws_config::default_provider", Level::DEBUG),
                    "{filter}"
                );
            });
        }
        let sub = tracing_subscriber::registry()
            .with(env_filter("trace"))
            .with(no_secrets());
        tracing::subscriber::with_default(sub, || {
            assert!(tracing::enabled!(target: "bindsto::remedy", Level::TRACE));
            assert!(tracing::enabled!(target: "hyper_util::client", Level::TRACE));
            assert!(tracing::enabled!(target: "aws_smithy_runtime::client", Level::INFO));
        });
    }

    #[test]
    fn journal_stream_must_match_dev_and_inode() {
        assert!(matches_stream("2049:123", 2049, 123));
        assert!(!matches_stream("2049:124", 2049, 123));
        assert!(!matches_stream("2050:123", 2049, 123));
        assert!(!matches_stream("garbage", 2049, 123));
        assert!(!matches_stream("", 2049, 123));
    }
}
