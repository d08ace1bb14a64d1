//! Writes the seed inputs of every fuzz target into `corpus/<target>/seed-*`: webhook bodies from
//! the Graph API simulator's payload builder (bare, and signed in the `webhook` target's layout),
//! admin requests as the CLI sends them, tunnel hello and reply exchanges, bodies the MagicLine
//! simulator answers along a whole booking, and German appointment wishes.
//!
//! Run by `smoke.sh --seed` (see README.md); the committed corpora were grown from these.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use frontdesk::admin::api;
use frontdesk::audit::ForgetReason;
use frontdesk::magicline::api::{
    BookingRequest, CustomerSearch, LeadCustomerData, LeadRequest, Page, Slot,
    TrialOfferAppointment,
};
use frontdesk::sandbox::magicline as ml;
use frontdesk::sandbox::whatsapp::PayloadBuilder;
use frontdesk::whatsapp::payload::MediaKind;
use frontdesk::whatsapp::signature;
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Corpus {
    dir: PathBuf,
    count: usize,
}

impl Corpus {
    fn new(root: &Path, target: &str) -> Result<Corpus> {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        Ok(Corpus { dir, count: 0 })
    }

    fn add(&mut self, bytes: &[u8]) -> Result<()> {
        self.count += 1;
        std::fs::write(self.dir.join(format!("seed-{:03}", self.count)), bytes)?;
        Ok(())
    }
}

fn webhook(root: &Path) -> Result<()> {
    let mut c = Corpus::new(root, "webhook")?;
    let b = PayloadBuilder::default();
    let (from, ts) = ("4915112345678", 1_767_225_600);
    let payloads = vec![
        b.text_message(from, "wamid.1", "Hallo, ich möchte ein Probetraining", ts),
        b.text_message_from_user_id("DE.1234567890abcdef", "wamid.2", "Hi", ts),
        b.button_reply(from, "wamid.3", "slot-1", "Dienstag 18 Uhr", ts),
        b.list_reply(from, "wamid.4", "row-2", "Mittwoch", "abends", ts),
        b.template_button(from, "wamid.5", "JA", "Ja, gerne", ts),
        b.reaction(from, "wamid.6", "wamid.1", Some("👍"), ts),
        b.media(from, "wamid.7", MediaKind::Voice, ts),
        b.media_with_caption(from, "wamid.8", MediaKind::Image, "mein Rücken", ts),
        b.quoting(b.text_message(from, "wamid.9", "Ja", ts), "wamid.out.1"),
        b.from_ad(
            b.text_message(from, "wamid.10", "Infos bitte", ts),
            "ad-1",
            "Probetraining gratis",
        ),
        b.welcome_request(from, "wamid.11", ts),
        b.flow_reply(
            from,
            "wamid.12",
            &json!({"name": "Anna", "ziel": ["Rücken", "Kraft"]}),
            ts,
        ),
        b.edit(from, "wamid.13", "wamid.1", "Hallo, morgen geht auch", ts),
        b.revoke(from, "wamid.14", "wamid.1", ts),
        b.location(from, "wamid.15", ts),
        b.contacts(from, "wamid.16", ts),
        b.unsupported(from, "wamid.17", ts),
        b.number_changed(from, "wamid.18", "4915199999999", ts),
        b.number_changed_2026(from, "wamid.19", "4915199999999", ts),
        b.user_id_changed(from, "wamid.20", "DE.old", "DE.new", ts),
        b.status("wamid.out.1", from, "delivered", ts),
        b.status_failed(
            "wamid.out.2",
            from,
            131047,
            "Re-engagement message",
            "24h",
            ts,
        ),
        b.account_error(190, "Access token expired", "token"),
        b.template_category_update(1, "termin_erinnerung", "de", "UTILITY", "MARKETING"),
        b.template_category_impending(1, "termin_erinnerung", "de", "UTILITY", "MARKETING", ts),
        PayloadBuilder::for_number("999").text_message(from, "wamid.21", "anders", ts),
    ];
    for p in &payloads {
        let body = serde_json::to_vec(p)?;
        c.add(&body)?;
        // The target's layout: header length, header, body.
        let header = signature::sign(b"fuzz-app-secret", &body);
        let mut signed = vec![u8::try_from(header.len())?];
        signed.extend_from_slice(header.as_bytes());
        signed.extend_from_slice(&body);
        c.add(&signed)?;
    }
    c.add(&serde_json::to_vec(&frontdesk::sandbox::whatsapp::batch(
        &payloads,
    ))?)?;
    Ok(())
}

fn admin(root: &Path) -> Result<()> {
    let mut c = Corpus::new(root, "admin_request")?;
    let phone = "+49 151 2345678";
    // (index into the target's route table, body)
    let requests: Vec<(u8, Value)> = vec![
        (0, Value::Null),
        (
            1,
            json!(api::ListRequest {
                status: Some("new_lead".into()),
                since: None,
                show_names: true
            }),
        ),
        (
            2,
            json!(api::PhoneRequest {
                phone: phone.into()
            }),
        ),
        (
            3,
            json!(api::ExportRequest {
                phone: phone.into(),
                recipient: "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq".into()
            }),
        ),
        (
            4,
            json!(api::ForgetRequest {
                phone: "DE.1234567890".into(),
                reason: ForgetReason::DsgvoRequest
            }),
        ),
        (
            5,
            json!(api::PhoneRequest {
                phone: phone.into()
            }),
        ),
        (
            6,
            json!(api::PhoneRequest {
                phone: phone.into()
            }),
        ),
        (
            7,
            json!({"action": "customer.", "limit": 20, "since": "2026-01-01T00:00:00Z", "customer_phone": phone}),
        ),
        (
            8,
            json!({"expected_head": {"seq": 3, "hash": "00".repeat(32)}, "use_journal": false}),
        ),
        (
            9,
            json!(api::AuditExportRequest {
                format: api::ExportFormat::Csv,
                since: None,
                until: None
            }),
        ),
        (10, json!(api::RetentionRequest { dry_run: true })),
        (11, json!({"since": "2026-11-01", "by": "month"})),
        (
            12,
            json!(api::SendRequest {
                phone: phone.into(),
                template: "termin_erinnerung".into(),
                language: Some("de".into()),
                params: vec!["Anna".into()]
            }),
        ),
    ];
    for (route, body) in requests {
        // POST for every route but status (GET); the method is the selector's low two bits.
        let method = if route == 0 { 0 } else { 1 };
        let mut input = vec![(route << 2) | method];
        if !body.is_null() {
            input.extend_from_slice(&serde_json::to_vec(&body)?);
        }
        c.add(&input)?;
    }
    // A path outside the table.
    c.add(b"\xfd/v1/customers/../status\n{}")?;
    Ok(())
}

fn tunnel(root: &Path) -> Result<()> {
    let mut c = Corpus::new(root, "tunnel_hello")?;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let token = frontdesk::tunnel::TunnelToken::new("0123456789abcdef0123456789abcdef")?;
    for line in [
        format!("FRONTDESK-TUNNEL/1 {}", token.expose()),
        "FRONTDESK-TUNNEL/2 abc".to_owned(),
        "FRONTDESK-TUNNEL/1".to_owned(),
        "OK".to_owned(),
        "ERR unauthorized".to_owned(),
        "ERR protocol".to_owned(),
        token.sha256_hex(),
    ] {
        let mut input = line.into_bytes();
        input.push(b'\n');
        input.extend_from_slice(preface);
        c.add(&input)?;
    }
    Ok(())
}

/// One HTTP/1.1 exchange with the simulator; returns the answer's body.
fn http(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Vec<u8>> {
    let body = body
        .map(serde_json::to_vec)
        .transpose()?
        .unwrap_or_default();
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "{method} /v1{path} HTTP/1.1\r\nhost: sim\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(&body)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let start = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header end")?;
    Ok(answer[start + 4..].to_vec())
}

fn magicline(root: &Path) -> Result<()> {
    let mut c = Corpus::new(root, "magicline_response")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sim = rt.block_on(ml::start(ml::SimConfig::default()));
    let (addr, key) = (sim.addr(), sim.api_key());
    // Serve on a background thread while this one makes blocking calls.
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        rt.block_on(async {
            tokio::task::spawn_blocking(move || stopped.recv())
                .await
                .ok();
            sim.shutdown().await;
        })
    });
    let mut add = |selector: u8, body: Vec<u8>| -> Result<Vec<u8>> {
        let mut input = vec![selector];
        input.extend_from_slice(&body);
        c.add(&input)?;
        Ok(body)
    };
    let offers = add(
        0,
        http(
            addr,
            &key,
            "GET",
            "/trial-offers/bookable-trial-offers/appointments/bookable",
            None,
        )?,
    )?;
    let offers: Page<TrialOfferAppointment> = serde_json::from_slice(&offers)?;
    let offer = offers.result.first().ok_or("no trial offer")?;
    let (config, appointment) = (
        offer.trial_offer_config_id,
        offer.trial_offer_bookable_appointment.id,
    );
    add(
        1,
        http(
            addr,
            &key,
            "GET",
            &format!("/trial-offers/config/{config}"),
            None,
        )?,
    )?;
    let lead = json!(LeadRequest {
        lead_customer_data: LeadCustomerData::new("Anna", "Beispiel", "anna@example.invalid"),
        trial_offer_config_id: config,
    });
    add(
        2,
        http(
            addr,
            &key,
            "POST",
            "/trial-offers/lead/validate",
            Some(&lead),
        )?,
    )?;
    let created: Value = serde_json::from_slice(&add(
        3,
        http(addr, &key, "POST", "/trial-offers/lead/create", Some(&lead))?,
    )?)?;
    let customer = created
        .get("customerId")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let slots = add(
        4,
        http(
            addr,
            &key,
            "GET",
            &format!(
                "/trial-offers/bookable-trial-offers/appointments/bookable/{appointment}/slots"
            ),
            None,
        )?,
    )?;
    let slots: Vec<Slot> = serde_json::from_slice(&slots)?;
    if let Some(slot) = slots.first() {
        let req = json!(BookingRequest::for_slot(customer, appointment, slot));
        add(
            5,
            http(
                addr,
                &key,
                "POST",
                "/trial-offers/appointments/booking/validate",
                Some(&req),
            )?,
        )?;
        let booked: Value = serde_json::from_slice(&add(
            6,
            http(
                addr,
                &key,
                "POST",
                "/trial-offers/appointments/booking/book",
                Some(&req),
            )?,
        )?)?;
        let id = booked.get("bookingId").and_then(Value::as_i64).unwrap_or(1);
        add(
            7,
            http(
                addr,
                &key,
                "POST",
                &format!("/trial-offers/bookings/{id}/confirm"),
                None,
            )?,
        )?;
        // The same slot again: a validation status other than AVAILABLE.
        add(
            5,
            http(
                addr,
                &key,
                "POST",
                "/appointments/bookable/validate",
                Some(&req),
            )?,
        )?;
    }
    add(8, http(addr, &key, "GET", "/appointments/bookable", None)?)?;
    add(
        9,
        http(
            addr,
            &key,
            "GET",
            &format!("/appointments/booking?customerId={customer}"),
            None,
        )?,
    )?;
    let search = json!(CustomerSearch::by_email("anna@example.invalid"));
    add(
        10,
        http(addr, &key, "POST", "/customers/search", Some(&search))?,
    )?;
    add(
        11,
        http(addr, &key, "GET", "/trial-offers/config/999999", None)?,
    )?;
    add(
        11,
        http(addr, "wrong-key", "GET", "/appointments/bookable", None)?,
    )?;
    add(12, b"2022-06-22T08:00:00.000+02:00[Europe/Berlin]".to_vec())?;
    let _ = stop.send(());
    let _ = server.join();
    Ok(())
}

fn when(root: &Path) -> Result<()> {
    let mut c = Corpus::new(root, "when")?;
    // 2026-11-26 10:00 UTC, three offered slots.
    let now = u32::try_from(1_795_687_200 - 946_684_800_i64)?.to_le_bytes();
    for text in [
        "nächsten Dienstag um 18 Uhr",
        "morgen abends",
        "am 20.1. gegen halb sechs",
        "Donnerstag nächste Woche 7 Uhr morgens",
        "übermorgen zwischen 17 und 19 Uhr",
        "in 3 Tagen nachmittags, kostet 39,90 €?",
        "Guten Morgen! Heute 06:30?",
        "2026-12-24 um 10",
        "die zweite bitte",
        "Nr. 3",
        "den letzten",
        "2",
    ] {
        let mut input = now.to_vec();
        input.push(3);
        input.extend_from_slice(text.as_bytes());
        c.add(&input)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    webhook(&root)?;
    admin(&root)?;
    tunnel(&root)?;
    magicline(&root)?;
    when(&root)?;
    Ok(())
}
