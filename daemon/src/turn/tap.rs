//! The payloads of the quick-reply buttons of the reminders and follow-ups
//! (`crate::reminders`). WhatsApp sends the payload of a tapped button back in a `button`
//! message; it names what the button asks for and the MagicLine booking, nothing about the person.

/// What a button asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapAction {
    /// "I'll come": confirm the booking (in MagicLine when it awaits confirmation).
    Confirm,
    /// "Another time": offer new slots; once one is booked, the old booking is cancelled.
    Reschedule,
    /// "I can't come": cancel the booking in MagicLine.
    Cancel,
}

const PREFIX: &str = "fd-trial";

impl TapAction {
    /// The reminder's buttons, in the order the approved template lists them.
    pub const REMINDER_BUTTONS: [TapAction; 3] =
        [TapAction::Confirm, TapAction::Reschedule, TapAction::Cancel];

    /// Stable name for the payload and the audit log.
    pub fn code(self) -> &'static str {
        match self {
            TapAction::Confirm => "confirm",
            TapAction::Reschedule => "reschedule",
            TapAction::Cancel => "cancel",
        }
    }

    /// The payload of this button for booking `booking_id`.
    pub fn payload(self, booking_id: i64) -> String {
        format!("{PREFIX}:{}:{booking_id}", self.code())
    }
}

/// Reads a button payload of ours: what it asks for and the booking it is about.
pub fn parse(payload: &str) -> Option<(TapAction, i64)> {
    let mut parts = payload.trim().splitn(3, ':');
    if parts.next()? != PREFIX {
        return None;
    }
    let action = match parts.next()? {
        "confirm" => TapAction::Confirm,
        "reschedule" => TapAction::Reschedule,
        "cancel" => TapAction::Cancel,
        _ => return None,
    };
    let booking_id = parts.next()?.parse().ok()?;
    Some((action, booking_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_strangers_are_not_ours() {
        for action in TapAction::REMINDER_BUTTONS {
            assert_eq!(parse(&action.payload(42)), Some((action, 42)));
        }
        assert_eq!(parse("fd-trial:cancel:x"), None);
        assert_eq!(parse("fd-trial:delete:1"), None);
        assert_eq!(parse("Ja"), None);
    }
}
