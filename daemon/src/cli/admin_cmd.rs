//! The admin verbs that talk to the running daemon over its socket: `status`, `customers …`,
//! `audit …`, `retention run` (with the offline fallback) and `stats`. Exit codes: 3 when the
//! daemon is not reachable, 4 when the socket refuses the caller, 5 when `audit verify` fails.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use jiff::civil::Date;
use jiff::Timestamp;

use super::{exit, Cli};
use crate::admin::api::{self, *};
use crate::admin::client::{AdminClient, Answer, ClientError};
use crate::audit::{
    self, AnchorCheck, AuditFilter, AuditRecord, ForgetReason, Head, Verification, VerifyReport,
};
use crate::config::{Config, ServiceConfig};
use crate::stats::{FunnelReport, FunnelRow, Period, ReplyDelay};

#[derive(Subcommand, Debug)]
pub enum CustomersCommand {
    /// List customers by pseudonym, status and last contact (names only with --show-names).
    List {
        /// Only this status: new_lead, name_known, trial_booked, escalated, paused, opted_out.
        #[arg(long)]
        status: Option<String>,
        /// Only customers in contact since this date (YYYY-MM-DD) or time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Also show names (recorded in the audit log as a read of personal data).
        #[arg(long)]
        show_names: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show one customer's record and recent messages (audited).
    Show {
        /// Phone number in any notation, or WhatsApp user id (`DE.…`).
        phone: String,
        #[arg(long)]
        json: bool,
    },
    /// Export everything about one person as an age-encrypted file (audited).
    Export {
        /// Phone number in any notation, or WhatsApp user id (`DE.…`).
        phone: String,
        /// age recipient (age1…) of the person who receives the export.
        #[arg(long)]
        recipient: String,
        /// Output file (created with mode 0600; must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Forget one person: delete every row and crypto-shred their key (audited).
    Forget {
        /// Phone number in any notation, or WhatsApp user id (`DE.…`).
        phone: String,
        /// Why (a category; free text is deliberately not recorded).
        #[arg(long, value_enum)]
        reason: ReasonArg,
        #[arg(long)]
        json: bool,
    },
    /// Pause the bot for one customer (staff take over).
    Pause {
        phone: String,
        #[arg(long)]
        json: bool,
    },
    /// Let the bot answer one customer again.
    Resume {
        phone: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ReasonArg {
    /// An erasure request under Art. 17 GDPR (DSGVO).
    DsgvoRequest,
    /// The customer asked informally.
    CustomerRequest,
    /// Anything else.
    Other,
}

impl From<ReasonArg> for ForgetReason {
    fn from(r: ReasonArg) -> Self {
        match r {
            ReasonArg::DsgvoRequest => ForgetReason::DsgvoRequest,
            ReasonArg::CustomerRequest => ForgetReason::CustomerRequest,
            ReasonArg::Other => ForgetReason::Other,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Show audit entries.
    Show {
        /// From this date (YYYY-MM-DD) or time (RFC 3339) on.
        #[arg(long)]
        since: Option<String>,
        /// Before this date or time.
        #[arg(long)]
        until: Option<String>,
        /// system, relay, customer, admin, a uid or a user name.
        #[arg(long)]
        actor: Option<String>,
        /// Entries about the customer with this phone number or WhatsApp user id.
        #[arg(long)]
        customer: Option<String>,
        /// An action (customer.forget) or a prefix ending in a dot (customer.).
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Verify the hash chain (exit 5 and the first bad sequence number when it is broken).
    Verify {
        /// A head noted earlier (SEQ:HASH, e.g. from the last line of an export).
        #[arg(long)]
        expect_head: Option<Head>,
        #[arg(long)]
        json: bool,
    },
    /// Export entries as JSON lines or CSV (to stdout or --out).
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: FormatArg,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    Jsonl,
    Csv,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ByArg {
    Day,
    Week,
    Month,
}

/// `frontdesk stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// From this date (YYYY-MM-DD) on.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long, value_enum, default_value = "week")]
    pub by: ByArg,
    #[arg(long)]
    pub json: bool,
}

/// The socket path from the configuration (the default when the file cannot be read).
pub(super) fn client(cli: &Cli) -> AdminClient {
    let socket = match Config::load(&cli.config) {
        Ok(cfg) => cfg.service.admin_socket,
        Err(_) => ServiceConfig::default().admin_socket,
    };
    AdminClient::new(&socket)
}

/// Prints the error and maps it to the exit code.
pub(super) fn fail(e: ClientError) -> u8 {
    eprintln!("frontdesk: {e}");
    match e {
        ClientError::Unreachable { .. } => exit::DAEMON_UNREACHABLE,
        ClientError::Denied(_) => exit::DENIED,
        _ => exit::FAILURE,
    }
}

macro_rules! call {
    ($e:expr) => {
        match $e {
            Ok(a) => a,
            Err(e) => return Ok(fail(e)),
        }
    };
}

fn print_json(a: &Answer) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(&a.body)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Parses `YYYY-MM-DD` (start of that day in the studio's time zone) or an RFC 3339 time.
pub fn parse_time(s: &str) -> anyhow::Result<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let d: Date = s
        .parse()
        .with_context(|| format!("{s:?} is neither a date (YYYY-MM-DD) nor an RFC 3339 time"))?;
    Ok(d.to_zoned(jiff::tz::TimeZone::get("Europe/Berlin")?)?
        .timestamp())
}

fn opt_time(s: &Option<String>) -> anyhow::Result<Option<Timestamp>> {
    s.as_deref().map(parse_time).transpose()
}

pub fn status(cli: &Cli, json: bool) -> anyhow::Result<u8> {
    let a = call!(client(cli).get(api::STATUS));
    if json {
        print_json(&a)?;
        return Ok(exit::OK);
    }
    let s: StatusReply = call!(a.json());
    println!("frontdesk {}", s.version);
    println!(
        "uptime:          {} (since {})",
        human_secs(s.uptime_secs),
        s.started_at
    );
    for (name, v) in &s.components {
        let text = v
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        println!("{:<16} {text}", format!("{name}:"));
    }
    println!(
        "store:           {} ({} bytes, {} customers)",
        s.store_path, s.store_bytes, s.customers
    );
    println!("audit head:      {}", s.audit_head);
    match &s.last_retention {
        Some(r) => println!(
            "last retention:  {} (messages {}, customers {}, seen ids {}, audit entries {})",
            r.at,
            r.store.messages_deleted,
            r.store.customers_forgotten,
            r.store.seen_ids_deleted,
            r.audit.pruned
        ),
        None => println!("last retention:  never"),
    }
    Ok(exit::OK)
}

fn human_secs(s: u64) -> String {
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {}s", s % 60)
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one match arm per customers verb, each a request and its printing; split up they would only be renamed"
)]
pub fn customers(cli: &Cli, cmd: &CustomersCommand) -> anyhow::Result<u8> {
    let c = client(cli);
    match cmd {
        CustomersCommand::List {
            status,
            since,
            show_names,
            json,
        } => {
            let req = ListRequest {
                status: status.clone(),
                since: opt_time(since)?,
                show_names: *show_names,
            };
            let a = call!(c.post(api::CUSTOMERS_LIST, &req));
            if *json {
                print_json(&a)?;
            } else {
                let rows: Vec<CustomerRow> = call!(a.json());
                println!(
                    "{:<16} {:<14} {:<22} NAME",
                    "PSEUDONYM", "STATUS", "LAST CONTACT"
                );
                for r in &rows {
                    println!(
                        "{:<16} {:<14} {:<22} {}",
                        r.pseudonym,
                        r.status,
                        r.last_contact.strftime("%Y-%m-%d %H:%M UTC").to_string(),
                        r.name
                            .as_deref()
                            .unwrap_or(if *show_names { "" } else { "-" })
                    );
                }
                println!("{} customers", rows.len());
            }
        }
        CustomersCommand::Show { phone, json } => {
            let a = call!(c.post(
                api::CUSTOMERS_SHOW,
                &PhoneRequest {
                    phone: phone.clone()
                }
            ));
            if *json {
                print_json(&a)?;
            } else {
                let d: CustomerDetail = call!(a.json());
                println!("pseudonym:     {}", d.pseudonym);
                println!("status:        {} ({})", d.status, d.status_label);
                println!("phone:         {}", d.phone);
                if let Some(user_id) = d.user_id.as_ref().filter(|u| **u != d.phone) {
                    println!("user id:       {user_id}");
                }
                if let Some(n) = &d.contact_name {
                    println!("whatsapp name: {n}");
                }
                if let Some(u) = &d.username {
                    println!("username:      {u}");
                }
                if let Some(s) = &d.lead_source {
                    println!("came from ad:  {s}");
                }
                println!("first contact: {}", d.first_contact);
                println!("last contact:  {}", d.last_contact);
                println!("ever booked:   {}", d.ever_booked);
                if let Some(p) = d.profile.as_object() {
                    for (k, v) in p {
                        let text = v
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string());
                        println!("  {k}: {text}");
                    }
                }
                println!(
                    "messages:      {} (last {} below)",
                    d.messages_total,
                    d.recent_messages.len()
                );
                for m in &d.recent_messages {
                    let arrow = if m.direction == "inbound" { "<" } else { ">" };
                    println!("  {arrow} {} {}", m.at.strftime("%Y-%m-%d %H:%M"), m.text);
                }
            }
        }
        CustomersCommand::Export {
            phone,
            recipient,
            out,
        } => {
            // Refuse an existing file before the daemon records an export.
            let mut file = super::store_cmd::create_private(out)?;
            let req = ExportRequest {
                phone: phone.clone(),
                recipient: recipient.clone(),
            };
            let a = match c.post(api::CUSTOMERS_EXPORT, &req) {
                Ok(a) => a,
                Err(e) => {
                    drop(file);
                    let _ = std::fs::remove_file(out);
                    return Ok(fail(e));
                }
            };
            file.write_all(&a.body)?;
            file.sync_all()?;
            println!(
                "export written to {} ({} bytes, age-encrypted to {recipient})",
                out.display(),
                a.body.len()
            );
        }
        CustomersCommand::Forget {
            phone,
            reason,
            json,
        } => {
            let req = ForgetRequest {
                phone: phone.clone(),
                reason: (*reason).into(),
            };
            let a = call!(c.post(api::CUSTOMERS_FORGET, &req));
            if *json {
                print_json(&a)?;
            } else {
                let r: ForgetReply = call!(a.json());
                if r.existed {
                    println!(
                        "forgot {}: rows deleted, key destroyed (audit entry {})",
                        r.pseudonym, r.audit_seq
                    );
                } else {
                    println!(
                        "no data about {} was stored; recorded the request (audit entry {})",
                        r.pseudonym, r.audit_seq
                    );
                }
            }
        }
        CustomersCommand::Pause { phone, json } | CustomersCommand::Resume { phone, json } => {
            let path = if matches!(cmd, CustomersCommand::Pause { .. }) {
                api::CUSTOMERS_PAUSE
            } else {
                api::CUSTOMERS_RESUME
            };
            let a = call!(c.post(
                path,
                &PhoneRequest {
                    phone: phone.clone()
                }
            ));
            if *json {
                print_json(&a)?;
            } else {
                let r: ModeReply = call!(a.json());
                println!("{}: {}", r.pseudonym, r.mode);
            }
        }
    }
    Ok(exit::OK)
}

fn print_entry(r: &AuditRecord) {
    let outcome = match &r.reason {
        Some(reason) => format!("{}({reason})", r.outcome.code()),
        None => r.outcome.code().to_string(),
    };
    let details = if r.details.is_empty() {
        String::new()
    } else {
        serde_json::to_string(&r.details).unwrap_or_default()
    };
    println!(
        "{:>6} {} {:<22} {:<24} {:<14} {:<16} {:<13} {}",
        r.seq,
        r.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        r.actor.label(),
        r.action,
        r.subject.as_ref().map(|s| s.as_str()).unwrap_or("-"),
        outcome,
        r.purpose.code(),
        details
    );
}

#[expect(
    clippy::too_many_lines,
    reason = "one match arm per audit verb, each a request and its printing"
)]
pub fn audit(cli: &Cli, cmd: &AuditCommand) -> anyhow::Result<u8> {
    let c = client(cli);
    match cmd {
        AuditCommand::Show {
            since,
            until,
            actor,
            customer,
            action,
            json,
        } => {
            let req = AuditShowRequest {
                filter: AuditFilter {
                    since: opt_time(since)?,
                    until: opt_time(until)?,
                    actor: actor.clone(),
                    subject: None,
                    action: action.clone(),
                    limit: None,
                },
                customer_phone: customer.clone(),
            };
            let a = call!(c.post(api::AUDIT_SHOW, &req));
            if *json {
                print_json(&a)?;
            } else {
                let records: Vec<AuditRecord> = call!(a.json());
                for r in &records {
                    print_entry(r);
                }
                println!("{} entries", records.len());
            }
        }
        AuditCommand::Verify { expect_head, json } => {
            // The CLI reads the journal itself where it may (root, adm, systemd-journal); the
            // daemon's own user usually may not.
            let journal = audit::journal::last_head();
            let req = VerifyRequest {
                expected_head: *expect_head,
                journal_head: journal.as_ref().ok().copied(),
                use_journal: journal.is_err(),
            };
            let a = call!(c.post(api::AUDIT_VERIFY, &req));
            let mut report: VerifyReport = call!(a.json());
            if let Err(why) = journal {
                // Keep the CLI's reason when the daemon could not read it either.
                for anchor in &mut report.anchors {
                    if let AnchorCheck::JournalUnavailable { why: w } = anchor {
                        *w = format!("{why}; daemon: {w}");
                    }
                }
            }
            if *json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                match &report.verification {
                    Verification::Ok { entries, head } => {
                        println!("audit log intact: {entries} entries, head {head}")
                    }
                    Verification::Broken {
                        first_bad_seq,
                        reason,
                    } => println!("audit log BROKEN at entry {first_bad_seq}: {reason}"),
                }
                for anchor in &report.anchors {
                    match anchor {
                        AnchorCheck::Given { head } => {
                            println!("compared with the given head {head}")
                        }
                        AnchorCheck::Journal { head } => {
                            println!("compared with the journal's last audit entry {head}")
                        }
                        AnchorCheck::JournalUnavailable { why } => {
                            println!("journal not compared: {why}")
                        }
                    }
                }
            }
            return Ok(if report.is_ok() {
                exit::OK
            } else {
                exit::VERIFY_FAILED
            });
        }
        AuditCommand::Export {
            format,
            since,
            until,
            out,
        } => {
            let req = AuditExportRequest {
                format: match format {
                    FormatArg::Jsonl => ExportFormat::Jsonl,
                    FormatArg::Csv => ExportFormat::Csv,
                },
                since: opt_time(since)?,
                until: opt_time(until)?,
            };
            let a = call!(c.post(api::AUDIT_EXPORT, &req));
            match out {
                Some(path) => {
                    let mut f = super::store_cmd::create_private(path)?;
                    f.write_all(&a.body)?;
                    f.sync_all()?;
                }
                None => std::io::stdout().lock().write_all(&a.body)?,
            }
        }
    }
    Ok(exit::OK)
}

/// `retention run` through the daemon; when it is not running, directly on the store.
pub fn retention(cli: &Cli, dry_run: bool, json: bool) -> anyhow::Result<u8> {
    let a = match client(cli).post(api::RETENTION_RUN, &RetentionRequest { dry_run }) {
        Ok(a) => a,
        Err(ClientError::Unreachable { .. }) => {
            let cfg = Config::load(&cli.config)?;
            return super::store_cmd::retention_offline(&cfg, dry_run, json);
        }
        Err(e) => return Ok(fail(e)),
    };
    if json {
        print_json(&a)?;
    } else {
        let r: RetentionRun = call!(a.json());
        print_retention(&r);
    }
    Ok(exit::OK)
}

pub(super) fn print_retention(r: &RetentionRun) {
    println!(
        "{}messages deleted: {}, customers forgotten: {}, seen ids deleted: {}, audit entries pruned: {}",
        if r.dry_run { "(dry run) " } else { "" },
        r.store.messages_deleted,
        r.store.customers_forgotten,
        r.store.seen_ids_deleted,
        r.audit.pruned
    );
}

pub fn stats(cli: &Cli, args: &StatsArgs) -> anyhow::Result<u8> {
    let since = match &args.since {
        Some(s) => Some(
            s.parse::<Date>()
                .with_context(|| format!("--since {s:?}: expected YYYY-MM-DD"))?,
        ),
        None => None,
    };
    let req = StatsRequest {
        since,
        by: match args.by {
            ByArg::Day => Period::Day,
            ByArg::Week => Period::Week,
            ByArg::Month => Period::Month,
        },
    };
    let a = call!(client(cli).post(api::STATS, &req));
    if args.json {
        print_json(&a)?;
        return Ok(exit::OK);
    }
    let r: FunnelReport = call!(a.json());
    println!(
        "{:<10} {:>8} {:>10} {:>8} {:>10} {:>9} {:>9}",
        "PERIOD", "NEW", "NAME KNOWN", "TRIALS", "CONVERSION", "HANDOVERS", "OPT-OUTS"
    );
    let line = |row: &FunnelRow| {
        println!(
            "{:<10} {:>8} {:>10} {:>8} {:>10} {:>9} {:>9}",
            row.period,
            row.new_contacts,
            row.name_known,
            row.trial_booked,
            row.conversion_pct
                .map(|p| format!("{p:.1} %"))
                .unwrap_or_else(|| "-".into()),
            row.handovers,
            row.opt_outs
        )
    };
    r.rows.iter().for_each(line);
    line(&r.total);
    if !r.sources.is_empty() {
        println!();
        println!(
            "{:<6} {:<24} {:>8} {:>8}  HEADLINE",
            "SOURCE", "ID", "CONTACTS", "TRIALS"
        );
        for s in &r.sources {
            println!(
                "{:<6} {:<24} {:>8} {:>8}  {}",
                s.source_type,
                s.source_id,
                s.contacts,
                s.trial_booked,
                s.headline.as_deref().unwrap_or("-")
            );
        }
    }
    println!();
    print_first_replies(&r);
    println!();
    print_costs(&r);
    Ok(exit::OK)
}

/// How long new contacts waited for their first reply, over the whole report.
fn print_first_replies(r: &FunnelReport) {
    let d = &r.total.first_replies;
    let share = d
        .within_5m_pct()
        .map_or_else(|| "-".to_string(), |p| format!("{p:.1} %"));
    println!(
        "FIRST REPLIES {}, within 5 min {share}: {}",
        d.total(),
        ReplyDelay::ALL
            .iter()
            .zip(["<=1m", "<=5m", "<=15m", "<=1h", "<=4h", "<=24h", ">24h"])
            .map(|(bucket, label)| format!("{label} {}", d.get(*bucket)))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The messages of each period by pricing category and what they cost at the configured rates.
fn print_costs(r: &FunnelReport) {
    println!(
        "{:<10} {:>8} {:>8} {:>9} {:>8} {:>8} {:>10} {:>10}",
        "PERIOD", "SERVICE", "UTILITY", "MARKETING", "AUTH", "MESSAGES", "COST EUR", "EUR/TRIAL"
    );
    let line = |row: &FunnelRow| {
        let m = &row.messages;
        println!(
            "{:<10} {:>8} {:>8} {:>9} {:>8} {:>8} {:>10.2} {:>10}",
            row.period,
            m.service,
            m.utility,
            m.marketing,
            m.authentication,
            m.total(),
            row.cost_eur,
            row.cost_per_trial_eur
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "-".into()),
        )
    };
    r.rows.iter().for_each(line);
    line(&r.total);
    let micro = |m: u64| m as f64 / 1_000_000.0;
    println!(
        "estimated at [whatsapp.pricing] (EUR a message: service {:.4}, utility {:.4}, marketing {:.4}, authentication {:.4}; as of {}); Meta's invoice is what counts",
        micro(r.rates.service_micro_eur),
        micro(r.rates.utility_micro_eur),
        micro(r.rates.marketing_micro_eur),
        micro(r.rates.authentication_micro_eur),
        r.rates
            .as_of
            .map_or_else(|| "unknown".to_string(), |d| d.to_string()),
    );
}
