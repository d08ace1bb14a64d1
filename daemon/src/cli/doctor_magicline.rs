//! `frontdesk doctor`'s MagicLine check: the API key (MagicLine's `HEAD` key check), the scopes
//! frontdesk needs (each probed with a call that changes nothing; a 403 names the missing scope),
//! the studio's bookable trial offers (appointments and classes) listed so the admin can pick
//! one for `magicline.trial_offer_appointment_id` or `magicline.trial_offer_class_id`, and
//! whether the configured trial offer and member appointment type exist and ask only for lead
//! data frontdesk collects.

use std::fmt::Write as _;

use crate::config::Config;
use crate::magicline::api::{
    BookingRequest, FieldMode, LeadCustomerData, LeadRequest, TrialOfferAppointment,
    TrialOfferClass, TrialOfferConfig,
};
use crate::magicline::client::{Client, Error};

use super::doctor_cmd::{fail, pass, Check};

const NAME: &str = "magicline";
/// Placeholder data of the probes; validate calls and a search change nothing in MagicLine.
const PROBE_EMAIL: &str = "frontdesk-doctor@example.invalid";

/// A permission frontdesk needs, with the call that shows whether the key has it.
struct Probe {
    scope: &'static str,
    call: fn(&Client, i64) -> Result<(), Error>,
}

const PROBES: [Probe; 5] = [
    Probe {
        scope: "trial offers (read)",
        call: |c, _| c.trial_offer_appointments().map(drop),
    },
    Probe {
        scope: "trial offers (write)",
        call: |c, config_id| {
            let lead = LeadRequest {
                lead_customer_data: LeadCustomerData::new("frontdesk", "doctor", PROBE_EMAIL),
                trial_offer_config_id: config_id,
            };
            c.validate_lead(&lead).map(drop)
        },
    },
    Probe {
        scope: "bookable appointments (read)",
        call: |c, _| c.bookable_appointments().map(drop),
    },
    Probe {
        scope: "appointments (write)",
        call: |c, _| {
            let now = jiff::Zoned::now();
            let probe = BookingRequest {
                customer_id: 0,
                bookable_appointment_id: 0,
                start_date_time: now.clone(),
                end_date_time: now,
                instructor_ids: Vec::new(),
            };
            c.validate_booking(&probe).map(drop)
        },
    },
    Probe {
        scope: "customers (read)",
        call: |c, _| c.find_customers_by_email(PROBE_EMAIL).map(drop),
    },
];

/// Probed only when the trial is a class: the class bookings frontdesk reads after a lost book
/// answer, for staff cancellations and the poll.
const CLASS_PROBE: Probe = Probe {
    scope: "class bookings (read)",
    call: |c, _| c.class_bookings(0).map(drop),
};

/// The MagicLine line of the report.
pub fn check(cfg: &Config, client: &Client) -> Check {
    let base = &cfg.magicline.base_url;
    match client.check_key() {
        Ok(()) => {}
        Err(Error::Api { status: 401, .. }) => {
            return fail(
                NAME,
                "API key rejected",
                "ask MagicLine for the studio's Open API key and replace the credential \
                 magicline-api-key",
            )
        }
        Err(e @ (Error::Transport { .. } | Error::Timeout)) => {
            return fail(
                NAME,
                format!("cannot reach {base} ({e})"),
                "check the network and magicline.base_url",
            )
        }
        Err(e) => return fail(NAME, e.to_string(), "check magicline.base_url"),
    }
    // Offers first: the write probe of trial offers names one of them.
    let offers = client.trial_offer_appointments().unwrap_or_default();
    let classes = match cfg.magicline.trial_offer_class_id {
        Some(_) => client.trial_offer_classes().unwrap_or_default(),
        None => Vec::new(),
    };
    let config_id = chosen_config(cfg, &offers, &classes).unwrap_or(0);
    let mut missing = Vec::new();
    let class_probe = cfg.magicline.trial_offer_class_id.map(|_| &CLASS_PROBE);
    for probe in PROBES.iter().chain(class_probe) {
        match (probe.call)(client, config_id) {
            Err(e) if e.is_forbidden() => missing.push(probe.scope),
            // Any other answer (a status, a 400 or 404 for the probe's placeholder data) means
            // the key may call the endpoint.
            Ok(()) | Err(Error::Api { .. }) => {}
            Err(e) => {
                return fail(
                    NAME,
                    format!("{} could not be checked: {e}", probe.scope),
                    "run frontdesk doctor again in a minute",
                )
            }
        }
    }
    if !missing.is_empty() {
        return fail(
            NAME,
            format!(
                "API key accepted, but it lacks the scope for {} (HTTP 403)",
                missing.join(", ")
            ),
            "ask the studio to grant frontdesk's MagicLine integration these scopes",
        );
    }
    offers_check(cfg, client, &offers)
}

/// The configuration id of the trial offer leads book: the class
/// `magicline.trial_offer_class_id` names, else the appointment
/// `magicline.trial_offer_appointment_id` names, else the first appointment.
fn chosen_config(
    cfg: &Config,
    offers: &[TrialOfferAppointment],
    classes: &[TrialOfferClass],
) -> Option<i64> {
    if let Some(id) = cfg.magicline.trial_offer_class_id {
        return classes
            .iter()
            .find(|c| c.trial_offer_class.id == id && c.trial_offer_class.bookable)
            .map(|c| c.trial_offer_config_id);
    }
    match cfg.magicline.trial_offer_appointment_id {
        Some(id) => offers
            .iter()
            .find(|o| o.trial_offer_bookable_appointment.id == id),
        None => offers.first(),
    }
    .map(|o| o.trial_offer_config_id)
}

/// Appends the trial classes to the listing.
fn list_classes(cfg: &Config, listing: &mut String, classes: &[TrialOfferClass]) {
    if classes.is_empty() {
        return;
    }
    listing.push_str("\n    bookable trial classes:");
    for o in classes {
        let c = &o.trial_offer_class;
        let _ = write!(
            listing,
            "\n    {}  {} ({} min, class, trial offer {}){}",
            c.id,
            c.title.as_deref().unwrap_or("-"),
            c.duration
                .map_or_else(|| "?".to_string(), |d| d.to_string()),
            o.trial_offer_config_id,
            if c.bookable {
                ""
            } else {
                ", not bookable online"
            }
        );
        if cfg.magicline.trial_offer_class_id == Some(c.id) {
            listing.push_str("  ← magicline.trial_offer_class_id");
        }
    }
}

/// Lists the offers and checks the configured ones.
fn offers_check(cfg: &Config, client: &Client, offers: &[TrialOfferAppointment]) -> Check {
    let classes = match client.trial_offer_classes() {
        Ok(list) => list,
        Err(e) if cfg.magicline.trial_offer_class_id.is_some() => {
            return fail(
                NAME,
                format!("the studio's trial classes could not be read: {e}"),
                "run frontdesk doctor again in a minute",
            )
        }
        // A studio without trial classes may not grant reading them; appointments suffice.
        Err(_) => Vec::new(),
    };
    let mut listing = String::from("API key and scopes accepted; bookable trial offers:");
    for o in offers {
        let a = &o.trial_offer_bookable_appointment;
        let _ = write!(
            listing,
            "\n    {}  {} ({} min, trial offer {})",
            a.id,
            a.title.as_deref().unwrap_or("-"),
            a.duration
                .map_or_else(|| "?".to_string(), |d| d.to_string()),
            o.trial_offer_config_id
        );
        if cfg.magicline.trial_offer_appointment_id == Some(a.id) {
            listing.push_str("  ← magicline.trial_offer_appointment_id");
        }
    }
    list_classes(cfg, &mut listing, &classes);
    let key = if cfg.magicline.trial_offer_class_id.is_some() {
        "magicline.trial_offer_class_id"
    } else {
        "magicline.trial_offer_appointment_id"
    };
    let Some(config_id) = chosen_config(cfg, offers, &classes) else {
        let detail = if offers.is_empty() && classes.is_empty() {
            "the studio has no bookable trial offer".to_string()
        } else {
            format!("{listing}\n    none of them is {key}")
        };
        return fail(NAME, detail, format!("set {key} to one of the listed ids"));
    };
    let config = match client.trial_offer_config(config_id) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                NAME,
                format!("{listing}\n    its configuration could not be read: {e}"),
                "run frontdesk doctor again in a minute",
            )
        }
    };
    if let Some(field) = uncollected_mandatory_field(&config) {
        return fail(
            NAME,
            format!("{listing}\n    the trial offer requires the lead's {field}, which frontdesk does not ask for"),
            "make the field optional in the trial offer's lead data in MagicLine, or pick another offer",
        );
    }
    if let Some(term) = &config.confirmation_of_booking_term {
        let _ = write!(
            listing,
            "\n    bookings need the lead's confirmation, at the latest {} {} before the start",
            term.value, term.unit
        );
    }
    let class_chosen = cfg.magicline.trial_offer_class_id.is_some();
    if offers.len() > 1 && cfg.magicline.trial_offer_appointment_id.is_none() && !class_chosen {
        listing.push_str("\n    several offers: the first is booked until one is chosen");
    }
    if class_chosen && cfg.magicline.member_appointment_id.is_none() {
        listing.push_str("\n    the trial is a class: members are handed to staff until magicline.member_appointment_id names the appointment type they book");
    }
    if let Some(member) = cfg.magicline.member_appointment_id {
        match client.bookable_appointments() {
            Ok(list) if list.iter().any(|a| a.id == member) => {}
            Ok(_) => {
                return fail(
                    NAME,
                    format!("{listing}\n    magicline.member_appointment_id {member} is not a bookable appointment"),
                    "set magicline.member_appointment_id to a bookable appointment type",
                )
            }
            Err(e) => {
                return fail(
                    NAME,
                    format!("{listing}\n    bookable appointments could not be read: {e}"),
                    "run frontdesk doctor again in a minute",
                )
            }
        }
    }
    pass(NAME, listing)
}

/// A lead field the offer makes mandatory that frontdesk cannot send (it asks for name and
/// e-mail and knows the WhatsApp number).
fn uncollected_mandatory_field(config: &TrialOfferConfig) -> Option<&'static str> {
    let d = &config.lead_data_config;
    [
        (d.gender_mode, "gender"),
        (d.date_of_birth_mode, "date of birth"),
        (d.address_mode, "address"),
    ]
    .into_iter()
    .find(|(mode, _)| *mode == FieldMode::Mandatory)
    .map(|(_, name)| name)
}
