//! `frontdesk send`: starts a WhatsApp chat with an approved message template, through the
//! running daemon, which files it in the customer's history, queues it for its sender and audits
//! it. Exit codes as the other admin verbs: 3 daemon not reachable, 4 permission denied.

use std::io::Write;

use clap::Args;

use super::{exit, Cli};
use crate::admin::api::{SendReply, SendRequest, SEND};
use crate::admin::client::{AdminClient, ClientError};
use crate::config::{Config, ServiceConfig};
use crate::whatsapp::templates::{CategorySource, TemplateCategory};

/// `frontdesk send PHONE --template NAME [--param P]... [--language de]`.
#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// Phone number in any notation (+49 151 2345678).
    pub phone: String,
    /// Name of a template approved in WhatsApp Manager.
    #[arg(long)]
    pub template: String,
    /// Body parameter ({{1}}, {{2}}, … in the order given); repeat for several.
    #[arg(long = "param", value_name = "P")]
    pub params: Vec<String>,
    /// Template language (default: whatsapp.template_language).
    #[arg(long)]
    pub language: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `frontdesk send` against the daemon named in the configuration.
pub fn run(cli: &Cli, args: &SendArgs) -> anyhow::Result<u8> {
    let socket = match Config::load(&cli.config) {
        Ok(cfg) => cfg.service.admin_socket,
        Err(_) => ServiceConfig::default().admin_socket,
    };
    send(
        &AdminClient::new(&socket),
        args,
        &mut std::io::stdout().lock(),
    )
}

fn send(client: &AdminClient, args: &SendArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let req = SendRequest {
        phone: args.phone.clone(),
        template: args.template.clone(),
        language: args.language.clone(),
        params: args.params.clone(),
    };
    let answer = match client.post(SEND, &req) {
        Ok(a) => a,
        Err(e) => return Ok(fail(e)),
    };
    if args.json {
        out.write_all(&answer.body)?;
        writeln!(out)?;
        return Ok(exit::OK);
    }
    let reply: SendReply = match answer.json() {
        Ok(r) => r,
        Err(e) => return Ok(fail(e)),
    };
    writeln!(
        out,
        "template {} queued for customer {}{}",
        args.template,
        reply.pseudonym,
        if reply.new_customer {
            " (new customer)"
        } else {
            ""
        }
    )?;
    if let Some(line) = category_line(&reply) {
        writeln!(out, "{line}")?;
    }
    Ok(exit::OK)
}

/// What the template's category means for the send: its endpoint and its price.
fn category_line(reply: &SendReply) -> Option<String> {
    let category = reply.category?;
    let price = reply
        .price_eur
        .map(|p| format!(", about {p:.4} EUR"))
        .unwrap_or_default();
    Some(match (category, reply.category_source) {
        (_, Some(CategorySource::Assumed)) => format!(
            "category unknown: sent as utility{price}; add the template to \
             [whatsapp.template_categories]"
        ),
        (TemplateCategory::Marketing, source) => format!(
            "this is a MARKETING template{}: sent through marketing_messages, billed at the \
             marketing rate{price}",
            if source == Some(CategorySource::Webhook) {
                " (WhatsApp recategorised it)"
            } else {
                ""
            }
        ),
        (other, _) => format!("category {other}{price}"),
    })
}

fn fail(e: ClientError) -> u8 {
    eprintln!("frontdesk: {e}");
    match e {
        ClientError::Unreachable { .. } => exit::DAEMON_UNREACHABLE,
        ClientError::Denied(_) => exit::DENIED,
        _ => exit::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::admin::AdminState;
    use crate::audit::{Actor, AuditLog, AuditRecord, Status};
    use crate::store::crypto::StoreIdentity;
    use crate::store::messages::Direction;
    use crate::store::Store;
    use crate::whatsapp::queue::{OutboundKind, Queues};

    fn args(phone: &str) -> SendArgs {
        SendArgs {
            phone: phone.into(),
            template: "probetraining_erinnerung".into(),
            params: vec!["Annalena".into(), "Dienstag".into()],
            language: None,
            json: false,
        }
    }

    fn audit_entries(store: &Store) -> Vec<AuditRecord> {
        store
            .keyspaces()
            .audit
            .iter()
            .map(|g| serde_json::from_slice(&g.into_inner().unwrap().1).unwrap())
            .collect()
    }

    #[test]
    #[expect(
        clippy::too_many_lines,
        reason = "one scenario: send, what is filed, audited and said, then a recategorised template"
    )]
    fn send_queues_the_template_files_it_and_audits_it() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open(&dir.path().join("store"), StoreIdentity::generate()).unwrap());
        let audit = Arc::new(AuditLog::open(store.clone()).unwrap().without_journal());
        let state = Arc::new(AdminState::new(
            store.clone(),
            audit,
            Arc::new(Config::default()),
        ));
        let server = crate::admin::AdminServerThread::start(
            state.clone(),
            &dir.path().join("admin.sock"),
            "no-such-group-frontdesk",
        );
        let client = AdminClient::new(&server.socket);
        let phone = "+49 151 2345678";

        // Without the WhatsApp channel nothing can be queued.
        let mut out = Vec::new();
        assert_eq!(
            send(&client, &args(phone), &mut out).unwrap(),
            exit::FAILURE
        );
        assert!(store.customer(&store.pseudonym(phone)).unwrap().is_none());

        let queues = Arc::new(Queues::new(&store).unwrap());
        let wake = Arc::new(tokio::sync::Notify::new());
        state.set_outbox(queues.clone(), wake.clone());

        let mut out = Vec::new();
        assert_eq!(send(&client, &args(phone), &mut out).unwrap(), exit::OK);
        let printed = String::from_utf8(out).unwrap();
        let p = store.pseudonym(phone);
        assert!(printed.contains(&p.short()), "{printed}");
        assert!(printed.contains("new customer"), "{printed}");
        assert!(!printed.contains("2345678"), "{printed}");
        // Not configured and never recategorised: the category is an assumption, and said so.
        assert!(printed.contains("category unknown"), "{printed}");

        let rows = queues.outbox(&store).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].pseudonym, p);
        assert_eq!(rows[0].entry.to, "491512345678");
        assert_eq!(
            rows[0].entry.kind,
            OutboundKind::Template {
                name: "probetraining_erinnerung".into(),
                language: "de".into(),
                params: vec!["Annalena".into(), "Dienstag".into()],
                buttons: Vec::new(),
            }
        );
        let history = store.recent_messages(&p, 5).unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].direction, Direction::Outbound);
        assert_eq!(history[0].text, "[Vorlage probetraining_erinnerung]");

        // The sender was woken: a permit is stored for its next wait.
        let woken = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified())
                    .await
                    .is_ok()
            });
        assert!(woken);

        let entries = audit_entries(&store);
        let sent: Vec<&AuditRecord> = entries
            .iter()
            .filter(|r| r.action == "message.sent")
            .collect();
        assert_eq!(sent.len(), 2, "{sent:?}");
        let ok = sent[1];
        assert_eq!(ok.subject.as_ref().map(|s| s.to_string()), Some(p.short()));
        assert_eq!(ok.outcome, Status::Ok);
        assert!(matches!(ok.actor, Actor::Admin { .. }), "{ok:?}");
        // The attempt without the channel is on record as an error.
        assert_eq!(sent[0].outcome, Status::Error);
        // The phone number and the parameters never reach the audit log.
        let all = serde_json::to_string(&entries).unwrap();
        assert!(
            !all.contains("2345678") && !all.contains("Annalena"),
            "{all}"
        );

        // WhatsApp recategorised the English version as marketing.
        let mut batch = store.batch();
        crate::whatsapp::templates::record_update(
            &store,
            &mut batch,
            &crate::whatsapp::payload::TemplateCategoryUpdate {
                template_id: Some("42".into()),
                name: "probetraining_erinnerung".into(),
                language: "en_US".into(),
                previous_category: Some("UTILITY".into()),
                new_category: "MARKETING".into(),
                correct_category: None,
            },
            jiff::Timestamp::now(),
        );
        store.commit_durable(batch).unwrap();

        // A second template to the same person: same customer, second row.
        let mut a = args("0049 151 2345678");
        a.language = Some("en_US".into());
        a.json = true;
        let mut out = Vec::new();
        assert_eq!(send(&client, &a, &mut out).unwrap(), exit::OK);
        let reply: SendReply = serde_json::from_slice(&out).unwrap();
        assert!(!reply.new_customer);
        assert_eq!(reply.pseudonym, p.short());
        assert_eq!(reply.category, Some(TemplateCategory::Marketing));
        assert_eq!(reply.category_source, Some(CategorySource::Webhook));
        assert_eq!(reply.price_eur, Some(0.1365));
        let line = category_line(&reply).unwrap();
        assert!(
            line.contains("MARKETING") && line.contains("marketing_messages"),
            "{line}"
        );
        assert_eq!(queues.outbox(&store).unwrap().len(), 2);

        // Bad input is refused before anything is written.
        for bad in [
            SendArgs {
                template: "Not A Name".into(),
                ..args(phone)
            },
            SendArgs {
                params: vec![" ".into()],
                ..args(phone)
            },
            args("12"),
        ] {
            let mut out = Vec::new();
            assert_eq!(send(&client, &bad, &mut out).unwrap(), exit::FAILURE);
        }
        assert_eq!(queues.outbox(&store).unwrap().len(), 2);
        drop(server);
    }

    #[test]
    fn command_line_parses() {
        use clap::{CommandFactory, Parser};
        crate::cli::Cli::command().debug_assert();
        let cli = crate::cli::Cli::try_parse_from([
            "frontdesk",
            "send",
            "+49 151 2345678",
            "--template",
            "hallo",
            "--param",
            "Anna",
            "--param",
            "Di",
            "--language",
            "de",
        ])
        .unwrap();
        let crate::cli::Command::Send(a) = cli.command else {
            panic!("not send: {cli:?}");
        };
        assert_eq!(a.params, ["Anna", "Di"]);
        assert_eq!(a.language.as_deref(), Some("de"));
        let cli = crate::cli::Cli::try_parse_from(["frontdesk", "doctor", "--skip-model"]).unwrap();
        assert!(matches!(
            cli.command,
            crate::cli::Command::Doctor(super::super::doctor_cmd::DoctorArgs {
                skip_model: true,
                ..
            })
        ));
    }

    #[test]
    fn no_daemon_is_exit_3() {
        let dir = tempfile::tempdir().unwrap();
        let client = AdminClient::new(&dir.path().join("admin.sock"));
        let mut out = Vec::new();
        assert_eq!(
            send(&client, &args("+49 151 2345678"), &mut out).unwrap(),
            exit::DAEMON_UNREACHABLE
        );
    }
}
