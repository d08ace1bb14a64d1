//! Messages from the studio's own staff numbers (`[alerts] whatsapp_recipients`) to the
//! business number.
//!
//! Staff are not leads: a staff member who answers an alert template by WhatsApp, or tries the
//! assistant from the desk phone, must not become a customer record, a new contact in the
//! funnel, or a conversation the model answers. Such a burst is not given to the engine; it is
//! audited (`message.from_staff`, without its words) and answered at most once a day per number
//! with a pointer to where answers go: the console. Nothing of what staff wrote is stored.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};

use crate::audit::{Actor, AuditEvent, NewEntry};
use crate::store::crypto::{normalise_phone, Pseudonym};
use crate::turn::{Burst, Effects, TurnOutcome};

/// How often one staff number is pointed to the console at most.
const POINTER_EVERY: SignedDuration = SignedDuration::from_hours(24);

/// The staff numbers and when each was last pointed to the console (in memory: after a
/// restart a staff member may get the pointer once more, which does no harm).
#[derive(Default)]
pub struct StaffNumbers {
    numbers: Vec<String>,
    console_url: String,
    pointed: Mutex<HashMap<Pseudonym, Timestamp>>,
}

impl std::fmt::Debug for StaffNumbers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Staff's own numbers stay out of logs.
        f.debug_struct("StaffNumbers")
            .field("numbers", &self.numbers.len())
            .finish_non_exhaustive()
    }
}

impl StaffNumbers {
    /// The numbers of `[alerts] whatsapp_recipients` and the console's address for the pointer
    /// (empty: the pointer names the console without a link).
    pub fn new(numbers: &[String], console_url: &str) -> StaffNumbers {
        StaffNumbers {
            numbers: numbers
                .iter()
                .map(|n| normalise_phone(n))
                .filter(|n| !n.is_empty())
                .collect(),
            console_url: console_url.trim_end_matches('/').to_string(),
            pointed: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `address` (a phone number or a WhatsApp user id) is one of the staff numbers.
    pub fn is_staff(&self, address: &str) -> bool {
        !self.numbers.is_empty() && self.numbers.contains(&normalise_phone(address))
    }

    /// The turn for a burst from staff number `p` at `now`: nothing stored about it, the audit
    /// entry, and the pointer to the console unless this number got it in the last day.
    pub fn turn(&self, p: Pseudonym, burst: &Burst, now: Timestamp) -> Effects {
        let mut effects = Effects::nothing(p, &burst.address, now, TurnOutcome::FromStaff);
        let point = {
            let mut pointed = self.pointed.lock().expect("staff pointer lock poisoned");
            let due = pointed
                .get(&p)
                .is_none_or(|last| now.duration_since(*last) >= POINTER_EVERY);
            if due {
                pointed.insert(p, now);
            }
            due
        };
        if point {
            effects.replies.push(self.pointer());
        }
        // About no customer: a staff member is not one, and the number is not personal data
        // of a lead.
        effects.audit.push(NewEntry::new(
            Actor::System,
            AuditEvent::MessageFromStaff { answered: point },
        ));
        effects
    }

    fn pointer(&self) -> String {
        let where_to = if self.console_url.is_empty() {
            "in der Konsole des Studios".to_string()
        } else {
            format!("in der Konsole: {}", self.console_url)
        };
        format!(
            "Hallo, hier ist der digitale Assistent des Studios. Nachrichten vom Team \
             beantworte ich nicht. Übergebene Gespräche beantwortet ihr {where_to}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn burst(from: &str) -> Burst {
        Burst {
            address: from.into(),
            contact_name: None,
            user_id: None,
            parent_user_id: None,
            username: None,
            referral: None,
            parts: Vec::new(),
        }
    }

    #[test]
    fn staff_numbers_match_however_they_are_written() {
        let staff = StaffNumbers::new(&["+49 151 0000001".into()], "https://desk.example/");
        assert!(staff.is_staff("491510000001"));
        assert!(!staff.is_staff("491510000002"));
        assert!(!StaffNumbers::new(&[], "").is_staff("491510000001"));
    }

    #[test]
    fn a_staff_number_is_pointed_to_the_console_once_a_day_and_nothing_is_kept() {
        let staff = StaffNumbers::new(&["491510000001".into()], "https://desk.example/");
        let p = Pseudonym([7; 16]);
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let first = staff.turn(p, &burst("491510000001"), now);
        assert!(first.record.is_none());
        assert!(first.funnel.is_empty());
        assert_eq!(first.outcome, TurnOutcome::FromStaff);
        assert_eq!(first.replies.len(), 1);
        assert!(first.replies[0].ends_with("in der Konsole: https://desk.example"));
        assert!(matches!(
            first.audit[0].event,
            AuditEvent::MessageFromStaff { answered: true }
        ));
        let soon = staff.turn(
            p,
            &burst("491510000001"),
            now + SignedDuration::from_hours(2),
        );
        assert!(soon.replies.is_empty());
        assert!(matches!(
            soon.audit[0].event,
            AuditEvent::MessageFromStaff { answered: false }
        ));
        let next_day = staff.turn(
            p,
            &burst("491510000001"),
            now + SignedDuration::from_hours(25),
        );
        assert_eq!(next_day.replies.len(), 1);
    }
}
