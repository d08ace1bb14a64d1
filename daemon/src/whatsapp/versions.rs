//! Graph API versions and the dates Meta retires them, in one place: the default the daemon
//! uses, and the checks `frontdesk doctor` and `frontdesk status` make against the configured
//! version. Meta announces each retirement about two years after a release; a box that keeps
//! calling a retired version stops receiving answers, so the warning starts well before.

use jiff::civil::Date;

/// The version a new installation uses: supported with a long runway, and the one whose
/// payloads the simulator speaks.
pub const DEFAULT_VERSION: &str = "v25.0";

/// Days before a version's retirement from which doctor and status warn.
pub const WARN_DAYS: i32 = 60;

/// Versions still served, with the day Meta retires them (`None`: no date announced yet).
pub const KNOWN: &[(&str, Option<Date>)] = &[
    ("v21.0", Some(jiff::civil::date(2027, 1, 21))),
    ("v22.0", Some(jiff::civil::date(2027, 5, 20))),
    ("v23.0", Some(jiff::civil::date(2027, 10, 8))),
    ("v24.0", Some(jiff::civil::date(2028, 2, 18))),
    ("v25.0", Some(jiff::civil::date(2028, 7, 29))),
    ("v26.0", None),
    ("v27.0", None),
];

/// How the configured version stands on a given day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionStatus {
    /// Served, and not retired within [`WARN_DAYS`] (`expires`: the retirement day, if known).
    Supported {
        /// The announced retirement day.
        expires: Option<Date>,
    },
    /// Retired within [`WARN_DAYS`]: move to a newer version now.
    ExpiresSoon {
        /// The retirement day.
        expires: Date,
        /// Days left until then.
        days_left: i32,
    },
    /// Retired: Meta no longer answers calls with this version.
    Expired {
        /// The retirement day.
        expired: Date,
    },
    /// Not in [`KNOWN`]: older than the table, or newer than this release knows.
    Unknown,
}

/// The status of `version` on `today`.
pub fn status(version: &str, today: Date) -> VersionStatus {
    let Some((_, expires)) = KNOWN.iter().find(|(v, _)| *v == version) else {
        return VersionStatus::Unknown;
    };
    let Some(expires) = *expires else {
        return VersionStatus::Supported { expires: None };
    };
    if today >= expires {
        return VersionStatus::Expired { expired: expires };
    }
    let days_left = (expires - today).get_days();
    if days_left <= WARN_DAYS {
        VersionStatus::ExpiresSoon { expires, days_left }
    } else {
        VersionStatus::Supported {
            expires: Some(expires),
        }
    }
}

/// One sentence for doctor, status and the journal; `None` when there is nothing to say.
pub fn warning(version: &str, today: Date) -> Option<String> {
    match status(version, today) {
        VersionStatus::Supported { .. } => None,
        VersionStatus::ExpiresSoon { expires, days_left } => Some(format!(
            "Graph API {version} is retired on {expires} (in {days_left} days): set whatsapp.api_version = \"{DEFAULT_VERSION}\""
        )),
        VersionStatus::Expired { expired } => Some(format!(
            "Graph API {version} was retired on {expired}: set whatsapp.api_version = \"{DEFAULT_VERSION}\""
        )),
        VersionStatus::Unknown => Some(format!(
            "Graph API {version} is not a version this release knows (known: {})",
            KNOWN.iter().map(|(v, _)| *v).collect::<Vec<_>>().join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn warns_sixty_days_ahead_and_fails_after() {
        let v21 = "v21.0";
        assert_eq!(
            status(v21, date(2026, 11, 21)),
            VersionStatus::Supported {
                expires: Some(date(2027, 1, 21))
            }
        );
        assert_eq!(
            status(v21, date(2026, 11, 22)),
            VersionStatus::ExpiresSoon {
                expires: date(2027, 1, 21),
                days_left: 60
            }
        );
        assert_eq!(
            status(v21, date(2027, 1, 20)),
            VersionStatus::ExpiresSoon {
                expires: date(2027, 1, 21),
                days_left: 1
            }
        );
        assert_eq!(
            status(v21, date(2027, 1, 21)),
            VersionStatus::Expired {
                expired: date(2027, 1, 21)
            }
        );
        assert!(warning(v21, date(2027, 2, 1)).is_some_and(|w| w.contains("retired on 2027-01-21")));
        assert_eq!(warning(DEFAULT_VERSION, date(2026, 12, 1)), None);
        assert_eq!(
            status("v27.0", date(2030, 1, 1)),
            VersionStatus::Supported { expires: None }
        );
        assert_eq!(status("v19.0", date(2026, 12, 1)), VersionStatus::Unknown);
    }

    #[test]
    fn the_default_is_known_and_has_a_long_runway() {
        let today = date(2026, 12, 1);
        match status(DEFAULT_VERSION, today) {
            VersionStatus::Supported {
                expires: Some(expires),
            } => assert!((expires - today).get_days() > 365),
            other => panic!("default version {DEFAULT_VERSION}: {other:?}"),
        }
    }
}
