//! The funnel dashboard: the lead funnel per week, hand-over reasons, and outbound messages
//! with their estimated cost, each as a bar chart drawn on the server as SVG (plotters, no
//! script) with a caption and a plain table of the same numbers.
//!
//! Everything here is read without opening sealed data: the funnel and message counters through
//! [`crate::stats::report`] (the report `frontdesk stats` prints), the hand-over reasons from the
//! audit log's `customer.escalate` entries. The time to the first reply is the report's
//! per-bucket count of first replies (`stats::ReplyDelay`).

use std::collections::BTreeMap;

use askama::Template;
use jiff::civil::Date;
use jiff::{tz::TimeZone, Timestamp, ToSpan};
use plotters::prelude::*;

use super::pages::{reason_de, UserView};
use crate::audit::{AuditFilter, AuditLog, Detail};
use crate::stats::{self, FunnelRow, Period, PricingCategory, Rates, ReplyDelay};
use crate::store::Store;

/// Weeks shown unless the page asks for another number.
pub const DEFAULT_WEEKS: u32 = 8;
/// Most weeks one page shows.
pub const MAX_WEEKS: u32 = 52;

/// Width and height of every chart, in SVG user units (scaled by the page's CSS).
const CHART_SIZE: (u32, u32) = (760, 320);
/// Colours of the series, distinguishable with the usual colour-vision deficiencies
/// (Okabe–Ito palette).
const BLUE: RGBColor = RGBColor(0, 114, 178);
const ORANGE: RGBColor = RGBColor(230, 159, 0);
const GREEN: RGBColor = RGBColor(0, 158, 115);
const PURPLE: RGBColor = RGBColor(204, 121, 167);

/// A chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("chart could not be drawn: {0}")]
pub struct ChartError(String);

fn chart_err(e: impl std::fmt::Display) -> ChartError {
    ChartError(e.to_string())
}

/// One week of the funnel.
pub struct FunnelWeek {
    /// `KW 48`.
    pub label: String,
    /// Numbers that wrote for the first time.
    pub new_contacts: u64,
    /// Contacts whose first name became known.
    pub name_known: u64,
    /// Trials booked.
    pub trial_booked: u64,
    /// Conversations handed over.
    pub handovers: u64,
    /// Booked trials the person came to (checked in).
    pub showed_up: u64,
    /// Booked trials nobody came to.
    pub no_show: u64,
    /// Trials booked again after a cancelled or missed one.
    pub rebooked: u64,
}

/// Outbound messages of one studio day.
pub struct MessageDay {
    /// `02.11.`.
    pub label: String,
    /// Free-form replies.
    pub service: u64,
    /// Utility templates.
    pub utility: u64,
    /// Marketing templates.
    pub marketing: u64,
    /// Authentication templates.
    pub authentication: u64,
}

/// Messages and their estimated cost in one week.
pub struct CostWeek {
    /// `KW 48`.
    pub label: String,
    /// Messages the Graph API accepted.
    pub messages: u64,
    /// Estimated cost, `1,23 €`.
    pub cost: String,
    /// Estimated cost per booked trial, when there was one.
    pub per_trial: Option<String>,
}

/// Everything the dashboard shows.
pub struct Dashboard {
    /// Weeks shown.
    pub weeks: u32,
    /// First day counted, `03.11.2026`.
    pub since: String,
    /// The funnel per week, oldest first.
    pub funnel: Vec<FunnelWeek>,
    /// Its chart.
    pub funnel_svg: String,
    /// Hand-overs per reason (German label, count), most frequent first.
    pub reasons: Vec<(String, u64)>,
    /// Their chart, when there were any.
    pub reasons_svg: Option<String>,
    /// First replies per wait (German label, count), fastest first.
    pub first_replies: Vec<(String, u64)>,
    /// First replies in all.
    pub first_replies_total: u64,
    /// The share answered within five minutes, `93,5 %`.
    pub first_replies_within_5m: Option<String>,
    /// Their chart, when there were any.
    pub first_replies_svg: Option<String>,
    /// Days with outbound messages, oldest first.
    pub messages: Vec<MessageDay>,
    /// The chart of every day's messages by pricing category.
    pub messages_svg: String,
    /// Messages and cost per week.
    pub costs: Vec<CostWeek>,
    /// Estimated cost of the whole period.
    pub total_cost: String,
    /// Estimated cost per booked trial over the whole period.
    pub total_per_trial: Option<String>,
    /// The day the rates were taken from Meta's rate card, `01.10.2026`.
    pub rates_as_of: Option<String>,
}

/// The dashboard page.
#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct DashboardPage {
    /// Header.
    pub user: Option<UserView>,
    /// Current navigation entry.
    pub nav: &'static str,
    /// The figures and charts.
    pub d: Dashboard,
}

/// The number of weeks a `wochen=` query asks for, within 1 and [`MAX_WEEKS`].
pub fn weeks_param(query: &str) -> u32 {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "wochen")
        .and_then(|(_, v)| v.parse::<u32>().ok())
        .map_or(DEFAULT_WEEKS, |w| w.clamp(1, MAX_WEEKS))
}

fn studio_tz() -> TimeZone {
    TimeZone::get("Europe/Berlin").unwrap_or(TimeZone::UTC)
}

/// The ISO week label the stats report uses (`2026-W48`).
fn week_key(day: Date) -> String {
    let w = day.iso_week_date();
    format!("{}-W{:02}", w.year(), w.week())
}

fn week_label(day: Date) -> String {
    format!("KW {}", day.iso_week_date().week())
}

fn euro(micro: u64) -> String {
    // Cents, rounded half up; German decimal comma.
    let cents = (micro + 5_000) / 10_000;
    format!("{},{:02} €", cents / 100, cents % 100)
}

/// Reads the figures of the `weeks` weeks up to and including the week of `now` (studio
/// time): counters through the stats report, hand-over reasons from the audit log.
pub fn read(
    store: &Store,
    audit: &AuditLog,
    rates: &Rates,
    weeks: u32,
    now: Timestamp,
) -> anyhow::Result<Dashboard> {
    let today = now.to_zoned(studio_tz()).date();
    let monday = today.checked_sub(i64::from(today.weekday().to_monday_zero_offset()).days())?;
    let first = monday.checked_sub((i64::from(weeks.max(1)) - 1).weeks())?;
    let week_starts: Vec<Date> = (0..weeks.max(1))
        .map(|i| first.checked_add(i64::from(i).weeks()))
        .collect::<Result<_, _>>()?;

    let by_week = stats::report(store, Some(first), Period::Week, rates)?;
    let row_of = |d: Date| by_week.rows.iter().find(|r| r.period == week_key(d));
    let funnel: Vec<FunnelWeek> = week_starts
        .iter()
        .map(|&d| {
            let r = row_of(d).cloned().unwrap_or_default();
            FunnelWeek {
                label: week_label(d),
                new_contacts: r.new_contacts,
                name_known: r.name_known,
                trial_booked: r.trial_booked,
                handovers: r.handovers,
                showed_up: r.showed_up,
                no_show: r.no_show,
                rebooked: r.rebooked,
            }
        })
        .collect();
    let costs = week_starts
        .iter()
        .map(|&d| cost_week(week_label(d), &row_of(d).cloned().unwrap_or_default()))
        .collect();

    let by_day = stats::report(store, Some(first), Period::Day, rates)?;
    let mut days: Vec<MessageDay> = Vec::new();
    let mut day = first;
    while day <= today {
        let counts = by_day
            .rows
            .iter()
            .find(|r| r.period == day.to_string())
            .map(|r| r.messages)
            .unwrap_or_default();
        days.push(MessageDay {
            label: day.strftime("%d.%m.").to_string(),
            service: counts.get(PricingCategory::Service),
            utility: counts.get(PricingCategory::Utility),
            marketing: counts.get(PricingCategory::Marketing),
            authentication: counts.get(PricingCategory::Authentication),
        });
        day = day.tomorrow()?;
    }

    let delays = by_week.total.first_replies;
    let first_replies: Vec<(String, u64)> = ReplyDelay::ALL
        .iter()
        .map(|d| (d.label_de().to_string(), delays.get(*d)))
        .collect();
    let since = first.to_zoned(studio_tz())?.timestamp();
    let reasons = handover_reasons(audit, since)?;
    Ok(Dashboard {
        weeks: weeks.max(1),
        since: first.strftime("%d.%m.%Y").to_string(),
        funnel_svg: funnel_chart(&funnel)?,
        funnel,
        reasons_svg: (!reasons.is_empty())
            .then(|| reasons_chart(&reasons))
            .transpose()?,
        reasons,
        first_replies_svg: (delays.total() > 0)
            .then(|| first_replies_chart(&first_replies))
            .transpose()?,
        first_replies,
        first_replies_total: delays.total(),
        first_replies_within_5m: delays
            .within_5m_pct()
            .map(|p| format!("{p:.1} %").replace('.', ",")),
        messages_svg: messages_chart(&days)?,
        messages: days.into_iter().filter(|d| day_total(d) > 0).collect(),
        costs,
        total_cost: euro(by_week.total.cost_micro_eur),
        total_per_trial: by_week.total.cost_per_trial_micro_eur.map(euro),
        rates_as_of: rates.as_of.map(|d| d.strftime("%d.%m.%Y").to_string()),
    })
}

fn day_total(d: &MessageDay) -> u64 {
    d.service + d.utility + d.marketing + d.authentication
}

fn cost_week(label: String, r: &FunnelRow) -> CostWeek {
    CostWeek {
        label,
        messages: r.messages.total(),
        cost: euro(r.cost_micro_eur),
        per_trial: r.cost_per_trial_micro_eur.map(euro),
    }
}

/// Hand-overs since `since` per reason, from the audit log's `customer.escalate` entries (a
/// reason code each, no personal data), most frequent first.
fn handover_reasons(audit: &AuditLog, since: Timestamp) -> anyhow::Result<Vec<(String, u64)>> {
    let filter = AuditFilter {
        since: Some(since),
        action: Some("customer.escalate".into()),
        ..AuditFilter::default()
    };
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    audit.for_each(&filter, |r| {
        let code = match r.details.get("reason") {
            Some(Detail::Code(c)) => c.clone(),
            _ => String::new(),
        };
        let label = match reason_de(&code) {
            // A reason the console has no German name for is shown by its code.
            "Übergeben" if !code.is_empty() => code,
            known => known.to_string(),
        };
        *counts.entry(label).or_insert(0) += 1;
        true
    })?;
    let mut reasons: Vec<(String, u64)> = counts.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(reasons)
}

// ---- charts ----

/// One series of bars.
struct Series<'a> {
    name: &'a str,
    color: RGBColor,
    values: Vec<u64>,
}

/// How several series share a category.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// Side by side.
    Grouped,
    /// On top of each other.
    Stacked,
}

fn funnel_chart(weeks: &[FunnelWeek]) -> Result<String, ChartError> {
    let labels: Vec<String> = weeks.iter().map(|w| w.label.clone()).collect();
    let series = [
        Series {
            name: "Neue Kontakte",
            color: BLUE,
            values: weeks.iter().map(|w| w.new_contacts).collect(),
        },
        Series {
            name: "Name bekannt",
            color: ORANGE,
            values: weeks.iter().map(|w| w.name_known).collect(),
        },
        Series {
            name: "Probetraining gebucht",
            color: GREEN,
            values: weeks.iter().map(|w| w.trial_booked).collect(),
        },
        Series {
            name: "Erschienen",
            color: PURPLE,
            values: weeks.iter().map(|w| w.showed_up).collect(),
        },
    ];
    bar_chart(&labels, &series, Layout::Grouped, 1)
}

fn reasons_chart(reasons: &[(String, u64)]) -> Result<String, ChartError> {
    let labels: Vec<String> = reasons.iter().map(|r| r.0.clone()).collect();
    let series = [Series {
        name: "Übergaben",
        color: PURPLE,
        values: reasons.iter().map(|r| r.1).collect(),
    }];
    bar_chart(&labels, &series, Layout::Grouped, 1)
}

fn first_replies_chart(delays: &[(String, u64)]) -> Result<String, ChartError> {
    let labels: Vec<String> = delays.iter().map(|r| r.0.clone()).collect();
    let series = [Series {
        name: "Erste Antworten",
        color: BLUE,
        values: delays.iter().map(|r| r.1).collect(),
    }];
    bar_chart(&labels, &series, Layout::Grouped, 1)
}

fn messages_chart(days: &[MessageDay]) -> Result<String, ChartError> {
    let labels: Vec<String> = days.iter().map(|d| d.label.clone()).collect();
    let pick = |f: fn(&MessageDay) -> u64| days.iter().map(f).collect::<Vec<u64>>();
    let series = [
        Series {
            name: "Service",
            color: BLUE,
            values: pick(|d| d.service),
        },
        Series {
            name: "Utility",
            color: GREEN,
            values: pick(|d| d.utility),
        },
        Series {
            name: "Marketing",
            color: ORANGE,
            values: pick(|d| d.marketing),
        },
        Series {
            name: "Authentifizierung",
            color: PURPLE,
            values: pick(|d| d.authentication),
        },
    ];
    // One label a week keeps the axis readable over many days.
    let every = if days.len() > 14 { 7 } else { 1 };
    bar_chart(&labels, &series, Layout::Stacked, every)
}

/// A bar chart of `series` over the categories `labels` (every `label_every`th labelled) as an
/// SVG document. Bars of zero are left out.
fn bar_chart(
    labels: &[String],
    series: &[Series],
    layout: Layout,
    label_every: usize,
) -> Result<String, ChartError> {
    let n = labels.len().max(1);
    let at = |s: &Series, i: usize| s.values.get(i).copied().unwrap_or(0);
    let highest = (0..n)
        .map(|i| match layout {
            Layout::Grouped => series.iter().map(|s| at(s, i)).max().unwrap_or(0),
            Layout::Stacked => series.iter().map(|s| at(s, i)).sum(),
        })
        .max()
        .unwrap_or(0)
        .max(1);
    // Room above the highest bar for the legend.
    let top = (highest as f64 * 1.25).ceil();
    // Counts are whole numbers: at most one label per unit, never a repeated "1".
    let y_labels = (top as usize + 1).min(6);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(44)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
            .map_err(chart_err)?;
        let x_label = |x: &f64| {
            let i = x.round();
            if (x - i).abs() > 0.01 || i < 0.0 || (i as usize) % label_every != 0 {
                return String::new();
            }
            labels.get(i as usize).cloned().unwrap_or_default()
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(0)
            .x_labels(n)
            .x_label_formatter(&x_label)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .y_labels(y_labels)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(chart_err)?;
        let k = series.len().max(1) as f64;
        for (j, s) in series.iter().enumerate() {
            let bars = (0..n).filter(|&i| at(s, i) > 0).map(|i| {
                let x = i as f64;
                let (x0, x1, y0) = match layout {
                    Layout::Grouped => {
                        let w = 0.8 / k;
                        let x0 = x - 0.4 + w * j as f64;
                        (x0, x0 + w, 0.0)
                    }
                    Layout::Stacked => {
                        let below: u64 = series[..j].iter().map(|t| at(t, i)).sum();
                        (x - 0.35, x + 0.35, below as f64)
                    }
                };
                Rectangle::new([(x0, y0), (x1, y0 + at(s, i) as f64)], s.color.filled())
            });
            let color = s.color;
            chart
                .draw_series(bars)
                .map_err(chart_err)?
                .label(s.name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE)
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(chart_err)?;
        }
        root.present().map_err(chart_err)?;
    }
    // The table beside the chart carries the numbers; the chart is their picture.
    Ok(svg.replacen("<svg ", "<svg aria-hidden=\"true\" focusable=\"false\" ", 1))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::{Actor, AuditEvent, Code, NewEntry};
    use crate::stats::{record_now, record_sent, FunnelEvent};
    use crate::store::crypto::StoreIdentity;

    fn count(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("test setup")
    }

    /// A store with known counters and an audit log with three hand-overs.
    fn counted() -> (tempfile::TempDir, Arc<Store>, AuditLog) {
        let dir = tempfile::tempdir().expect("test setup");
        let store = Arc::new(Store::open(dir.path(), StoreIdentity::generate()).expect("setup"));
        let audit = AuditLog::open(store.clone())
            .expect("test setup")
            .without_journal();
        // Week 48 (23–29 November 2026): 7 new contacts, 5 names, 3 trials.
        for (event, n) in [
            (FunnelEvent::NewContact, 7),
            (FunnelEvent::NameKnown, 5),
            (FunnelEvent::TrialBooked, 3),
            (FunnelEvent::ShowedUp, 2),
        ] {
            for _ in 0..n {
                record_now(&store, event, t("2026-11-24T10:00:00Z")).expect("record");
            }
        }
        // Week 49: 11 new contacts; before the period: 99 (must not count).
        for _ in 0..11 {
            record_now(&store, FunnelEvent::NewContact, t("2026-12-01T10:00:00Z")).expect("record");
        }
        for _ in 0..99 {
            record_now(&store, FunnelEvent::NewContact, t("2026-09-01T10:00:00Z")).expect("record");
        }
        // 13 replies and 2 utility templates on 1 December.
        for (category, n) in [
            (PricingCategory::Service, 13),
            (PricingCategory::Utility, 2),
        ] {
            for _ in 0..n {
                let mut batch = store.batch();
                record_sent(&store, &mut batch, category, t("2026-12-01T10:00:00Z"))
                    .expect("record");
                store.commit_durable(batch).expect("commit");
            }
        }
        // Four first replies on 1 December: three within a minute, one after two days.
        for waited in [
            jiff::SignedDuration::from_secs(3),
            jiff::SignedDuration::from_secs(5),
            jiff::SignedDuration::from_secs(40),
            jiff::SignedDuration::from_hours(48),
        ] {
            let mut batch = store.batch();
            stats::record_first_reply(&store, &mut batch, waited, t("2026-12-01T10:00:00Z"))
                .expect("record");
            store.commit_durable(batch).expect("commit");
        }
        for reason in ["complaint", "complaint", "contract_question"] {
            audit
                .append(NewEntry::new(
                    Actor::System,
                    AuditEvent::CustomerEscalate {
                        reason: Code::new(reason),
                    },
                ))
                .expect("audit");
        }
        (dir, store, audit)
    }

    #[test]
    fn the_dashboard_shows_the_counters_in_tables_and_well_formed_charts() {
        let (_dir, store, audit) = counted();
        let rates = Rates {
            service_micro_eur: 45_600,
            utility_micro_eur: 45_600,
            ..Rates::default()
        };
        // Wednesday 2 December 2026; four weeks: 9 November to 6 December.
        let d = read(&store, &audit, &rates, 4, t("2026-12-02T12:00:00Z")).expect("read");
        assert_eq!(d.since, "09.11.2026");
        let labels: Vec<&str> = d.funnel.iter().map(|w| w.label.as_str()).collect();
        assert_eq!(labels, ["KW 46", "KW 47", "KW 48", "KW 49"]);
        assert_eq!(d.funnel[2].new_contacts, 7);
        assert_eq!(d.funnel[2].trial_booked, 3);
        assert_eq!(d.funnel[2].showed_up, 2);
        assert_eq!(d.funnel[3].new_contacts, 11);
        assert_eq!(d.reasons[0], ("Beschwerde".to_string(), 2));
        assert_eq!(d.reasons[1], ("Vertragsfrage".to_string(), 1));
        // 15 × 0.0456 = 0.684 EUR in week 49.
        assert_eq!(d.costs[3].messages, 15);
        assert_eq!(d.costs[3].cost, "0,68 €");
        assert_eq!(d.total_cost, "0,68 €");

        let html = DashboardPage {
            user: None,
            nav: "dashboard",
            d,
        }
        .render()
        .expect("render");
        // The numbers stand in the tables as text.
        for cell in [
            "<td>7</td>",
            "<td>5</td>",
            "<td>3</td>",
            "<td>11</td>",
            "<td>13</td>",
            "0,68 €",
        ] {
            assert!(html.contains(cell), "{cell} missing");
        }
        assert!(!html.contains("<td>99</td>"));
        assert!(html.contains("<th scope=\"row\">Beschwerde</th><td>2</td>"));
        assert!(html.contains("4 neue Kontakte bekamen im Zeitraum ihre erste Antwort, 75,0 %"));
        assert!(html.contains("<th scope=\"row\">bis 1 Min.</th><td>3</td>"));
        assert!(html.contains("<th scope=\"row\">länger</th><td>1</td>"));
        assert_eq!(count(&html, "<figcaption"), 4);
        assert_eq!(count(&html, "<table"), 5);

        // Each chart is a well-formed SVG document with one bar per non-zero number; no
        // inline style (the console's CSP allows none) and no script.
        let svgs: Vec<&str> = html
            .split("<svg ")
            .skip(1)
            .map(|rest| rest.split("</svg>").next().unwrap_or_default())
            .collect();
        assert_eq!(svgs.len(), 4);
        let bars = |svg: &str, color: &str| count(svg, &format!("fill=\"{color}\""));
        for svg in &svgs {
            let doc = format!("<svg {svg}</svg>");
            roxmltree::Document::parse(&doc).expect("well-formed SVG");
            assert!(!doc.contains("style="), "inline style in {doc}");
            assert!(!doc.contains("<script"));
        }
        // Funnel: new contacts in two weeks, names and trials in one; each colour once more in
        // the legend.
        assert_eq!(bars(svgs[0], "#0072B2"), 2 + 1);
        assert_eq!(bars(svgs[0], "#E69F00"), 1 + 1);
        assert_eq!(bars(svgs[0], "#009E73"), 1 + 1);
        assert_eq!(bars(svgs[0], "#CC79A7"), 1 + 1);
        // Reasons: two bars, no legend.
        assert_eq!(bars(svgs[1], "#CC79A7"), 2);
        // First replies: two buckets with counts, no legend.
        assert_eq!(bars(svgs[2], "#0072B2"), 2);
        // Messages: one day of service, one of utility, stacked.
        assert_eq!(bars(svgs[3], "#0072B2"), 1 + 1);
        assert_eq!(bars(svgs[3], "#009E73"), 1 + 1);
        assert!(svgs[0].contains("KW 48"));
    }

    #[test]
    fn the_weeks_asked_for_stay_within_bounds() {
        assert_eq!(weeks_param(""), DEFAULT_WEEKS);
        assert_eq!(weeks_param("wochen=12"), 12);
        assert_eq!(weeks_param("wochen=0"), 1);
        assert_eq!(weeks_param("wochen=1000"), MAX_WEEKS);
        assert_eq!(weeks_param("wochen=x"), DEFAULT_WEEKS);
    }
}
