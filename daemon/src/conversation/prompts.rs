//! The prompt files: loading, validation and rendering.
//!
//! The persona prompt is split in two. `persona.static.txt` holds everything that is the same
//! for every request (persona, studio facts from the config, rules, output format); it is rendered
//! once at load, so the model backend can keep its KV cache across customers and requests.
//! `persona.dynamic.txt` holds what changes per request (date, customer, profile, booking state)
//! and pulls in one status rule file from `rules/` plus `rules/erstkontakt.txt` for a new contact.
//! `replies.toml` holds the fixed German texts the engine sends itself.
//!
//! Each file is read from the override directory when it exists there, else from the shipped
//! directory. `replies.toml` is the exception: a studio's copy overrides the shipped texts key by
//! key, so a copy made before an upgrade that adds texts keeps working (the new texts come from
//! the shipped file). Placeholders are `{name}` (spaces inside the braces allowed); a brace that does not
//! enclose a bare name is plain text, so JSON examples need no escaping. A placeholder a file may
//! not use is an error at load, naming the file, the line and the names allowed there, so a broken
//! template stops the daemon at start instead of producing odd prompts later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use jiff::civil::Weekday;
use jiff::Zoned;

use super::booking::BookingFailure;
use super::when::{berlin_tz, When};
use crate::config::{ServiceConfig, StudioConfig};
use crate::llm::{ChatMessage, Prompt};
use crate::store::customers::{Customer, Stage};

/// The part of the system prompt rendered once at load (persona, studio facts, rules).
pub const STATIC_FILE: &str = "persona.static.txt";
/// The part of the system prompt rendered per request (date, customer, status rules).
pub const DYNAMIC_FILE: &str = "persona.dynamic.txt";
/// Status rules while the contact's name is not known yet.
pub const RULE_NEW_LEAD_FILE: &str = "rules/neuer_interessent.txt";
/// Status rules once the name is known and no trial is booked.
pub const RULE_NAME_KNOWN_FILE: &str = "rules/name_bekannt.txt";
/// Status rules once a trial training is booked.
pub const RULE_TRIAL_BOOKED_FILE: &str = "rules/probetraining_gebucht.txt";
/// Status rules for a member of the studio (never offered a trial).
pub const RULE_MEMBER_FILE: &str = "rules/mitglied.txt";
/// Rules added until the assistant has said it is an AI.
pub const FIRST_CONTACT_FILE: &str = "rules/erstkontakt.txt";
/// The fixed German texts the engine sends itself.
pub const REPLIES_FILE: &str = "replies.toml";

/// Placeholders filled from `[studio]` in the config. Usable in every file.
const STUDIO_VARS: &[&str] = &[
    "assistant_name",
    "studio_name",
    "address",
    "phone",
    "website",
    "opening_hours",
    "offers",
    "trial_info",
];

/// Placeholders that change per request (dynamic part and the status rules).
const CUSTOMER_VARS: &[&str] = &[
    "wochentag",
    "datum",
    "uhrzeit",
    "name",
    "status",
    "profil",
    "fehlende_angaben",
    "buchung",
];

/// Placeholders only `persona.dynamic.txt` may use: the rendered rule files.
const SECTION_VARS: &[&str] = &["regeln", "erstkontakt"];

/// Studio facts the static prompt shows as "not given" when the config leaves them empty; the
/// persona then says it does not know instead of inventing something.
const NOT_GIVEN: &str = "nicht hinterlegt";

/// A problem with the prompt files. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The file is in neither the override nor the shipped directory.
    #[error("prompt file {name} not found (looked in {searched})")]
    Missing {
        /// The file name relative to the prompt directory.
        name: String,
        /// The paths tried, comma-separated.
        searched: String,
    },
    /// The file exists but could not be read.
    #[error("prompt file {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// A placeholder this file may not use (or that does not exist).
    #[error("prompt file {path}, line {line}: unknown placeholder {{{placeholder}}} (allowed here: {allowed})")]
    UnknownPlaceholder {
        /// The file.
        path: PathBuf,
        /// 1-based line of the placeholder.
        line: usize,
        /// The name between the braces.
        placeholder: String,
        /// The placeholders this file may use, e.g. `{name} {datum}`.
        allowed: String,
    },
    /// The file is malformed (e.g. `replies.toml` does not parse or lacks a text).
    #[error("prompt file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Var(&'static str),
}

/// A parsed template: text with validated placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; every placeholder must be one of `allowed`. `path` names the file in errors.
    pub fn parse(
        text: &str,
        allowed: &[&'static str],
        path: &Path,
    ) -> Result<Template, PromptError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match placeholder_at(after) {
                Some((name, consumed)) => {
                    let Some(known) = allowed.iter().find(|a| **a == name) else {
                        let line = text[..text.len() - rest.len() + open].matches('\n').count() + 1;
                        return Err(PromptError::UnknownPlaceholder {
                            path: path.to_path_buf(),
                            line,
                            placeholder: name.to_string(),
                            allowed: allowed
                                .iter()
                                .map(|a| format!("{{{a}}}"))
                                .collect::<Vec<_>>()
                                .join(" "),
                        });
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Var(known));
                    rest = &after[consumed..];
                }
                None => {
                    literal.push('{');
                    rest = after;
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// Fills the placeholders; a name missing from `vars` renders empty (loading guarantees
    /// every placeholder is one the caller provides). A placeholder that renders empty (a
    /// contact who never said their first name) takes the space and comma that joined it to
    /// the sentence with it: "warst, {vorname}!" becomes "warst!", "Hi {vorname}, hast" becomes
    /// "Hi, hast".
    pub fn render(&self, vars: &Vars) -> String {
        let mut out = String::new();
        let mut after_empty = false;
        for part in &self.parts {
            match part {
                Part::Text(t) if after_empty => join_after_empty(&mut out, t),
                Part::Text(t) => out.push_str(t),
                Part::Var(name) => {
                    debug_assert!(vars.contains_key(name), "placeholder {name} not provided");
                    let value = vars.get(name).map(String::as_str).unwrap_or_default();
                    if value.trim().is_empty() {
                        out.truncate(out.trim_end_matches([' ', '\u{a0}']).len());
                        after_empty = true;
                        continue;
                    }
                    out.push_str(value);
                }
            }
            after_empty = false;
        }
        if after_empty && out.ends_with(',') {
            out.pop();
        }
        out
    }

    /// The placeholders used, in order.
    pub fn placeholders(&self) -> Vec<&'static str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Var(v) => Some(*v),
                Part::Text(_) => None,
            })
            .collect()
    }
}

/// Appends `text`, which follows a placeholder that rendered empty, to `out` (already without
/// the spaces before the placeholder), so no stray comma or space is left where it was.
fn join_after_empty(out: &mut String, text: &str) {
    let at_start = out.is_empty() || out.ends_with('\n');
    let mut text = text;
    if text.starts_with(['!', '?', '.', ',']) && out.ends_with(',') {
        // "warst, {vorname}!": the comma belonged to the name.
        out.pop();
    } else if at_start {
        // "{vorname}, schön …" at the start of a line: nothing to join to.
        text = text.trim_start_matches([',', ' ']);
    }
    out.push_str(text);
}

/// Values for placeholders.
pub type Vars = HashMap<&'static str, String>;

/// Recognises `name}` or ` name }` at the start of `s` (the text after a `{`); returns the name
/// and how many bytes it spans including the closing brace.
fn placeholder_at(s: &str) -> Option<(&str, usize)> {
    let trimmed = s.trim_start_matches(' ');
    let lead = s.len() - trimmed.len();
    let name_len = trimmed
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_ascii_alphanumeric() || c == '_') || (i == 0 && !c.is_ascii_alphabetic())
        })
        .map(|(i, _)| i)
        .unwrap_or(trimmed.len());
    if name_len == 0 {
        return None;
    }
    let name = &trimmed[..name_len];
    let tail = &trimmed[name_len..];
    let tail_trimmed = tail.trim_start_matches(' ');
    if !tail_trimmed.starts_with('}') {
        return None;
    }
    let consumed = lead + name_len + (tail.len() - tail_trimmed.len()) + 1;
    Some((name, consumed))
}

/// Which follow-up after a trial ([`Replies::follow_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowUp {
    /// Thanks for coming.
    Thanks,
    /// Whether they want to sign up.
    SignUp,
    /// They missed the trial: a new date?
    Missed,
}

/// The fixed texts of `replies.toml`.
#[derive(Debug, Clone)]
pub struct Replies {
    ki_hinweis: Template,
    modell_fehler: Template,
    gebucht: Template,
    gebucht_bestaetigung_ausstehend: Template,
    bestaetigung_abgelaufen: Template,
    termin_gebucht: Template,
    termin_abgesagt: Template,
    termin_belegt: Template,
    alternative_zeile: Template,
    termin_belegt_keine_alternativen: Template,
    fehler_vergangenheit: Template,
    fehler_geschlossen: Template,
    fehler_daten_ungueltig: Template,
    fehler_bereits_gebucht: Template,
    fehler_limit: Template,
    fehler_nicht_erreichbar: Template,
    fehler_nicht_eingerichtet: Template,
    tap_abgesagt: Template,
    tap_abgesagt_ohne_termin: Template,
    tap_vergangen: Template,
    tap_nicht_gefunden: Template,
    tap_verschieben: Template,
    tap_verschieben_ohne_vorschlag: Template,
    nachfass_danke: Template,
    nachfass_anmeldung: Template,
    nachfass_verpasst: Template,
    nachfass_knopf_neuer_termin: Template,
    studio: Vars,
}

/// Keys of `replies.toml` and the placeholders each may use beyond [`REPLY_COMMON_VARS`].
const REPLY_KEYS: &[(&str, &[&str])] = &[
    ("ki_hinweis", &[]),
    ("modell_fehler", &[]),
    ("gebucht", &["termin", "vorname"]),
    ("gebucht_bestaetigung_ausstehend", &["termin", "vorname"]),
    ("bestaetigung_abgelaufen", &[]),
    ("termin_gebucht", &["termin", "vorname"]),
    ("termin_abgesagt", &["termin"]),
    ("termin_belegt", &["termin", "alternativen"]),
    ("alternative_zeile", &["nummer", "termin"]),
    ("termin_belegt_keine_alternativen", &["termin"]),
    ("fehler_vergangenheit", &["termin"]),
    ("fehler_geschlossen", &["termin"]),
    ("fehler_daten_ungueltig", &[]),
    ("fehler_bereits_gebucht", &["termin"]),
    ("fehler_limit", &[]),
    ("fehler_nicht_erreichbar", &[]),
    ("fehler_nicht_eingerichtet", &[]),
    ("tap_abgesagt", &["termin"]),
    ("tap_abgesagt_ohne_termin", &[]),
    ("tap_vergangen", &[]),
    ("tap_nicht_gefunden", &[]),
    ("tap_verschieben", &["alternativen"]),
    ("tap_verschieben_ohne_vorschlag", &[]),
    ("nachfass_danke", &["vorname"]),
    ("nachfass_anmeldung", &["vorname"]),
    ("nachfass_verpasst", &["vorname"]),
    ("nachfass_knopf_neuer_termin", &[]),
];

const REPLY_COMMON_VARS: &[&str] = &["studio_name", "assistant_name", "phone", "website"];

impl Replies {
    /// Parses `text` (read from `path`); keys it lacks are taken from `shipped`, the shipped
    /// file's text, when `path` is a studio's override.
    fn parse(
        text: &str,
        path: &Path,
        shipped: Option<&str>,
        studio: &StudioConfig,
    ) -> Result<Replies, PromptError> {
        let invalid = |message: String| PromptError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| invalid(e.to_string().trim_end().replace('\n', " | ")))?;
        if let Some(unknown) = table
            .keys()
            .find(|k| !REPLY_KEYS.iter().any(|(known, _)| known == k))
        {
            return Err(invalid(format!("unknown key `{unknown}`")));
        }
        if let Some(shipped) = shipped.and_then(|t| toml::from_str::<toml::Table>(t).ok()) {
            for (key, value) in shipped {
                table.entry(key).or_insert(value);
            }
        }
        let mut templates: HashMap<&str, Template> = HashMap::new();
        for (key, extra) in REPLY_KEYS {
            let value = table
                .get(*key)
                .ok_or_else(|| invalid(format!("missing key `{key}`")))?;
            let text = value
                .as_str()
                .ok_or_else(|| invalid(format!("key `{key}` must be a string")))?;
            if text.trim().is_empty() {
                return Err(invalid(format!("key `{key}` is empty")));
            }
            let allowed: Vec<&'static str> = REPLY_COMMON_VARS
                .iter()
                .chain(extra.iter())
                .copied()
                .collect();
            let template = Template::parse(text, &allowed, path).map_err(|e| match e {
                PromptError::UnknownPlaceholder {
                    path,
                    placeholder,
                    allowed,
                    ..
                } => PromptError::Invalid {
                    path,
                    message: format!(
                        "key `{key}`: unknown placeholder {{{placeholder}}} (allowed here: {allowed})"
                    ),
                },
                other => other,
            })?;
            templates.insert(key, template);
        }
        let mut take = |k: &str| templates.remove(k).expect("every key parsed above");
        Replies {
            ki_hinweis: take("ki_hinweis"),
            modell_fehler: take("modell_fehler"),
            gebucht: take("gebucht"),
            gebucht_bestaetigung_ausstehend: take("gebucht_bestaetigung_ausstehend"),
            bestaetigung_abgelaufen: take("bestaetigung_abgelaufen"),
            termin_gebucht: take("termin_gebucht"),
            termin_abgesagt: take("termin_abgesagt"),
            termin_belegt: take("termin_belegt"),
            alternative_zeile: take("alternative_zeile"),
            termin_belegt_keine_alternativen: take("termin_belegt_keine_alternativen"),
            fehler_vergangenheit: take("fehler_vergangenheit"),
            fehler_geschlossen: take("fehler_geschlossen"),
            fehler_daten_ungueltig: take("fehler_daten_ungueltig"),
            fehler_bereits_gebucht: take("fehler_bereits_gebucht"),
            fehler_limit: take("fehler_limit"),
            fehler_nicht_erreichbar: take("fehler_nicht_erreichbar"),
            fehler_nicht_eingerichtet: take("fehler_nicht_eingerichtet"),
            tap_abgesagt: take("tap_abgesagt"),
            tap_abgesagt_ohne_termin: take("tap_abgesagt_ohne_termin"),
            tap_vergangen: take("tap_vergangen"),
            tap_nicht_gefunden: take("tap_nicht_gefunden"),
            tap_verschieben: take("tap_verschieben"),
            tap_verschieben_ohne_vorschlag: take("tap_verschieben_ohne_vorschlag"),
            nachfass_danke: take("nachfass_danke"),
            nachfass_anmeldung: take("nachfass_anmeldung"),
            nachfass_verpasst: take("nachfass_verpasst"),
            nachfass_knopf_neuer_termin: take("nachfass_knopf_neuer_termin"),
            studio: studio_vars(studio),
        }
        .checked(path)
    }

    /// Refuses texts WhatsApp would refuse at send time, so the daemon says so at load.
    fn checked(self, path: &Path) -> Result<Replies, PromptError> {
        let label = self.follow_up_button();
        if label.chars().count() > crate::whatsapp::graph::MAX_BUTTON_TITLE_CHARS {
            return Err(PromptError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "key `nachfass_knopf_neuer_termin`: a button label has at most {} characters, \"{label}\" has {}",
                    crate::whatsapp::graph::MAX_BUTTON_TITLE_CHARS,
                    label.chars().count()
                ),
            });
        }
        Ok(self)
    }

    /// The label of the "new date" button on the missed-trial follow-up sent as a reply.
    pub fn follow_up_button(&self) -> String {
        self.with(&self.nachfass_knopf_neuer_termin, &[])
    }

    fn with(&self, t: &Template, extra: &[(&'static str, String)]) -> String {
        let mut vars = self.studio.clone();
        vars.extend(extra.iter().cloned());
        t.render(&vars).trim().to_string()
    }

    /// The AI disclosure sentence put in front of a first reply that lacks one.
    pub fn disclosure(&self) -> String {
        self.with(&self.ki_hinweis, &[])
    }

    /// Sent when the model's output cannot be used.
    pub fn model_error(&self) -> String {
        self.with(&self.modell_fehler, &[])
    }

    /// Booking confirmation.
    pub fn booked(&self, firstname: &str, start: &Zoned, confirmation_pending: bool) -> String {
        let t = if confirmation_pending {
            &self.gebucht_bestaetigung_ausstehend
        } else {
            &self.gebucht
        };
        self.with(
            t,
            &[
                ("vorname", firstname.to_string()),
                ("termin", describe_start(start)),
            ],
        )
    }

    /// A member's appointment booked (or moved) through the member flow.
    pub fn member_booked(&self, firstname: &str, start: &Zoned) -> String {
        self.with(
            &self.termin_gebucht,
            &[
                ("vorname", firstname.to_string()),
                ("termin", describe_start(start)),
            ],
        )
    }

    /// A member's appointment cancelled.
    pub fn member_canceled(&self, start: &Zoned) -> String {
        self.with(&self.termin_abgesagt, &[("termin", describe_start(start))])
    }

    /// A reserved trial that needed the contact's confirmation was dropped by MagicLine because
    /// the confirmation came too late.
    pub fn confirmation_expired(&self) -> String {
        self.with(&self.bestaetigung_abgelaufen, &[])
    }

    /// The wished slot is taken; `alternatives` are listed numbered from 1.
    pub fn slot_taken(&self, wished: &Zoned, alternatives: &[Zoned]) -> String {
        if alternatives.is_empty() {
            return self.with(
                &self.termin_belegt_keine_alternativen,
                &[("termin", describe_start(wished))],
            );
        }
        self.with(
            &self.termin_belegt,
            &[
                ("termin", describe_start(wished)),
                ("alternativen", self.numbered(alternatives)),
            ],
        )
    }

    /// `slots` as `alternative_zeile` lines, numbered from 1 (the `{alternativen}` of a text).
    fn numbered(&self, slots: &[Zoned]) -> String {
        let lines: Vec<String> = slots
            .iter()
            .enumerate()
            .map(|(i, z)| {
                self.with(
                    &self.alternative_zeile,
                    &[
                        ("nummer", (i + 1).to_string()),
                        ("termin", describe_start(z)),
                    ],
                )
            })
            .collect();
        lines.join("\n")
    }

    /// A trial cancelled by the reminder's button; `start` when it is known.
    pub fn tap_canceled(&self, start: Option<&Zoned>) -> String {
        match start {
            Some(s) => self.with(&self.tap_abgesagt, &[("termin", describe_start(s))]),
            None => self.with(&self.tap_abgesagt_ohne_termin, &[]),
        }
    }

    /// A button tapped on a trial that is already over.
    pub fn tap_past(&self) -> String {
        self.with(&self.tap_vergangen, &[])
    }

    /// A button tapped on a booking that no longer exists.
    pub fn tap_gone(&self) -> String {
        self.with(&self.tap_nicht_gefunden, &[])
    }

    /// The answer to "another date": `offered` listed numbered from 1, or the question for a
    /// day and time when nothing is free.
    pub fn tap_reschedule(&self, offered: &[Zoned]) -> String {
        if offered.is_empty() {
            return self.with(&self.tap_verschieben_ohne_vorschlag, &[]);
        }
        self.with(
            &self.tap_verschieben,
            &[("alternativen", self.numbered(offered))],
        )
    }

    /// The follow-up after a trial sent as a reply inside WhatsApp's 24-hour window (outside it
    /// the approved template goes instead): the thank-you, the sign-up question, or the
    /// message after a missed trial.
    pub fn follow_up(&self, which: FollowUp, firstname: &str) -> String {
        let t = match which {
            FollowUp::Thanks => &self.nachfass_danke,
            FollowUp::SignUp => &self.nachfass_anmeldung,
            FollowUp::Missed => &self.nachfass_verpasst,
        };
        self.with(t, &[("vorname", firstname.to_string())])
    }

    /// The text for a failed booking of `wished`.
    pub fn failure(&self, failure: &BookingFailure, wished: &Zoned) -> String {
        let t = match failure {
            BookingFailure::PastStart => &self.fehler_vergangenheit,
            BookingFailure::StudioClosed => &self.fehler_geschlossen,
            BookingFailure::InvalidCustomerData => &self.fehler_daten_ungueltig,
            BookingFailure::AlreadyBooked => &self.fehler_bereits_gebucht,
            BookingFailure::LimitReached => &self.fehler_limit,
            // The engine hands these over to staff; should a caller still ask, the customer hears
            // that the booking did not go through and the studio will be in touch.
            BookingFailure::Unavailable | BookingFailure::OtherPersonsAccount => {
                &self.fehler_nicht_erreichbar
            }
            BookingFailure::NotConfigured => &self.fehler_nicht_eingerichtet,
        };
        self.with(t, &[("termin", describe_start(wished))])
    }
}

/// All prompt files, loaded and validated.
#[derive(Debug, Clone)]
pub struct Prompts {
    static_system: String,
    dynamic: Template,
    rule_new_lead: Template,
    rule_name_known: Template,
    rule_trial_booked: Template,
    rule_member: Template,
    first_contact: Template,
    replies: Replies,
    studio: Vars,
    sources: Vec<PathBuf>,
}

impl Prompts {
    /// Loads the prompts from the configured directories (override first, per file).
    pub fn load(service: &ServiceConfig, studio: &StudioConfig) -> Result<Prompts, PromptError> {
        Prompts::load_from(
            &service.prompts_dir,
            Some(&service.prompts_override_dir),
            studio,
        )
    }

    /// Loads the prompts from `dir`, preferring files in `override_dir`.
    pub fn load_from(
        dir: &Path,
        override_dir: Option<&Path>,
        studio: &StudioConfig,
    ) -> Result<Prompts, PromptError> {
        let mut sources = Vec::new();
        let mut read = |name: &str| -> Result<(String, PathBuf), PromptError> {
            let path = locate(name, dir, override_dir)?;
            let text = std::fs::read_to_string(&path).map_err(|source| PromptError::Read {
                path: path.clone(),
                source,
            })?;
            sources.push(path.clone());
            Ok((text, path))
        };
        let with = |sets: &[&[&'static str]]| -> Vec<&'static str> {
            sets.iter().flat_map(|s| s.iter().copied()).collect()
        };
        let static_vars = with(&[STUDIO_VARS]);
        let rule_vars = with(&[STUDIO_VARS, CUSTOMER_VARS]);
        let dynamic_vars = with(&[STUDIO_VARS, CUSTOMER_VARS, SECTION_VARS]);
        let first_contact_vars = with(&[STUDIO_VARS, &["name"]]);

        let (text, path) = read(STATIC_FILE)?;
        let static_template = Template::parse(&text, &static_vars, &path)?;
        let (text, path) = read(DYNAMIC_FILE)?;
        let dynamic = Template::parse(&text, &dynamic_vars, &path)?;
        let mut rule = |name: &str, allowed: &[&'static str]| -> Result<Template, PromptError> {
            let (text, path) = read(name)?;
            Template::parse(&text, allowed, &path)
        };
        let rule_new_lead = rule(RULE_NEW_LEAD_FILE, &rule_vars)?;
        let rule_name_known = rule(RULE_NAME_KNOWN_FILE, &rule_vars)?;
        let rule_trial_booked = rule(RULE_TRIAL_BOOKED_FILE, &rule_vars)?;
        let rule_member = rule(RULE_MEMBER_FILE, &rule_vars)?;
        let first_contact = rule(FIRST_CONTACT_FILE, &first_contact_vars)?;
        let (text, path) = read(REPLIES_FILE)?;
        let shipped_path = dir.join(REPLIES_FILE);
        let shipped = if path == shipped_path {
            None
        } else {
            std::fs::read_to_string(&shipped_path).ok()
        };
        let replies = Replies::parse(&text, &path, shipped.as_deref(), studio)?;

        let studio_vars = studio_vars(studio);
        Ok(Prompts {
            static_system: static_template.render(&studio_vars).trim().to_string(),
            dynamic,
            rule_new_lead,
            rule_name_known,
            rule_trial_booked,
            rule_member,
            first_contact,
            replies,
            studio: studio_vars,
            sources,
        })
    }

    /// The static system prompt (identical for every request).
    pub fn static_system(&self) -> &str {
        &self.static_system
    }

    /// The fixed reply texts.
    pub fn replies(&self) -> &Replies {
        &self.replies
    }

    /// The files actually used, in load order (for `doctor` and start-up logs).
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// The model request for `customer` at `now` with the given history window.
    pub fn render(&self, customer: &Customer, now: &Zoned, history: Vec<ChatMessage>) -> Prompt {
        let mut vars = self.studio.clone();
        vars.extend(customer_vars(customer, now));
        let rule = match customer.meta.stage {
            Stage::NewLead => &self.rule_new_lead,
            Stage::NameKnown => &self.rule_name_known,
            Stage::TrialBooked => &self.rule_trial_booked,
            Stage::Member => &self.rule_member,
        };
        let regeln = rule.render(&vars).trim().to_string();
        let erstkontakt = if customer.body.conversation.disclosed_ai {
            String::new()
        } else {
            self.first_contact.render(&vars).trim().to_string()
        };
        vars.insert("regeln", regeln);
        vars.insert("erstkontakt", erstkontakt);
        Prompt {
            static_system: self.static_system.clone(),
            dynamic_system: self.dynamic.render(&vars).trim().to_string(),
            history,
        }
    }
}

fn locate(name: &str, dir: &Path, override_dir: Option<&Path>) -> Result<PathBuf, PromptError> {
    let candidates: Vec<PathBuf> = override_dir
        .into_iter()
        .chain(std::iter::once(dir))
        .map(|d| d.join(name))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| PromptError::Missing {
            name: name.to_string(),
            searched: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn or_not_given(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        NOT_GIVEN.to_string()
    } else {
        s.to_string()
    }
}

fn bullet_list(items: &[String]) -> String {
    let lines: Vec<String> = items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| format!("- {s}"))
        .collect();
    if lines.is_empty() {
        format!("- {NOT_GIVEN}")
    } else {
        lines.join("\n")
    }
}

fn studio_vars(studio: &StudioConfig) -> Vars {
    Vars::from([
        ("assistant_name", or_not_given(&studio.assistant_name)),
        ("studio_name", or_not_given(&studio.name)),
        ("address", or_not_given(&studio.address)),
        ("phone", or_not_given(&studio.phone)),
        ("website", or_not_given(&studio.website)),
        ("opening_hours", bullet_list(&studio.opening_hours)),
        ("offers", bullet_list(&studio.offers)),
        ("trial_info", or_not_given(&studio.trial_info)),
    ])
}

fn customer_vars(c: &Customer, now: &Zoned) -> Vars {
    let now = now.with_time_zone(berlin_tz());
    let profile = &c.body.profile;
    let name = match (&profile.vorname, &profile.nachname) {
        (Some(v), Some(n)) => format!("{v} {n}"),
        (Some(v), None) => v.clone(),
        _ => match &c.body.contact_name {
            Some(wa) => format!("unbekannt (WhatsApp-Profilname: {wa})"),
            None => "unbekannt".to_string(),
        },
    };
    let mut known = serde_json::to_value(profile).unwrap_or_default();
    if let Some(map) = known.as_object_mut() {
        // Internal ids mean nothing to the customer; the booked date is shown under "buchung".
        map.remove("magicline_customer_id");
        map.remove("probetraining_datum");
        // The wish is shown as the person would say it, not in the stored machine form.
        if let Some(wish) = map.remove("wunschtermin") {
            let shown = wish
                .as_str()
                .and_then(|w| w.parse::<Zoned>().ok())
                .map_or(wish, |z| describe_start(&z).into());
            map.insert("wunschtermin".into(), shown);
        }
    }
    let missing: Vec<&str> = [
        (profile.vorname.is_none(), "Vorname"),
        (profile.nachname.is_none(), "Nachname"),
        (profile.email.is_none(), "E-Mail-Adresse"),
    ]
    .into_iter()
    .filter_map(|(m, label)| m.then_some(label))
    .collect();
    let wish_known = profile.wunschtermin.is_some();
    let fehlende = if c.meta.stage == Stage::TrialBooked {
        "nichts, das Probetraining ist gebucht".to_string()
    } else if c.meta.stage == Stage::Member {
        "nichts, Mitglieder buchen kein Probetraining".to_string()
    } else if missing.is_empty() && wish_known {
        "nichts, der Wunschtermin ist bekannt".to_string()
    } else if missing.is_empty() {
        "nur noch der Wunschtermin".to_string()
    } else if wish_known {
        missing.join(", ")
    } else {
        format!("{}, Wunschtermin", missing.join(", "))
    };
    let buchung = booking_state(c);
    Vars::from([
        ("wochentag", weekday_de(now.weekday()).to_string()),
        ("datum", now.strftime("%d.%m.%Y").to_string()),
        ("uhrzeit", now.strftime("%H:%M").to_string()),
        ("name", name),
        ("status", c.status_label().to_string()),
        ("profil", known.to_string()),
        ("fehlende_angaben", fehlende),
        ("buchung", buchung),
    ])
}

fn booking_state(c: &Customer) -> String {
    let offered: Vec<String> = c
        .body
        .conversation
        .offered_slots
        .iter()
        .filter_map(|s| s.parse::<Zoned>().ok())
        .enumerate()
        .map(|(i, z)| format!("{}. {}", i + 1, describe_start(&z)))
        .collect();
    let booked = c.body.profile.probetraining_datum.as_deref().map(|d| {
        d.parse::<Zoned>()
            .map(|z| describe_start(&z))
            .unwrap_or_else(|_| d.to_string())
    });
    match (booked, c.meta.stage) {
        (Some(d), Stage::TrialBooked) => format!("gebucht am {d}"),
        _ if !offered.is_empty() => format!(
            "noch nicht gebucht; der Wunschtermin war belegt, angeboten wurden: {}",
            offered.join("; ")
        ),
        _ => "noch nicht gebucht".to_string(),
    }
}

/// German rendering of a slot, e.g. "Dienstag, 20.01. um 18:00 Uhr".
pub fn describe_start(start: &Zoned) -> String {
    let z = start.with_time_zone(berlin_tz());
    When {
        date: Some(z.date()),
        time: Some(z.time()),
        part_of_day: None,
    }
    .describe_de()
}

fn weekday_de(day: Weekday) -> &'static str {
    match day {
        Weekday::Monday => "Montag",
        Weekday::Tuesday => "Dienstag",
        Weekday::Wednesday => "Mittwoch",
        Weekday::Thursday => "Donnerstag",
        Weekday::Friday => "Freitag",
        Weekday::Saturday => "Samstag",
        Weekday::Sunday => "Sonntag",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::crypto::Pseudonym;

    pub(crate) fn shipped_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../prompts")
    }

    pub(crate) fn studio() -> StudioConfig {
        StudioConfig {
            name: "FitBox Braunschweig".into(),
            assistant_name: "Max".into(),
            address: "Hauptstraße 1, 38100 Braunschweig".into(),
            phone: "0531 123456".into(),
            website: "https://fitbox.example".into(),
            opening_hours: vec!["Mo–Fr 7–22 Uhr".into(), "Sa–So 9–18 Uhr".into()],
            offers: vec!["Flex-Tarif 39,90 € im Monat".into()],
            trial_info: "60 Minuten mit Trainer, bring Sportschuhe mit.".into(),
            ..StudioConfig::default()
        }
    }

    fn customer(seed: u8) -> Customer {
        let now: jiff::Timestamp = "2026-01-19T10:00:00Z".parse().unwrap();
        Customer::new(Pseudonym([seed; 16]), "+49 151 0000000", now)
    }

    fn berlin(s: &str) -> Zoned {
        s.parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(berlin_tz())
            .unwrap()
    }

    #[test]
    fn an_empty_first_name_leaves_no_stray_comma_or_space() {
        let render = |text: &str, name: &str| {
            let t = Template::parse(text, &["vorname"], Path::new("t")).unwrap();
            t.render(&Vars::from([("vorname", name.to_string())]))
        };
        for (text, want) in [
            (
                "Danke, dass du da warst, {vorname}! 🙌 Wie war's?",
                "Danke, dass du da warst! 🙌 Wie war's?",
            ),
            ("Hi {vorname}, hast du Fragen?", "Hi, hast du Fragen?"),
            ("Schade, {vorname}. Magst du?", "Schade. Magst du?"),
            ("Danke {vorname} für alles.", "Danke für alles."),
            ("Bis bald, {vorname}", "Bis bald"),
            ("{vorname}, schön dich zu sehen.", "schön dich zu sehen."),
            ("Top, {vorname}!\n{vorname}, bis dann.", "Top!\nbis dann."),
        ] {
            assert_eq!(render(text, ""), want, "{text}");
            assert_eq!(render(text, "  "), want, "{text} (blank)");
        }
        // A name is put in as it is.
        assert_eq!(
            render("Hi {vorname}, hast du Fragen?", "Lena"),
            "Hi Lena, hast du Fragen?"
        );
        assert_eq!(render("warst, {vorname}!", "Lena"), "warst, Lena!");
    }

    #[test]
    fn shipped_follow_ups_without_a_first_name_read_well() {
        let p = Prompts::load_from(&shipped_dir(), None, &studio()).unwrap();
        for which in [FollowUp::Thanks, FollowUp::SignUp, FollowUp::Missed] {
            let text = p.replies().follow_up(which, "");
            assert!(
                !text.contains(", !") && !text.contains(" ,") && !text.contains(",."),
                "{text}"
            );
            assert!(!text.contains("  "), "{text}");
        }
        assert!(p
            .replies()
            .follow_up(FollowUp::Thanks, "")
            .starts_with("Danke, dass du heute beim Probetraining warst! "));
    }

    #[test]
    fn shipped_prompts_load_and_fill_every_placeholder() {
        let p = Prompts::load_from(&shipped_dir(), None, &studio()).unwrap();
        assert_eq!(p.sources().len(), 8);
        let s = p.static_system();
        assert!(s.contains("Du bist Max, der digitale Assistent (KI) von FitBox Braunschweig"));
        assert!(s.contains("- Mo–Fr 7–22 Uhr\n- Sa–So 9–18 Uhr"));
        assert!(s.contains("Flex-Tarif 39,90 €"));
        assert!(s.contains(r#"{"intent": "none", "profil": {"vorname": "Lena"}"#));
        let mut c = customer(1);
        c.body.profile.vorname = Some("Lena".into());
        c.meta.stage = Stage::NameKnown;
        let prompt = p.render(&c, &berlin("2026-01-20T14:30"), Vec::new());
        let d = &prompt.dynamic_system;
        assert!(
            d.contains("Heute ist Dienstag, der 20.01.2026, es ist 14:30 Uhr"),
            "{d}"
        );
        assert!(d.contains("Name: Lena\n"));
        assert!(d.contains("Status: Name bekannt"));
        assert!(d.contains(r#"Bekanntes Profil: {"vorname":"Lena"}"#));
        assert!(d.contains("Nachname, E-Mail-Adresse, Wunschtermin"));
        assert!(d.contains("Du kennst den Vornamen"));
        assert!(d.contains("erste Nachricht dieses Kontakts"));
        // No placeholder survives rendering.
        for text in [s, d.as_str()] {
            for name in STUDIO_VARS.iter().chain(CUSTOMER_VARS).chain(SECTION_VARS) {
                assert!(
                    !text.contains(&format!("{{{name}}}")),
                    "{name} left in {text}"
                );
            }
        }
    }

    #[test]
    fn static_part_is_identical_across_customers_and_requests() {
        let p = Prompts::load_from(&shipped_dir(), None, &studio()).unwrap();
        let mut a = customer(1);
        a.body.profile.vorname = Some("Jana".into());
        a.meta.stage = Stage::NameKnown;
        let mut b = customer(2);
        b.body.conversation.disclosed_ai = true;
        b.meta.stage = Stage::TrialBooked;
        b.body.profile.probetraining_datum = Some(berlin("2026-01-22T18:00").to_string());
        let pa = p.render(&a, &berlin("2026-01-20T14:30"), Vec::new());
        let pb = p.render(&b, &berlin("2026-03-01T09:05"), Vec::new());
        assert_eq!(pa.static_system, pb.static_system);
        assert_ne!(pa.dynamic_system, pb.dynamic_system);
        assert!(pb
            .dynamic_system
            .contains("gebucht am Donnerstag, 22.01. um 18:00 Uhr"));
        assert!(!pb.dynamic_system.contains("erste Nachricht"));
        assert!(pb.dynamic_system.contains("Verkauf nichts"));
        assert!(pb
            .dynamic_system
            .contains("Für die Buchung fehlt noch: nichts, das Probetraining ist gebucht"));
        // Nothing customer- or time-specific leaks into the static part.
        for needle in ["Jana", "20.01.2026", "14:30", "Name bekannt"] {
            assert!(!pa.static_system.contains(needle), "{needle}");
        }
    }

    #[test]
    fn a_remembered_wish_is_shown_as_known_and_not_asked_for() {
        let p = Prompts::load_from(&shipped_dir(), None, &studio()).unwrap();
        let mut c = customer(3);
        c.meta.stage = Stage::NameKnown;
        c.body.profile.vorname = Some("Jana".into());
        c.body.profile.wunschtermin = Some(berlin("2026-01-20T18:00").to_string());
        let d = p
            .render(&c, &berlin("2026-01-19T10:00"), Vec::new())
            .dynamic_system;
        assert!(
            d.contains(r#""wunschtermin":"Dienstag, 20.01. um 18:00 Uhr""#),
            "{d}"
        );
        assert!(d.contains("Für die Buchung fehlt noch: Nachname, E-Mail-Adresse\n"));
        c.body.profile.nachname = Some("Meier".into());
        c.body.profile.email = Some("jana@example.de".into());
        let d = p
            .render(&c, &berlin("2026-01-19T10:00"), Vec::new())
            .dynamic_system;
        assert!(d.contains("Für die Buchung fehlt noch: nichts, der Wunschtermin ist bekannt"));
    }

    #[test]
    fn empty_studio_facts_say_not_given() {
        let studio = StudioConfig {
            offers: Vec::new(),
            address: String::new(),
            ..studio()
        };
        let p = Prompts::load_from(&shipped_dir(), None, &studio).unwrap();
        assert!(p.static_system().contains("Adresse: nicht hinterlegt"));
        assert!(p
            .static_system()
            .contains("Angebote und Preise:\n- nicht hinterlegt"));
    }

    #[test]
    fn placeholder_syntax() {
        let path = Path::new("t.txt");
        let t = Template::parse(
            r#"Hallo { name }! {"json": {"x": 1}} {} { } {1a} {name"#,
            &["name"],
            path,
        )
        .unwrap();
        assert_eq!(t.placeholders(), vec!["name"]);
        let vars = Vars::from([("name", "Lena".to_string())]);
        assert_eq!(
            t.render(&vars),
            r#"Hallo Lena! {"json": {"x": 1}} {} { } {1a} {name"#
        );
    }

    #[test]
    fn unknown_placeholder_is_a_clear_error() {
        let err = Template::parse("eins\nzwei {datum} drei", &["name"], Path::new("x.txt"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "prompt file x.txt, line 2: unknown placeholder {datum} (allowed here: {name})"
        );
    }

    fn copy_shipped(to: &Path) {
        std::fs::create_dir_all(to.join("rules")).unwrap();
        for name in [
            STATIC_FILE,
            DYNAMIC_FILE,
            RULE_NEW_LEAD_FILE,
            RULE_NAME_KNOWN_FILE,
            RULE_TRIAL_BOOKED_FILE,
            RULE_MEMBER_FILE,
            FIRST_CONTACT_FILE,
            REPLIES_FILE,
        ] {
            std::fs::copy(shipped_dir().join(name), to.join(name)).unwrap();
        }
    }

    #[test]
    fn broken_template_fails_at_load() {
        let dir = tempfile::tempdir().unwrap();
        copy_shipped(dir.path());
        // The static part must not use per-request values: that would defeat the KV cache.
        std::fs::write(dir.path().join(STATIC_FILE), "Heute ist {datum}.").unwrap();
        let err = Prompts::load_from(dir.path(), None, &studio()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("persona.static.txt, line 1: unknown placeholder {datum}"),
            "{msg}"
        );

        copy_shipped(dir.path());
        std::fs::write(
            dir.path().join(REPLIES_FILE),
            std::fs::read_to_string(shipped_dir().join(REPLIES_FILE))
                .unwrap()
                .replace("{vorname}!", "{kundenname}!"),
        )
        .unwrap();
        let msg = Prompts::load_from(dir.path(), None, &studio())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("replies.toml: key `gebucht`: unknown placeholder {kundenname}"),
            "{msg}"
        );

        copy_shipped(dir.path());
        std::fs::remove_file(dir.path().join(RULE_NAME_KNOWN_FILE)).unwrap();
        let msg = Prompts::load_from(dir.path(), None, &studio())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("prompt file rules/name_bekannt.txt not found"),
            "{msg}"
        );
    }

    #[test]
    fn replies_toml_rejects_unknown_and_missing_keys() {
        let dir = tempfile::tempdir().unwrap();
        copy_shipped(dir.path());
        let shipped = std::fs::read_to_string(shipped_dir().join(REPLIES_FILE)).unwrap();
        std::fs::write(
            dir.path().join(REPLIES_FILE),
            format!("{shipped}\ngebuchtt = \"x\"\n"),
        )
        .unwrap();
        let msg = Prompts::load_from(dir.path(), None, &studio())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unknown key `gebuchtt`"), "{msg}");
        let without: String = shipped
            .lines()
            .filter(|l| !l.starts_with("fehler_limit"))
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.path().join(REPLIES_FILE), without).unwrap();
        let msg = Prompts::load_from(dir.path(), None, &studio())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("missing key `fehler_limit`"), "{msg}");
    }

    #[test]
    fn a_replies_override_may_hold_only_the_texts_it_changes() {
        let over = tempfile::tempdir().unwrap();
        std::fs::write(
            over.path().join(REPLIES_FILE),
            "tap_vergangen = \"Der Termin war schon, {studio_name}.\"\n",
        )
        .unwrap();
        let p = Prompts::load_from(&shipped_dir(), Some(over.path()), &studio()).unwrap();
        assert_eq!(
            p.replies().tap_past(),
            "Der Termin war schon, FitBox Braunschweig."
        );
        // Everything else comes from the shipped file.
        assert!(p.replies().tap_gone().contains("nicht mehr"));
        // A button label longer than WhatsApp allows is refused at load, not at send time.
        std::fs::write(
            over.path().join(REPLIES_FILE),
            "nachfass_knopf_neuer_termin = \"Neuen Termin aussuchen\"\n",
        )
        .unwrap();
        let msg = Prompts::load_from(&shipped_dir(), Some(over.path()), &studio())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("at most 20 characters"), "{msg}");
        // A key the shipped file does not know is still refused.
        std::fs::write(over.path().join(REPLIES_FILE), "tap_vergangenn = \"x\"\n").unwrap();
        let msg = Prompts::load_from(&shipped_dir(), Some(over.path()), &studio())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unknown key `tap_vergangenn`"), "{msg}");
    }

    #[test]
    fn override_dir_wins_per_file() {
        let over = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(over.path().join("rules")).unwrap();
        std::fs::write(
            over.path().join(RULE_NEW_LEAD_FILE),
            "Sag {studio_name} und frag nach dem Ziel.",
        )
        .unwrap();
        let p = Prompts::load_from(&shipped_dir(), Some(over.path()), &studio()).unwrap();
        assert_eq!(p.sources()[2], over.path().join(RULE_NEW_LEAD_FILE));
        assert_eq!(p.sources()[0], shipped_dir().join(STATIC_FILE));
        let prompt = p.render(&customer(3), &berlin("2026-01-20T14:30"), Vec::new());
        assert!(prompt
            .dynamic_system
            .contains("Sag FitBox Braunschweig und frag nach dem Ziel."));
    }

    #[test]
    fn reply_texts() {
        let p = Prompts::load_from(&shipped_dir(), None, &studio()).unwrap();
        let r = p.replies();
        let wished = berlin("2026-01-20T18:00");
        let booked = r.booked("Lena", &wished, false);
        assert!(booked.contains("Lena"));
        assert!(booked.contains("Dienstag, 20.01. um 18:00 Uhr"));
        let taken = r.slot_taken(
            &wished,
            &[berlin("2026-01-20T19:00"), berlin("2026-01-21T18:00")],
        );
        assert!(
            taken.contains("1. Dienstag, 20.01. um 19:00 Uhr\n2. Mittwoch, 21.01. um 18:00 Uhr")
        );
        assert!(r.slot_taken(&wished, &[]).contains("nichts frei"));
        assert!(r
            .disclosure()
            .contains("Max, der digitale Assistent (KI) von FitBox"));
        assert!(r
            .failure(&BookingFailure::PastStart, &wished)
            .contains("Vergangenheit"));
    }
}
