//! Lead-funnel and message counters: per-day counts of funnel events and of outbound WhatsApp
//! messages by pricing category in the `stats` keyspace, so that `frontdesk stats` reports the
//! funnel and what the messages cost without opening any sealed customer data.
//!
//! Key: `YYYY-MM-DD/<event>` (the studio's calendar day, Europe/Berlin); value: u64 big-endian.
//! The engine calls [`record`] when a contact's status changes, inside the batch that changes it;
//! the sender calls [`record_sent`] in the batch that retires a reply the Graph API accepted, so a
//! message is counted exactly once however often its send was retried.
//!
//! Lead sources (click-to-WhatsApp ads and posts) are counted beside the funnel:
//! `YYYY-MM-DD/source/<type>/<id>/<step>` (a contact who came through the source, a trial booked
//! by one), and `source-label/<type>/<id>` holds the ad's headline for the report. These rows
//! hold no personal data: the source id and headline name the studio's own ad, not the person
//! who clicked it; the click id and everything else about the click stay in the sealed customer
//! body. A count of one on a day says that *someone* came through that ad that day, which the
//! clear `first_contact` of the customer rows already says without the ad.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::store::customers::LeadSource;
use crate::store::{Result, Store};

/// Days are counted in the studio's time zone.
const STUDIO_TZ: &str = "Europe/Berlin";

/// Something that moves a contact through the funnel.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunnelEvent {
    /// A number wrote for the first time.
    NewContact,
    /// The contact's first name became known.
    NameKnown,
    /// A trial training was booked.
    TrialBooked,
    /// The conversation was handed over to staff.
    Handover,
    /// The contact opted out.
    OptOut,
    /// The person checked in at the studio for a booked trial (counted on the day of the
    /// check-in).
    ShowedUp,
    /// A booked trial's slot passed without a check-in (counted on the day of the trial).
    NoShow,
    /// A trial was booked after an earlier one of the same person was cancelled or missed.
    Rebooked,
    /// A trial already settled as a no-show got its check-in after all (a delayed event);
    /// counted on the day of the trial, whose no-shows it takes back.
    LateCheckIn,
}

impl FunnelEvent {
    /// Every event, in funnel order.
    pub const ALL: [FunnelEvent; 9] = [
        FunnelEvent::NewContact,
        FunnelEvent::NameKnown,
        FunnelEvent::TrialBooked,
        FunnelEvent::ShowedUp,
        FunnelEvent::NoShow,
        FunnelEvent::Rebooked,
        FunnelEvent::LateCheckIn,
        FunnelEvent::Handover,
        FunnelEvent::OptOut,
    ];

    /// The name in counter keys and reports (`new_contact`, …).
    pub fn name(self) -> &'static str {
        match self {
            FunnelEvent::NewContact => "new_contact",
            FunnelEvent::NameKnown => "name_known",
            FunnelEvent::TrialBooked => "trial_booked",
            FunnelEvent::Handover => "handover",
            FunnelEvent::OptOut => "opt_out",
            FunnelEvent::ShowedUp => "showed_up",
            FunnelEvent::NoShow => "no_show",
            FunnelEvent::Rebooked => "rebooked",
            FunnelEvent::LateCheckIn => "late_check_in",
        }
    }

    fn parse(s: &str) -> Option<FunnelEvent> {
        Self::ALL.into_iter().find(|e| e.name() == s)
    }
}

/// How long a first contact waited for the first reply (the assistant's or a staff member's),
/// counted once per contact in buckets, so the report can say how fast leads are answered
/// without keeping any contact's times.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyDelay {
    /// Up to one minute.
    Within1m,
    /// Up to five minutes.
    Within5m,
    /// Up to fifteen minutes.
    Within15m,
    /// Up to an hour.
    Within1h,
    /// Up to four hours.
    Within4h,
    /// Up to a day.
    Within24h,
    /// More than a day.
    Later,
}

impl ReplyDelay {
    /// Every bucket, fastest first.
    pub const ALL: [ReplyDelay; 7] = [
        ReplyDelay::Within1m,
        ReplyDelay::Within5m,
        ReplyDelay::Within15m,
        ReplyDelay::Within1h,
        ReplyDelay::Within4h,
        ReplyDelay::Within24h,
        ReplyDelay::Later,
    ];

    /// The bucket of a wait of `waited` (a negative wait, from a skewed clock, is the fastest).
    pub fn of(waited: jiff::SignedDuration) -> ReplyDelay {
        /// The longest wait of each bucket but the last, in seconds.
        const UPPER: [i64; 6] = [60, 5 * 60, 15 * 60, 3600, 4 * 3600, 24 * 3600];
        let secs = waited.as_secs();
        UPPER
            .iter()
            .position(|upper| secs <= *upper)
            .map_or(ReplyDelay::Later, |i| Self::ALL[i])
    }

    /// The German label of the console's dashboard (`bis 1 Min.`, …).
    pub fn label_de(self) -> &'static str {
        match self {
            ReplyDelay::Within1m => "bis 1 Min.",
            ReplyDelay::Within5m => "bis 5 Min.",
            ReplyDelay::Within15m => "bis 15 Min.",
            ReplyDelay::Within1h => "bis 1 Std.",
            ReplyDelay::Within4h => "bis 4 Std.",
            ReplyDelay::Within24h => "bis 24 Std.",
            ReplyDelay::Later => "länger",
        }
    }

    fn key(self) -> &'static str {
        match self {
            ReplyDelay::Within1m => "first_reply_1m",
            ReplyDelay::Within5m => "first_reply_5m",
            ReplyDelay::Within15m => "first_reply_15m",
            ReplyDelay::Within1h => "first_reply_1h",
            ReplyDelay::Within4h => "first_reply_4h",
            ReplyDelay::Within24h => "first_reply_24h",
            ReplyDelay::Later => "first_reply_later",
        }
    }

    fn from_key(s: &str) -> Option<ReplyDelay> {
        Self::ALL.into_iter().find(|d| d.key() == s)
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }
}

/// First replies per [`ReplyDelay`] bucket, fastest first.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ReplyDelays(pub [u64; 7]);

impl ReplyDelays {
    /// The count of one bucket.
    pub fn get(&self, d: ReplyDelay) -> u64 {
        self.0[d.index()]
    }

    /// First replies counted in all.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The share answered within five minutes, in percent (none without first replies).
    pub fn within_5m_pct(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| {
            let fast = self.get(ReplyDelay::Within1m) + self.get(ReplyDelay::Within5m);
            (fast as f64 * 1000.0 / total as f64).round() / 10.0
        })
    }
}

/// What Meta bills an outbound message as: a free-form reply is `service`, a template is
/// billed by its category. The names are those of `pricing.category` in status webhooks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PricingCategory {
    /// A free-form message inside the customer-service window (bot replies included).
    Service,
    /// A utility template (confirmations, reminders about something the customer asked for).
    Utility,
    /// A marketing template (offers, re-engagement).
    Marketing,
    /// An authentication template (one-time codes).
    Authentication,
}

impl PricingCategory {
    /// Every category, in report order.
    pub const ALL: [PricingCategory; 4] = [
        PricingCategory::Service,
        PricingCategory::Utility,
        PricingCategory::Marketing,
        PricingCategory::Authentication,
    ];

    /// `service`, `utility`, `marketing` or `authentication` (metric labels, reports).
    pub fn name(self) -> &'static str {
        match self {
            PricingCategory::Service => "service",
            PricingCategory::Utility => "utility",
            PricingCategory::Marketing => "marketing",
            PricingCategory::Authentication => "authentication",
        }
    }

    fn key(self) -> &'static str {
        match self {
            PricingCategory::Service => "sent_service",
            PricingCategory::Utility => "sent_utility",
            PricingCategory::Marketing => "sent_marketing",
            PricingCategory::Authentication => "sent_authentication",
        }
    }

    fn from_key(s: &str) -> Option<PricingCategory> {
        Self::ALL.into_iter().find(|c| c.key() == s)
    }
}

/// The price of one message per category, in millionths of a euro, so that sums are exact.
/// Built from `[whatsapp.pricing]`; an estimate, not Meta's invoice.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Rates {
    /// A free-form (service) message.
    pub service_micro_eur: u64,
    /// A utility template.
    pub utility_micro_eur: u64,
    /// A marketing template.
    pub marketing_micro_eur: u64,
    /// An authentication template.
    pub authentication_micro_eur: u64,
    /// The day the rates were taken from Meta's rate card, as configured.
    #[serde(default)]
    pub as_of: Option<Date>,
}

impl Rates {
    /// The price of one message of `category`, in millionths of a euro.
    pub fn micro_eur(&self, category: PricingCategory) -> u64 {
        match category {
            PricingCategory::Service => self.service_micro_eur,
            PricingCategory::Utility => self.utility_micro_eur,
            PricingCategory::Marketing => self.marketing_micro_eur,
            PricingCategory::Authentication => self.authentication_micro_eur,
        }
    }
}

/// Outbound messages of one period by pricing category.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct MessageCounts {
    /// Free-form replies.
    pub service: u64,
    /// Utility templates.
    pub utility: u64,
    /// Marketing templates.
    pub marketing: u64,
    /// Authentication templates.
    pub authentication: u64,
}

impl MessageCounts {
    /// The count of `category`.
    pub fn get(&self, category: PricingCategory) -> u64 {
        match category {
            PricingCategory::Service => self.service,
            PricingCategory::Utility => self.utility,
            PricingCategory::Marketing => self.marketing,
            PricingCategory::Authentication => self.authentication,
        }
    }

    fn add(&mut self, category: PricingCategory, n: u64) {
        match category {
            PricingCategory::Service => self.service += n,
            PricingCategory::Utility => self.utility += n,
            PricingCategory::Marketing => self.marketing += n,
            PricingCategory::Authentication => self.authentication += n,
        }
    }

    /// All messages, whatever their category.
    pub fn total(&self) -> u64 {
        PricingCategory::ALL.into_iter().map(|c| self.get(c)).sum()
    }

    /// Their estimated price at `rates`, in millionths of a euro.
    pub fn cost_micro_eur(&self, rates: &Rates) -> u64 {
        PricingCategory::ALL
            .into_iter()
            .map(|c| self.get(c).saturating_mul(rates.micro_eur(c)))
            .fold(0, u64::saturating_add)
    }
}

fn studio_tz() -> TimeZone {
    TimeZone::get(STUDIO_TZ).expect("the bundled tz database has Europe/Berlin")
}

/// The studio's calendar day of `at`.
pub fn studio_day(at: Timestamp) -> Date {
    at.to_zoned(studio_tz()).date()
}

fn key(day: Date, event: FunnelEvent) -> String {
    format!("{day}/{}", event.name())
}

/// Counter values written to batches that may not be committed yet, so two increments before a
/// commit do not both read the old value. Keyed by store path and counter key.
static PENDING: Mutex<Option<HashMap<(PathBuf, String), u64>>> = Mutex::new(None);

/// Adds one `event` at `at` to `batch`. Increments of the same counter are serialised; if a batch
/// is dropped without being committed, the next increment of that counter counts it anyway (the
/// funnel may then overcount by one, it never loses a count).
pub fn record(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    event: FunnelEvent,
    at: Timestamp,
) -> Result<()> {
    increment(store, batch, key(studio_day(at), event))
}

/// Adds one outbound message of `category`, accepted by the Graph API at `at`, to `batch`.
pub fn record_sent(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    category: PricingCategory,
    at: Timestamp,
) -> Result<()> {
    increment(
        store,
        batch,
        format!("{}/{}", studio_day(at), category.key()),
    )
}

/// Adds one first reply, sent at `at` after the contact waited `waited`, to `batch`.
pub fn record_first_reply(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    waited: jiff::SignedDuration,
    at: Timestamp,
) -> Result<()> {
    increment(
        store,
        batch,
        format!("{}/{}", studio_day(at), ReplyDelay::of(waited).key()),
    )
}

/// Adds one to the counter `k` in `batch` (see [`record`] for how pending increments count).
fn increment(store: &Store, batch: &mut fjall::OwnedWriteBatch, k: String) -> Result<()> {
    let mut guard = PENDING.lock().expect("stats lock poisoned");
    let pending = guard.get_or_insert_with(HashMap::new);
    if pending.len() > 4096 {
        // Only the newest days see increments; older cached values are committed long since.
        pending.clear();
    }
    let stored = store
        .keyspaces()
        .stats
        .get(&k)?
        .and_then(|v| <[u8; 8]>::try_from(&*v).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    let slot = pending
        .entry((store.path().to_path_buf(), k.clone()))
        .or_insert(0);
    let next = stored.max(*slot) + 1;
    *slot = next;
    batch.insert(
        &store.keyspaces().stats,
        k.into_bytes(),
        next.to_be_bytes().to_vec(),
    );
    Ok(())
}

/// Records one event durably on its own (outside any other write).
pub fn record_now(store: &Store, event: FunnelEvent, at: Timestamp) -> Result<()> {
    let mut batch = store.batch();
    record(store, &mut batch, event, at)?;
    store.commit_durable(batch)
}

/// A step of a lead source's funnel.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceStep {
    /// A contact came through the source (first message, or first from this source).
    Contact,
    /// A contact who came through the source booked a trial.
    TrialBooked,
}

impl SourceStep {
    fn name(self) -> &'static str {
        match self {
            SourceStep::Contact => "contact",
            SourceStep::TrialBooked => "trial_booked",
        }
    }
}

/// One count for a lead source. Holds the source's type, id and headline only.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SourceEvent {
    /// `ad`, `post`, or `unknown`.
    pub source_type: String,
    /// The ad's or post's id, reduced to `[A-Za-z0-9_.-]` (at most 64), or `unknown`.
    pub source_id: String,
    /// The ad's headline, for the report's label.
    pub headline: Option<String>,
    /// What happened.
    pub step: SourceStep,
}

/// Longest headline kept as a label.
const MAX_LABEL_CHARS: usize = 80;
const LABEL_PREFIX: &str = "source-label/";

fn key_part(s: Option<&str>, max: usize) -> String {
    let cleaned: String = s
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(max)
        .collect();
    if cleaned.is_empty() {
        "unknown".to_string()
    } else {
        cleaned
    }
}

impl SourceEvent {
    /// The count of `step` for `source`.
    pub fn new(source: &LeadSource, step: SourceStep) -> SourceEvent {
        SourceEvent {
            source_type: key_part(source.source_type.as_deref(), 16),
            source_id: key_part(source.source_id.as_deref(), 64),
            headline: source
                .headline
                .as_deref()
                .map(|h| h.trim().chars().take(MAX_LABEL_CHARS).collect::<String>())
                .filter(|h| !h.is_empty()),
            step,
        }
    }

    /// Whether two sources are the same ad or post.
    pub fn same_source(a: &LeadSource, b: &LeadSource) -> bool {
        let (a, b) = (
            SourceEvent::new(a, SourceStep::Contact),
            SourceEvent::new(b, SourceStep::Contact),
        );
        a.source_type == b.source_type && a.source_id == b.source_id
    }
}

/// Adds one lead-source count at `at` to `batch`, and the source's headline as its label.
pub fn record_source(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    event: &SourceEvent,
    at: Timestamp,
) -> Result<()> {
    let k = format!(
        "{}/source/{}/{}/{}",
        studio_day(at),
        event.source_type,
        event.source_id,
        event.step.name()
    );
    increment(store, batch, k)?;
    if let Some(headline) = &event.headline {
        batch.insert(
            &store.keyspaces().stats,
            format!("{LABEL_PREFIX}{}/{}", event.source_type, event.source_id).into_bytes(),
            headline.as_bytes().to_vec(),
        );
    }
    Ok(())
}

/// Lead-source figures over a report's days.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct SourceRow {
    /// `ad`, `post` or `unknown`.
    pub source_type: String,
    /// The ad's or post's id.
    pub source_id: String,
    /// The ad's headline, when WhatsApp sent one.
    pub headline: Option<String>,
    /// Contacts who came through it.
    pub contacts: u64,
    /// Trials booked by them.
    pub trial_booked: u64,
}

fn source_rows(store: &Store, since: Option<Date>) -> Result<Vec<SourceRow>> {
    let mut rows: BTreeMap<(String, String), SourceRow> = BTreeMap::new();
    let start = since.map(|d| d.to_string()).unwrap_or_default();
    for g in store.keyspaces().stats.range(start.as_bytes()..) {
        let (k, v) = g.into_inner()?;
        let Some(s) = std::str::from_utf8(&k).ok() else {
            continue;
        };
        let Some((day, rest)) = s.split_once('/') else {
            continue;
        };
        let Some(rest) = rest.strip_prefix("source/") else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let ([source_type, source_id, step], Ok(_)) = (parts.as_slice(), day.parse::<Date>())
        else {
            continue;
        };
        let Ok(n) = <[u8; 8]>::try_from(&*v).map(u64::from_be_bytes) else {
            continue;
        };
        let row = rows
            .entry((source_type.to_string(), source_id.to_string()))
            .or_insert_with(|| SourceRow {
                source_type: source_type.to_string(),
                source_id: source_id.to_string(),
                ..SourceRow::default()
            });
        match *step {
            "contact" => row.contacts += n,
            "trial_booked" => row.trial_booked += n,
            _ => {}
        }
    }
    for row in rows.values_mut() {
        let label = format!("{LABEL_PREFIX}{}/{}", row.source_type, row.source_id);
        row.headline = store
            .keyspaces()
            .stats
            .get(label.as_bytes())?
            .and_then(|v| String::from_utf8(v.to_vec()).ok());
    }
    Ok(rows.into_values().collect())
}

/// How the report groups days.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// One row per studio day (`2026-11-26`).
    Day,
    /// One row per ISO week (`2026-W48`).
    #[default]
    Week,
    /// One row per month (`2026-11`).
    Month,
}

/// Funnel figures of one period.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct FunnelRow {
    /// `2026-11-26`, `2026-W48` or `2026-11`; `total` for the sum.
    pub period: String,
    /// Numbers that wrote for the first time.
    pub new_contacts: u64,
    /// Contacts whose first name became known.
    pub name_known: u64,
    /// Trial trainings booked.
    pub trial_booked: u64,
    /// Conversations handed over to staff.
    pub handovers: u64,
    /// Contacts who opted out.
    pub opt_outs: u64,
    /// Booked trials the person checked in for.
    #[serde(default)]
    pub showed_up: u64,
    /// Booked trials whose slot passed without a check-in.
    #[serde(default)]
    pub no_show: u64,
    /// Trials booked again after a cancelled or missed one.
    #[serde(default)]
    pub rebooked: u64,
    /// No-shows taken back by a late check-in, subtracted from `no_show` when the row is
    /// finished.
    #[serde(skip)]
    late_check_ins: u64,
    /// Trials booked per new contact, in percent (none without new contacts).
    pub conversion_pct: Option<f64>,
    /// Outbound messages the Graph API accepted, by pricing category.
    #[serde(default)]
    pub messages: MessageCounts,
    /// Their estimated cost at the configured rates, in millionths of a euro.
    #[serde(default)]
    pub cost_micro_eur: u64,
    /// The same in euros.
    #[serde(default)]
    pub cost_eur: f64,
    /// Estimated message cost per booked trial, in millionths of a euro (none without trials).
    #[serde(default)]
    pub cost_per_trial_micro_eur: Option<u64>,
    /// The same in euros.
    #[serde(default)]
    pub cost_per_trial_eur: Option<f64>,
    /// First replies to new contacts by how long they waited.
    #[serde(default)]
    pub first_replies: ReplyDelays,
}

impl FunnelRow {
    fn add(&mut self, e: FunnelEvent, n: u64) {
        match e {
            FunnelEvent::NewContact => self.new_contacts += n,
            FunnelEvent::NameKnown => self.name_known += n,
            FunnelEvent::TrialBooked => self.trial_booked += n,
            FunnelEvent::Handover => self.handovers += n,
            FunnelEvent::OptOut => self.opt_outs += n,
            FunnelEvent::ShowedUp => self.showed_up += n,
            FunnelEvent::NoShow => self.no_show += n,
            FunnelEvent::Rebooked => self.rebooked += n,
            FunnelEvent::LateCheckIn => self.late_check_ins += n,
        }
    }

    fn finish(&mut self, rates: &Rates) {
        self.no_show = self.no_show.saturating_sub(self.late_check_ins);
        self.late_check_ins = 0;
        self.conversion_pct = (self.new_contacts > 0)
            .then(|| (self.trial_booked as f64 * 1000.0 / self.new_contacts as f64).round() / 10.0);
        self.cost_micro_eur = self.messages.cost_micro_eur(rates);
        self.cost_eur = micro_to_eur(self.cost_micro_eur);
        self.cost_per_trial_micro_eur = (self.trial_booked > 0).then(|| {
            // Rounded half up to the millionth.
            (self.cost_micro_eur + self.trial_booked / 2) / self.trial_booked
        });
        self.cost_per_trial_eur = self.cost_per_trial_micro_eur.map(micro_to_eur);
    }
}

fn micro_to_eur(micro: u64) -> f64 {
    micro as f64 / 1_000_000.0
}

/// What one counter key counts.
enum Counted {
    Funnel(FunnelEvent),
    Sent(PricingCategory),
    FirstReply(ReplyDelay),
}

impl Counted {
    fn parse(s: &str) -> Option<Counted> {
        FunnelEvent::parse(s)
            .map(Counted::Funnel)
            .or_else(|| PricingCategory::from_key(s).map(Counted::Sent))
            .or_else(|| ReplyDelay::from_key(s).map(Counted::FirstReply))
    }

    fn add_to(&self, row: &mut FunnelRow, n: u64) {
        match self {
            Counted::Funnel(e) => row.add(*e, n),
            Counted::Sent(c) => row.messages.add(*c, n),
            Counted::FirstReply(d) => row.first_replies.0[d.index()] += n,
        }
    }
}

/// The funnel report: one row per period plus the total.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct FunnelReport {
    /// How the days are grouped.
    pub by: Period,
    /// First day counted, if the report was limited.
    pub since: Option<Date>,
    /// One row per period that has counts, oldest first.
    pub rows: Vec<FunnelRow>,
    /// The sum of all rows.
    pub total: FunnelRow,
    /// Contacts and trials per click-to-WhatsApp ad or post over the whole report.
    #[serde(default)]
    pub sources: Vec<SourceRow>,
    /// The rates the costs were estimated with.
    #[serde(default)]
    pub rates: Rates,
}

fn period_label(day: Date, by: Period) -> String {
    match by {
        Period::Day => day.to_string(),
        Period::Week => {
            let w = day.iso_week_date();
            format!("{}-W{:02}", w.year(), w.week())
        }
        Period::Month => format!("{:04}-{:02}", day.year(), day.month()),
    }
}

/// Sums the counters from `since` (a studio day, inclusive) on, grouped by `by`, and estimates
/// the cost of the messages at `rates`.
pub fn report(
    store: &Store,
    since: Option<Date>,
    by: Period,
    rates: &Rates,
) -> Result<FunnelReport> {
    let mut rows: BTreeMap<String, FunnelRow> = BTreeMap::new();
    let mut total = FunnelRow {
        period: "total".into(),
        ..FunnelRow::default()
    };
    let start = since.map(|d| d.to_string()).unwrap_or_default();
    for g in store.keyspaces().stats.range(start.as_bytes()..) {
        let (k, v) = g.into_inner()?;
        let Some((day, event)) = std::str::from_utf8(&k).ok().and_then(|s| s.split_once('/'))
        else {
            continue;
        };
        let (Ok(day), Some(counted)) = (day.parse::<Date>(), Counted::parse(event)) else {
            continue;
        };
        let Ok(n) = <[u8; 8]>::try_from(&*v).map(u64::from_be_bytes) else {
            continue;
        };
        let label = period_label(day, by);
        let row = rows.entry(label.clone()).or_insert_with(|| FunnelRow {
            period: label,
            ..FunnelRow::default()
        });
        counted.add_to(row, n);
        counted.add_to(&mut total, n);
    }
    let mut rows: Vec<FunnelRow> = rows.into_values().collect();
    rows.iter_mut().for_each(|r| r.finish(rates));
    total.finish(rates);
    Ok(FunnelReport {
        by,
        since,
        rows,
        total,
        sources: source_rows(store, since)?,
        rates: *rates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::crypto::StoreIdentity;

    #[test]
    fn counts_by_week_and_month_with_conversion() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        // Two increments in one batch before it commits must both count.
        let mut batch = store.batch();
        record(
            &store,
            &mut batch,
            FunnelEvent::NewContact,
            t("2026-11-02T09:00:00Z"),
        )
        .unwrap();
        record(
            &store,
            &mut batch,
            FunnelEvent::NewContact,
            t("2026-11-02T10:00:00Z"),
        )
        .unwrap();
        store.commit_durable(batch).unwrap();
        for _ in 0..2 {
            record_now(&store, FunnelEvent::NewContact, t("2026-11-03T09:00:00Z")).unwrap();
        }
        record_now(&store, FunnelEvent::NameKnown, t("2026-11-03T09:00:00Z")).unwrap();
        record_now(&store, FunnelEvent::TrialBooked, t("2026-11-04T09:00:00Z")).unwrap();
        record_now(&store, FunnelEvent::OptOut, t("2026-12-01T09:00:00Z")).unwrap();
        record_now(&store, FunnelEvent::ShowedUp, t("2026-11-05T09:00:00Z")).unwrap();
        record_now(&store, FunnelEvent::NoShow, t("2026-11-06T09:00:00Z")).unwrap();
        record_now(&store, FunnelEvent::NoShow, t("2026-12-02T09:00:00Z")).unwrap();
        record_now(&store, FunnelEvent::Rebooked, t("2026-12-03T09:00:00Z")).unwrap();
        // 23:30 UTC on 30 November is already 1 December in Berlin.
        record_now(&store, FunnelEvent::Handover, t("2026-11-30T23:30:00Z")).unwrap();

        let r = report(&store, None, Period::Month, &Rates::default()).unwrap();
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[0].period, "2026-11");
        assert_eq!(r.rows[0].new_contacts, 4);
        assert_eq!(r.rows[0].trial_booked, 1);
        assert_eq!(r.rows[0].conversion_pct, Some(25.0));
        assert_eq!(r.rows[1].handovers, 1);
        assert_eq!(r.rows[1].opt_outs, 1);
        assert_eq!(r.rows[1].conversion_pct, None);
        // The attendance stages of the trials.
        assert_eq!(
            (r.rows[0].showed_up, r.rows[0].no_show, r.rows[0].rebooked),
            (1, 1, 0)
        );
        assert_eq!(
            (r.rows[1].showed_up, r.rows[1].no_show, r.rows[1].rebooked),
            (0, 1, 1)
        );
        assert_eq!((r.total.showed_up, r.total.no_show), (1, 2));
        assert_eq!(r.total.new_contacts, 4);

        let w = report(
            &store,
            Some("2026-11-03".parse().unwrap()),
            Period::Week,
            &Rates::default(),
        )
        .unwrap();
        assert_eq!(w.total.new_contacts, 2);
        assert_eq!(w.rows[0].period, "2026-W45");
    }

    #[test]
    fn message_costs_by_week_and_month_against_hand_computed_totals() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let sent = |c: PricingCategory, at: &str, n: usize| {
            for _ in 0..n {
                let mut batch = store.batch();
                record_sent(&store, &mut batch, c, t(at)).unwrap();
                store.commit_durable(batch).unwrap();
            }
        };
        // Week 45 (Mon 2 – Sun 8 November 2026): 10 replies, 2 utility, 1 marketing, 1 trial.
        sent(PricingCategory::Service, "2026-11-02T09:00:00Z", 10);
        sent(PricingCategory::Utility, "2026-11-04T09:00:00Z", 2);
        sent(PricingCategory::Marketing, "2026-11-08T09:00:00Z", 1);
        record_now(&store, FunnelEvent::TrialBooked, t("2026-11-05T09:00:00Z")).unwrap();
        // Week 48 (23 – 29 November): 4 replies, 1 authentication, 2 trials.
        sent(PricingCategory::Service, "2026-11-23T09:00:00Z", 4);
        sent(PricingCategory::Authentication, "2026-11-29T09:00:00Z", 1);
        record_now(&store, FunnelEvent::TrialBooked, t("2026-11-24T09:00:00Z")).unwrap();
        record_now(&store, FunnelEvent::TrialBooked, t("2026-11-25T09:00:00Z")).unwrap();
        // 23:30 UTC on 30 November is 1 December in Berlin: week 49, December. No trials.
        sent(PricingCategory::Service, "2026-11-30T23:30:00Z", 3);

        // The shipped German rates: service 0.0456, utility 0.0456, marketing 0.1365,
        // authentication 0.0636 EUR.
        let rates = Rates {
            service_micro_eur: 45_600,
            utility_micro_eur: 45_600,
            marketing_micro_eur: 136_500,
            authentication_micro_eur: 63_600,
            as_of: None,
        };
        let w = report(&store, None, Period::Week, &rates).unwrap();
        let periods: Vec<&str> = w.rows.iter().map(|r| r.period.as_str()).collect();
        assert_eq!(periods, ["2026-W45", "2026-W48", "2026-W49"]);
        // W45: 12 × 0.0456 + 0.1365 = 0.5472 + 0.1365 = 0.6837 EUR, one trial.
        assert_eq!(w.rows[0].messages.total(), 13);
        assert_eq!(w.rows[0].messages.service, 10);
        assert_eq!(w.rows[0].cost_micro_eur, 683_700);
        assert_eq!(w.rows[0].cost_per_trial_micro_eur, Some(683_700));
        assert!((w.rows[0].cost_eur - 0.6837).abs() < 1e-9);
        // W48: 4 × 0.0456 + 0.0636 = 0.1824 + 0.0636 = 0.2460 EUR, two trials: 0.1230 each.
        assert_eq!(w.rows[1].cost_micro_eur, 246_000);
        assert_eq!(w.rows[1].cost_per_trial_micro_eur, Some(123_000));
        // W49: 3 × 0.0456 = 0.1368 EUR, no trial: no cost per trial.
        assert_eq!(w.rows[2].cost_micro_eur, 136_800);
        assert_eq!(w.rows[2].cost_per_trial_micro_eur, None);
        // Total: 0.6837 + 0.2460 + 0.1368 = 1.0665 EUR over 3 trials = 0.3555 EUR a trial.
        assert_eq!(w.total.messages.total(), 21);
        assert_eq!(w.total.cost_micro_eur, 1_066_500);
        assert_eq!(w.total.cost_per_trial_micro_eur, Some(355_500));
        assert_eq!(w.total.cost_per_trial_eur, Some(0.3555));
        assert_eq!(w.rates, rates);

        let m = report(&store, None, Period::Month, &rates).unwrap();
        assert_eq!(m.rows.len(), 2);
        // November: 0.6837 + 0.2460 = 0.9297 EUR over 3 trials = 0.3099 EUR a trial.
        assert_eq!(m.rows[0].period, "2026-11");
        assert_eq!(m.rows[0].messages.marketing, 1);
        assert_eq!(m.rows[0].messages.authentication, 1);
        assert_eq!(m.rows[0].cost_micro_eur, 929_700);
        assert_eq!(m.rows[0].cost_per_trial_micro_eur, Some(309_900));
        assert_eq!(m.rows[1].period, "2026-12");
        assert_eq!(m.rows[1].cost_micro_eur, 136_800);
        // Funnel counters and message counters do not mix.
        assert_eq!(m.total.new_contacts, 0);
        assert_eq!(m.total.trial_booked, 3);
    }

    #[test]
    fn two_sends_in_one_uncommitted_batch_both_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let at = "2026-11-02T09:00:00Z".parse::<Timestamp>().unwrap();
        let mut batch = store.batch();
        record_sent(&store, &mut batch, PricingCategory::Service, at).unwrap();
        record_sent(&store, &mut batch, PricingCategory::Service, at).unwrap();
        store.commit_durable(batch).unwrap();
        let r = report(&store, None, Period::Day, &Rates::default()).unwrap();
        assert_eq!(r.total.messages.service, 2);
        assert_eq!(r.total.cost_micro_eur, 0);
    }
}
