//! Logging: tracing to journald when the journal socket exists (structured fields become journal
//! fields), otherwise readable lines on stderr. The level comes from the configuration and
//! `RUST_LOG` overrides it.
//!
//! Events name customers only by pseudonym (`customer = %pseudonym`); phone numbers, names,
//! e-mails, message text and secrets are never logged.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Where log lines went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    /// To journald, with structured fields.
    Journald,
    /// To stderr, as readable lines.
    Stderr,
}

/// Installs the global subscriber. `level` is the configured default; `RUST_LOG` wins.
/// Calling it twice is harmless (the second call keeps the first subscriber).
pub fn init(level: &str, prefer_journal: bool) -> LogSink {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = if prefer_journal {
        tracing_journald::layer().ok().map(|l| {
            // Plain field names (FRONTDESK_EVENT=…, CUSTOMER=…) so admins can match on them.
            l.with_syslog_identifier("frontdesk".into())
                .with_field_prefix(None)
        })
    } else {
        None
    };
    match journal {
        Some(layer) => {
            let _ = tracing_subscriber::registry()
                .with(layer.with_filter(filter))
                .try_init();
            LogSink::Journald
        }
        None => {
            let fmt = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false);
            let _ = tracing_subscriber::registry()
                .with(fmt.with_filter(filter))
                .try_init();
            LogSink::Stderr
        }
    }
}

/// True when stderr is connected to the journal (systemd sets `JOURNAL_STREAM`), which is when
/// the native journal protocol is preferred over plain lines.
pub fn running_under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
        || std::path::Path::new("/run/systemd/journal/socket").exists()
            && std::env::var_os("INVOCATION_ID").is_some()
}
