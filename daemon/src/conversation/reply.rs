//! The model's answer: the JSON schema it is constrained to, parsing into a typed [`ModelReply`],
//! and the rules by which its profile facts are merged into the stored [`Profile`].
//!
//! Merge rules, because the model's output is a suggestion and the store is the record:
//! - The model never erases: `null`, empty strings and values that fail validation are ignored,
//!   so a known field keeps its value. A valid new value replaces the old one (customers correct
//!   typos in their e-mail address).
//! - Names contain letters (plus space, hyphen, apostrophe, dot) and nothing else; all-lowercase
//!   names get capitalised. E-mail addresses must look deliverable. Ages outside 14..=100 are
//!   ignored. Enum-like fields are normalised to one spelling and ignored when they match none.
//! - Free-text fields are trimmed, whitespace-collapsed and capped in length.
//! - `probetraining_datum`, `wunschtermin` and `magicline_customer_id` belong to the booking,
//!   never to the model's profile facts (the wish comes from the answer's own `wunschtermin`).

use serde_json::{json, Map, Value};

use crate::store::customers::Profile;

/// Profile fields the model may fill, in schema order.
pub const MODEL_PROFILE_FIELDS: &[&str] = &[
    "alter",
    "beruf",
    "budget_bewusst",
    "dringlichkeit",
    "email",
    "fitness_level",
    "fitness_ziel",
    "geschlecht",
    "gesundheitliche_einschraenkungen",
    "interesse_level",
    "mitglied",
    "nachname",
    "trainingsfrequenz",
    "vorname",
    "wie_gefunden",
    "wohnort",
    "zeitfenster",
];

/// Longest reply text passed on (WhatsApp allows 4096 characters; a chat reply is far shorter).
pub const MAX_REPLY_CHARS: usize = 1500;
/// Longest stored name.
pub const MAX_NAME_CHARS: usize = 50;
/// Longest stored free-text profile value.
pub const MAX_TEXT_CHARS: usize = 200;
const MAX_EMAIL_CHARS: usize = 254;

/// What the customer wants, as the model reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Intent {
    /// Anything else (also what an unknown intent reads as).
    #[default]
    None,
    /// Wants a trial training or names a time for one.
    BookTrial,
    /// Wants to move a booked trial to another time.
    Reschedule,
    /// Wants to cancel a booked appointment (handed to staff).
    CancelAppointment,
    /// Complains or is unhappy (handed to staff).
    Complaint,
    /// Has a matter with an existing contract: cancelling a membership, a bill or a payment in
    /// dispute (handed to staff). Prices and memberships on offer are a [`Intent::Question`].
    ContractQuestion,
    /// Asks a health question the studio's facts do not answer (handed to staff).
    HealthQuestion,
    /// Asks to talk to a person (handed to staff).
    WantsPerson,
    /// Wants no more messages.
    OptOut,
    /// Asks about the studio or training.
    Question,
}

impl Intent {
    /// Every intent, in the order the schema lists them.
    pub const ALL: [Intent; 10] = [
        Intent::None,
        Intent::BookTrial,
        Intent::Reschedule,
        Intent::CancelAppointment,
        Intent::Complaint,
        Intent::ContractQuestion,
        Intent::HealthQuestion,
        Intent::WantsPerson,
        Intent::OptOut,
        Intent::Question,
    ];

    /// The wire name in the schema.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::None => "none",
            Intent::BookTrial => "book_trial",
            Intent::Reschedule => "reschedule",
            Intent::CancelAppointment => "cancel_appointment",
            Intent::Complaint => "complaint",
            Intent::ContractQuestion => "contract_question",
            Intent::HealthQuestion => "health_question",
            Intent::WantsPerson => "wants_person",
            Intent::OptOut => "opt_out",
            Intent::Question => "question",
        }
    }

    /// The intent with this wire name, if there is one.
    pub fn parse(s: &str) -> Option<Intent> {
        Intent::ALL.into_iter().find(|i| i.as_str() == s)
    }
}

/// The JSON Schema the model's output is constrained to. Properties are listed in alphabetical
/// order, the order serde_json keeps them in, so the grammar and the prompt's example agree.
pub fn schema() -> Value {
    let mut profil = Map::new();
    for field in MODEL_PROFILE_FIELDS {
        let ty = if *field == "alter" {
            "integer"
        } else {
            "string"
        };
        profil.insert((*field).to_string(), json!({ "type": ty }));
    }
    let intents: Vec<&str> = Intent::ALL.iter().map(|i| i.as_str()).collect();
    json!({
        "type": "object",
        "properties": {
            "intent": { "type": "string", "enum": intents },
            "profil": {
                "type": "object",
                "properties": profil,
                "additionalProperties": false
            },
            "reply": { "type": "string" },
            "wunschtermin": { "type": ["string", "null"] }
        },
        "required": ["intent", "profil", "reply", "wunschtermin"],
        "additionalProperties": false
    })
}

/// The model's answer, typed.
#[derive(Clone, PartialEq, Default)]
pub struct ModelReply {
    /// The WhatsApp message to send (trimmed, capped).
    pub reply: String,
    /// Profile facts as the model wrote them; see [`merge_profile`].
    pub profil: Map<String, Value>,
    /// What the customer wants.
    pub intent: Intent,
    /// The wished date in words, if any.
    pub wunschtermin: Option<String>,
}

impl std::fmt::Debug for ModelReply {
    // Reply text and profile values are personal data: only shapes in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ModelReply{{reply: {} chars, profil: {:?}, intent: {:?}, wunschtermin: {}}}",
            self.reply.chars().count(),
            self.profil.keys().collect::<Vec<_>>(),
            self.intent,
            self.wunschtermin.is_some()
        )
    }
}

/// Why the model's output could not be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReplyError {
    /// The output does not parse as a JSON object.
    #[error("model output is not a JSON object: {0}")]
    NotJson(String),
    /// `reply` is missing, not a string, or blank.
    #[error("model output has no usable `reply` text")]
    NoReply,
}

/// Parses the model's output. Lenient beyond what the schema guarantees: an unknown intent reads
/// as [`Intent::None`], a missing or malformed `profil` as empty; only a missing reply text fails.
pub fn parse(text: &str) -> Result<ModelReply, ReplyError> {
    let value: Value = serde_json::from_str(text.trim()).map_err(|e| {
        // serde's message carries a position, never content.
        ReplyError::NotJson(format!("line {} column {}", e.line(), e.column()))
    })?;
    let Value::Object(mut obj) = value else {
        return Err(ReplyError::NotJson("not an object".into()));
    };
    let reply = match obj.remove("reply") {
        Some(Value::String(s)) => cap_chars(s.trim(), MAX_REPLY_CHARS),
        _ => String::new(),
    };
    if reply.is_empty() {
        return Err(ReplyError::NoReply);
    }
    let profil = match obj.remove("profil") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let intent = obj
        .get("intent")
        .and_then(Value::as_str)
        .and_then(Intent::parse)
        .unwrap_or_default();
    let wunschtermin = obj
        .get("wunschtermin")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| cap_chars(s, MAX_TEXT_CHARS));
    Ok(ModelReply {
        reply,
        profil,
        intent,
        wunschtermin,
    })
}

/// Merges the model's profile facts into `profile` by the rules in the module doc. Returns the
/// names of the fields that changed.
pub fn merge_profile(profile: &mut Profile, update: &Map<String, Value>) -> Vec<&'static str> {
    let mut changed = Vec::new();
    for field in MODEL_PROFILE_FIELDS {
        let Some(value) = update.get(*field) else {
            continue;
        };
        if field == &"alter" {
            if let Some(age) = clean_age(value) {
                if profile.alter != Some(age) {
                    profile.alter = Some(age);
                    changed.push(*field);
                }
            }
            continue;
        }
        let Some(raw) = as_text(value) else { continue };
        let cleaned = match *field {
            "vorname" | "nachname" => clean_name(&raw),
            "email" => clean_email(&raw),
            "geschlecht" => normalise(&raw, GESCHLECHT),
            "fitness_level" => normalise(&raw, FITNESS_LEVEL),
            "dringlichkeit" | "interesse_level" => normalise(&raw, LEVEL),
            "budget_bewusst" | "mitglied" => normalise(&raw, YES_NO),
            _ => clean_text(&raw),
        };
        let Some(new) = cleaned else { continue };
        let slot = text_field(profile, field);
        if slot.as_deref() != Some(new.as_str()) {
            *slot = Some(new);
            changed.push(*field);
        }
    }
    changed
}

fn text_field<'a>(p: &'a mut Profile, field: &str) -> &'a mut Option<String> {
    match field {
        "vorname" => &mut p.vorname,
        "nachname" => &mut p.nachname,
        "email" => &mut p.email,
        "geschlecht" => &mut p.geschlecht,
        "wohnort" => &mut p.wohnort,
        "beruf" => &mut p.beruf,
        "fitness_ziel" => &mut p.fitness_ziel,
        "fitness_level" => &mut p.fitness_level,
        "trainingsfrequenz" => &mut p.trainingsfrequenz,
        "gesundheitliche_einschraenkungen" => &mut p.gesundheitliche_einschraenkungen,
        "budget_bewusst" => &mut p.budget_bewusst,
        "mitglied" => &mut p.mitglied,
        "zeitfenster" => &mut p.zeitfenster,
        "dringlichkeit" => &mut p.dringlichkeit,
        "wie_gefunden" => &mut p.wie_gefunden,
        "interesse_level" => &mut p.interesse_level,
        other => unreachable!("not a model text field: {other}"),
    }
}

/// Strings as they are, numbers and booleans as text (the model sometimes writes `3` for
/// "trainingsfrequenz" or `true` for "budget_bewusst"); anything else is ignored.
fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(true) => Some("ja".into()),
        Value::Bool(false) => Some("nein".into()),
        _ => None,
    }
}

/// Values a model writes when it means "unknown".
const PLACEHOLDER_VALUES: &[&str] = &[
    "null",
    "none",
    "nil",
    "n/a",
    "na",
    "-",
    "?",
    "unbekannt",
    "keine angabe",
    "nicht angegeben",
    "nicht bekannt",
    "k.a.",
    "unknown",
    "leer",
];

/// Trims, drops control characters, collapses whitespace; `None` when nothing (meaningful) is left.
fn collapse(raw: &str) -> Option<String> {
    let s: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let lower = s.to_lowercase();
    if s.is_empty() || PLACEHOLDER_VALUES.contains(&lower.as_str()) {
        None
    } else {
        Some(s)
    }
}

fn cap_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].trim_end().to_string(),
        None => s.to_string(),
    }
}

fn clean_text(raw: &str) -> Option<String> {
    collapse(raw).map(|s| cap_chars(&s, MAX_TEXT_CHARS))
}

fn clean_name(raw: &str) -> Option<String> {
    let s = collapse(raw)?;
    if s.chars().count() > MAX_NAME_CHARS
        || !s.chars().any(char::is_alphabetic)
        || !s
            .chars()
            .all(|c| c.is_alphabetic() || matches!(c, ' ' | '-' | '\'' | '’' | '.'))
    {
        return None;
    }
    if s.chars().any(char::is_uppercase) {
        return Some(s);
    }
    // "lena" → "Lena", "anna-lena" → "Anna-Lena".
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = matches!(c, ' ' | '-');
    }
    Some(out)
}

/// A plausibility check, not RFC 5322: one `@`, a dot-atom local part, a host name with a
/// letters-only top-level domain. The domain is lowercased.
fn clean_email(raw: &str) -> Option<String> {
    let s = raw
        .trim()
        .trim_start_matches("mailto:")
        .trim_matches(|c| matches!(c, '<' | '>'));
    if s.len() > MAX_EMAIL_CHARS {
        return None;
    }
    let (local, domain) = s.split_once('@')?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    let domain = domain.to_ascii_lowercase();
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()));
    (local_ok && domain_ok).then(|| format!("{local}@{domain}"))
}

fn clean_age(v: &Value) -> Option<u8> {
    let n: i64 = match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))?,
        Value::String(s) => {
            let s = s.trim().to_lowercase();
            let digits = s.strip_suffix("jahre").unwrap_or(&s).trim();
            digits.parse().ok()?
        }
        _ => return None,
    };
    (14..=100).contains(&n).then_some(n as u8)
}

/// (canonical value, accepted spellings after lowercasing and umlaut folding).
type Canon = &'static [(&'static str, &'static [&'static str])];

const GESCHLECHT: Canon = &[
    (
        "maennlich",
        &["maennlich", "mannlich", "m", "mann", "male", "man", "herr"],
    ),
    (
        "weiblich",
        &["weiblich", "w", "f", "frau", "female", "woman"],
    ),
    (
        "divers",
        &["divers", "d", "nicht-binaer", "nichtbinaer", "non-binary"],
    ),
];

const FITNESS_LEVEL: Canon = &[
    (
        "anfaenger",
        &[
            "anfaenger",
            "anfaengerin",
            "einsteiger",
            "einsteigerin",
            "beginner",
            "niedrig",
            "gering",
        ],
    ),
    (
        "fortgeschritten",
        &[
            "fortgeschritten",
            "mittel",
            "intermediate",
            "durchschnittlich",
        ],
    ),
    (
        "profi",
        &[
            "profi",
            "sehr fortgeschritten",
            "experte",
            "expertin",
            "advanced",
            "hoch",
            "sehr gut",
        ],
    ),
];

const LEVEL: Canon = &[
    ("hoch", &["hoch", "sehr hoch", "high", "gross", "dringend"]),
    ("mittel", &["mittel", "medium", "mittelmaessig"]),
    (
        "niedrig",
        &["niedrig", "gering", "low", "klein", "nicht dringend"],
    ),
];

const YES_NO: Canon = &[
    ("ja", &["ja", "yes", "true"]),
    ("nein", &["nein", "no", "false"]),
];

fn normalise(raw: &str, canon: Canon) -> Option<String> {
    let folded = collapse(raw)?
        .to_lowercase()
        .replace('ä', "ae")
        .replace('ö', "oe")
        .replace('ü', "ue")
        .replace('ß', "ss");
    let folded = folded.trim_end_matches(['.', '!']);
    canon
        .iter()
        .find(|(_, spellings)| spellings.contains(&folded))
        .map(|(c, _)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(base: Profile, update: Value) -> (Profile, Vec<&'static str>) {
        let mut p = base;
        let changed = merge_profile(&mut p, update.as_object().unwrap());
        (p, changed)
    }

    #[test]
    fn schema_shape() {
        let s = schema();
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["profil"]["additionalProperties"], false);
        let props = s["properties"]["profil"]["properties"].as_object().unwrap();
        assert_eq!(props.len(), MODEL_PROFILE_FIELDS.len());
        assert_eq!(props["alter"]["type"], "integer");
        assert_eq!(props["email"]["type"], "string");
        assert!(!props.contains_key("magicline_customer_id"));
        assert!(!props.contains_key("probetraining_datum"));
        assert!(!props.contains_key("wunschtermin"));
        let intents = s["properties"]["intent"]["enum"].as_array().unwrap();
        assert_eq!(intents.len(), 10);
        assert!(intents.contains(&json!("wants_person")));
        assert!(intents.contains(&json!("contract_question")));
        assert_eq!(
            s["properties"]["wunschtermin"]["type"],
            json!(["string", "null"])
        );
        // Every schema field exists in the stored profile.
        let full = Profile {
            vorname: Some("a".into()),
            nachname: Some("a".into()),
            email: Some("a".into()),
            alter: Some(20),
            geschlecht: Some("a".into()),
            wohnort: Some("a".into()),
            beruf: Some("a".into()),
            fitness_ziel: Some("a".into()),
            fitness_level: Some("a".into()),
            trainingsfrequenz: Some("a".into()),
            gesundheitliche_einschraenkungen: Some("a".into()),
            budget_bewusst: Some("a".into()),
            mitglied: Some("a".into()),
            zeitfenster: Some("a".into()),
            dringlichkeit: Some("a".into()),
            wie_gefunden: Some("a".into()),
            interesse_level: Some("a".into()),
            probetraining_datum: None,
            wunschtermin: None,
            magicline_customer_id: None,
        };
        let stored = serde_json::to_value(full).unwrap();
        for f in MODEL_PROFILE_FIELDS {
            assert!(stored.get(*f).is_some(), "{f}");
        }
    }

    #[test]
    fn parse_full_and_lenient() {
        let r = parse(
            r#"{"intent":"book_trial","profil":{"vorname":"Lena"},"reply":"  Hi Lena! ","wunschtermin":"Dienstag 18 Uhr"}"#,
        )
        .unwrap();
        assert_eq!(r.intent, Intent::BookTrial);
        assert_eq!(r.reply, "Hi Lena!");
        assert_eq!(r.wunschtermin.as_deref(), Some("Dienstag 18 Uhr"));
        assert_eq!(r.profil["vorname"], "Lena");

        let r = parse(r#"{"intent":"dance","reply":"ok","wunschtermin":"  "}"#).unwrap();
        assert_eq!(r.intent, Intent::None);
        assert!(r.profil.is_empty());
        assert_eq!(r.wunschtermin, None);

        assert_eq!(
            parse(r#"{"intent":"none","reply":"  "}"#),
            Err(ReplyError::NoReply)
        );
        assert!(matches!(parse("Hallo!"), Err(ReplyError::NotJson(_))));
        assert!(matches!(parse("[1]"), Err(ReplyError::NotJson(_))));
        let long = format!(r#"{{"reply":"{}"}}"#, "a".repeat(5000));
        assert_eq!(parse(&long).unwrap().reply.len(), MAX_REPLY_CHARS);
    }

    #[test]
    fn never_erases_known_fields() {
        let base = Profile {
            vorname: Some("Lena".into()),
            email: Some("lena@example.de".into()),
            alter: Some(30),
            fitness_ziel: Some("Abnehmen".into()),
            ..Profile::default()
        };
        let (p, changed) = merged(
            base.clone(),
            json!({"vorname": null, "email": "", "alter": null, "fitness_ziel": "unbekannt",
                   "nachname": "  "}),
        );
        assert_eq!(p, base);
        assert!(changed.is_empty());
    }

    #[test]
    fn valid_values_fill_and_correct() {
        let base = Profile {
            email: Some("lena@exmaple.de".into()),
            ..Profile::default()
        };
        let (p, changed) = merged(
            base,
            json!({"vorname": "lena", "nachname": "müller-lüdenscheidt", "email": "Lena.M+fit@Example.DE",
                   "alter": "30 Jahre", "fitness_ziel": "  Muskeln\n aufbauen ",
                   "trainingsfrequenz": 3, "budget_bewusst": true}),
        );
        assert_eq!(p.vorname.as_deref(), Some("Lena"));
        assert_eq!(p.nachname.as_deref(), Some("Müller-Lüdenscheidt"));
        assert_eq!(p.email.as_deref(), Some("Lena.M+fit@example.de"));
        assert_eq!(p.alter, Some(30));
        assert_eq!(p.fitness_ziel.as_deref(), Some("Muskeln aufbauen"));
        assert_eq!(p.trainingsfrequenz.as_deref(), Some("3"));
        assert_eq!(p.budget_bewusst.as_deref(), Some("ja"));
        assert_eq!(changed.len(), 7);
        // Unchanged values are not reported again.
        let (_, changed) = merged(p, json!({"vorname": "Lena", "alter": 30}));
        assert!(changed.is_empty());
    }

    #[test]
    fn validation_rejects_junk() {
        let base = Profile {
            vorname: Some("Lena".into()),
            email: Some("lena@example.de".into()),
            alter: Some(30),
            geschlecht: Some("weiblich".into()),
            ..Profile::default()
        };
        for email in [
            "lena",
            "lena@",
            "@example.de",
            "lena@example",
            "lena@@example.de",
            "le na@example.de",
            "lena@exa_mple.de",
            "lena@example.d3",
            ".lena@example.de",
            "lena..m@example.de",
        ] {
            let (p, _) = merged(base.clone(), json!({ "email": email }));
            assert_eq!(p.email.as_deref(), Some("lena@example.de"), "{email}");
        }
        for age in [
            json!(7),
            json!(13),
            json!(101),
            json!(300),
            json!(-5),
            json!("alt"),
            json!(30.5),
        ] {
            let (p, _) = merged(base.clone(), json!({ "alter": age }));
            assert_eq!(p.alter, Some(30), "{age}");
        }
        let (p, _) = merged(base.clone(), json!({"alter": 14}));
        assert_eq!(p.alter, Some(14));
        let (p, _) = merged(base.clone(), json!({"alter": 100}));
        assert_eq!(p.alter, Some(100));
        for name in [
            "Lena123",
            "lena@example.de",
            "http://x",
            "🙂",
            &"a".repeat(51),
        ] {
            let (p, _) = merged(base.clone(), json!({ "vorname": name }));
            assert_eq!(p.vorname.as_deref(), Some("Lena"), "{name}");
        }
        let (p, _) = merged(base.clone(), json!({"geschlecht": "Helikopter"}));
        assert_eq!(p.geschlecht.as_deref(), Some("weiblich"));
        let (p, _) = merged(base.clone(), json!({"geschlecht": "Männlich"}));
        assert_eq!(p.geschlecht.as_deref(), Some("maennlich"));
        let (p, _) = merged(
            base.clone(),
            json!({"fitness_level": "Anfänger", "interesse_level": "sehr hoch",
                   "dringlichkeit": "egal", "budget_bewusst": "vielleicht"}),
        );
        assert_eq!(p.fitness_level.as_deref(), Some("anfaenger"));
        assert_eq!(p.interesse_level.as_deref(), Some("hoch"));
        assert_eq!(p.dringlichkeit, None);
        assert_eq!(p.budget_bewusst, None);
    }

    #[test]
    fn length_caps_and_system_fields() {
        let (p, _) = merged(
            Profile::default(),
            json!({"beruf": "x".repeat(500), "probetraining_datum": "morgen",
                   "magicline_customer_id": 5, "passwort": "geheim"}),
        );
        assert_eq!(p.beruf.as_ref().unwrap().chars().count(), MAX_TEXT_CHARS);
        assert_eq!(p.probetraining_datum, None);
        assert_eq!(p.magicline_customer_id, None);
    }
}
