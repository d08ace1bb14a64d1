//! Configuration: `/etc/frontdesk/frontdesk.toml`, parsed with serde (unknown keys are errors) and
//! validated afterwards. Every error names the file, the key and what is wrong. Secrets are never
//! part of it (see [`crate::secrets`]). `packaging/frontdesk.toml` documents every key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::store::retention::RetentionPolicy;
use crate::whatsapp::templates::TemplateCategory;

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/frontdesk/frontdesk.toml";

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The configuration file.
        file: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape (syntax, unknown key, wrong type).
    #[error("{file}: {message}")]
    Parse {
        /// The configuration file.
        file: PathBuf,
        /// What the TOML parser reported.
        message: String,
    },
    /// A key has a value frontdesk cannot work with.
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// The key, with its section (`retention.seen_ids_days`).
        key: String,
        /// What is wrong with the value.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[service]`.
    pub service: ServiceConfig,
    /// `[studio]`.
    pub studio: StudioConfig,
    /// `[webhook]`.
    pub webhook: WebhookConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[whatsapp]`.
    pub whatsapp: WhatsAppConfig,
    /// `[llm]`.
    pub llm: LlmConfig,
    /// `[conversation]`.
    pub conversation: ConversationConfig,
    /// `[magicline]`.
    pub magicline: MagicLineConfig,
    /// `[retention]`: how long data is kept.
    pub retention: RetentionPolicy,
    /// `[tunnel]`; absent: WhatsApp reaches the webhook listener some other way.
    pub tunnel: Option<TunnelConfig>,
    /// `[alerts]`: where staff alerts go.
    pub alerts: crate::alerts::AlertsConfig,
    /// `[console]`: the staff console.
    pub console: crate::console::ConsoleConfig,
    /// `[reminders]`: reminders before a booked trial, follow-ups after it.
    pub reminders: crate::reminders::RemindersConfig,
    /// Where the file was loaded from (not part of the file).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[service]`: paths, logging and the admin socket.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Store and models live here (systemd's StateDirectory).
    pub state_dir: PathBuf,
    /// The admin socket (systemd's RuntimeDirectory).
    pub admin_socket: PathBuf,
    /// Members of this group may use the admin socket (root always may).
    pub admin_group: String,
    /// Log level (error, warn, info, debug, trace); `RUST_LOG` overrides it.
    pub log_level: String,
    /// Development only: where credentials are read when `$CREDENTIALS_DIRECTORY` is unset.
    pub credentials_dir: Option<PathBuf>,
    /// Shipped prompts; files in `prompts_override_dir` win.
    pub prompts_dir: PathBuf,
    /// The studio's own prompt files, which override those of the same name in `prompts_dir`.
    pub prompts_override_dir: PathBuf,
    /// Watchdog pings require the pipeline to have turned over within this many seconds.
    pub watchdog_stall_secs: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            state_dir: "/var/lib/frontdesk".into(),
            admin_socket: "/run/frontdesk/admin.sock".into(),
            admin_group: "frontdesk-admin".into(),
            log_level: "info".into(),
            credentials_dir: None,
            prompts_dir: "/usr/share/frontdesk/prompts".into(),
            prompts_override_dir: "/etc/frontdesk/prompts".into(),
            watchdog_stall_secs: 60,
        }
    }
}

/// `[studio]`: facts the assistant may state. It states nothing beyond these.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StudioConfig {
    /// The studio's name, as the assistant says it.
    pub name: String,
    /// The assistant's first name (the persona).
    pub assistant_name: String,
    /// Postal address of the studio.
    pub address: String,
    /// The studio's phone number for callers.
    pub phone: String,
    /// The studio's website.
    pub website: String,
    /// Opening hours as people read them, one line per day group.
    pub opening_hours: Vec<String>,
    /// Offers and prices exactly as they may be quoted.
    pub offers: Vec<String>,
    /// What a trial training is (duration, what to bring).
    pub trial_info: String,
    /// Sent when the conversation is handed over to staff.
    pub handover_text: String,
    /// Sent for voice messages, pictures and other non-text messages.
    pub non_text_reply: String,
    /// Sent when someone opens the chat for the first time without writing (WhatsApp's
    /// `request_welcome`); the AI disclosure is put in front of it.
    pub welcome_reply: String,
    /// Sent once after an opt-out.
    pub opt_out_reply: String,
}

impl Default for StudioConfig {
    fn default() -> Self {
        StudioConfig {
            name: "Dein Studio".into(),
            assistant_name: "Max".into(),
            address: String::new(),
            phone: String::new(),
            website: String::new(),
            opening_hours: Vec::new(),
            offers: Vec::new(),
            trial_info: String::new(),
            handover_text: "Danke dir für deine Nachricht! Ich gebe das direkt an unser Team weiter – \
                            jemand meldet sich so schnell wie möglich persönlich bei dir. 🙏"
                .into(),
            non_text_reply: "Danke dir! Sprachnachrichten, Bilder und Dateien kann ich leider nicht \
                             öffnen – schreib mir einfach kurz als Text, dann helfe ich dir sofort weiter. 😊"
                .into(),
            welcome_reply: "Willkommen! 👋 Schön, dass du dich meldest. Möchtest du ein \
                            kostenloses Probetraining ausmachen, oder hast du eine Frage zu uns?"
                .into(),
            opt_out_reply: "Alles klar, du bekommst von uns keine Nachrichten mehr. Wenn du doch \
                            wieder Fragen hast, schreib uns einfach. 👋"
                .into(),
        }
    }
}

/// `[webhook]`: the local HTTP listener WhatsApp's webhook reaches (directly or via the tunnel).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Address of the local listener (reached through the tunnel or a reverse proxy).
    pub listen: SocketAddr,
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// Rejected requests audited per minute at most (the rest are counted in metrics only).
    pub audit_rejections_per_minute: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            max_body_bytes: 1024 * 1024,
            audit_rejections_per_minute: 60,
        }
    }
}

/// `[metrics]`: Prometheus metrics and health, localhost only.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of `/metrics` and `/healthz`; must be a loopback address.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9464".parse().expect("valid address"),
        }
    }
}

/// `[whatsapp]`: the WhatsApp Cloud API (Graph API) account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhatsAppConfig {
    /// Graph API base URL.
    pub graph_base: String,
    /// Graph API version (`v25.0`); see [`crate::whatsapp::versions`] for retirement dates.
    pub api_version: String,
    /// The WhatsApp Business phone number id (from Meta's app dashboard).
    pub phone_number_id: String,
    /// Template used when the 24-hour window is closed (error 131047); none → no message.
    pub reopen_template: Option<String>,
    /// Language of the reopen template, and of `frontdesk send` when none is given (`de`, `en_US`).
    pub template_language: String,
    /// Timeout of one Graph API call, in seconds.
    pub send_timeout_secs: u64,
    /// Concurrent conversations processed at once.
    pub max_concurrent_conversations: usize,
    /// `[whatsapp.template_categories]`: Meta's category of each template this box sends
    /// (name → `marketing`, `utility` or `authentication`). Marketing templates go through
    /// `/marketing_messages`; `template_category_update` webhooks override these.
    pub template_categories: BTreeMap<String, TemplateCategory>,
    /// `[whatsapp.pricing]`: what a message costs, for `frontdesk stats`.
    pub pricing: PricingConfig,
}

/// `[whatsapp.pricing]`: EUR per delivered message and pricing category, as on Meta's rate card
/// for the recipients' country. The studio maintains them; they only feed the estimate in
/// `frontdesk stats`, never what is sent.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// The day the rates were read from Meta's rate card (`YYYY-MM-DD`).
    pub as_of: String,
    /// A free-form message (service), bot replies included.
    pub service: f64,
    /// A utility template.
    pub utility: f64,
    /// A marketing template.
    pub marketing: f64,
    /// An authentication template.
    pub authentication: f64,
}

impl Default for PricingConfig {
    /// Meta's rates for Germany in EUR. Marketing, utility and authentication are the rate card
    /// of 1 July 2025. Meta had published no German rate for service messages when this was
    /// written; the utility rate stands in for it until the studio enters Meta's figure.
    fn default() -> Self {
        PricingConfig {
            as_of: "2025-07-01".into(),
            service: 0.0456,
            utility: 0.0456,
            marketing: 0.1365,
            authentication: 0.0636,
        }
    }
}

impl PricingConfig {
    /// The rates in millionths of a euro, as the stats report uses them.
    pub fn rates(&self) -> crate::stats::Rates {
        let micro = |eur: f64| (eur * 1_000_000.0).round() as u64;
        crate::stats::Rates {
            service_micro_eur: micro(self.service),
            utility_micro_eur: micro(self.utility),
            marketing_micro_eur: micro(self.marketing),
            authentication_micro_eur: micro(self.authentication),
            as_of: self.as_of.parse().ok(),
        }
    }
}

impl Default for WhatsAppConfig {
    fn default() -> Self {
        WhatsAppConfig {
            graph_base: "https://graph.facebook.com".into(),
            api_version: crate::whatsapp::versions::DEFAULT_VERSION.into(),
            phone_number_id: String::new(),
            reopen_template: None,
            template_language: "de".into(),
            send_timeout_secs: 15,
            max_concurrent_conversations: 8,
            template_categories: BTreeMap::new(),
            pricing: PricingConfig::default(),
        }
    }
}

/// Which language model backend answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmBackend {
    /// llama.cpp inside the daemon.
    Llama,
    /// An OpenAI-compatible server (llama-server, vLLM).
    Openai,
}

/// `[llm]`: model and sampling.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// llama.cpp inside the daemon or an OpenAI-compatible server.
    pub backend: LlmBackend,
    /// The GGUF model file (`llama` backend).
    pub model_path: PathBuf,
    /// Built-in chat template name when the GGUF has none (e.g. "chatml", "llama3").
    pub chat_template: Option<String>,
    /// Layers offloaded to the GPU (needs the CUDA build); 0: CPU only.
    pub gpu_layers: u32,
    /// CPU threads; 0: one per core.
    pub threads: u32,
    /// Context window in tokens.
    pub context_size: u32,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus sampling: smallest token set with at least this probability.
    pub top_p: f32,
    /// Penalty on tokens already in the context.
    pub repeat_penalty: f32,
    /// Longest reply, in tokens.
    pub max_tokens: u32,
    /// Sampler seed; 0: random.
    pub seed: u32,
    /// Requests waiting for the model at most; more are delayed, never dropped.
    pub queue_depth: usize,
    /// Base URL of the OpenAI-compatible server (`openai` backend).
    pub openai_base_url: String,
    /// Model name sent to that server.
    pub openai_model: String,
    /// Timeout of one request to that server, in seconds.
    pub request_timeout_secs: u64,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            backend: LlmBackend::Llama,
            model_path: "/var/lib/frontdesk/models/model.gguf".into(),
            chat_template: None,
            gpu_layers: 0,
            threads: 0,
            context_size: 4096,
            temperature: 0.8,
            top_p: 0.9,
            repeat_penalty: 1.2,
            max_tokens: 300,
            seed: 0,
            queue_depth: 64,
            openai_base_url: "http://127.0.0.1:8081".into(),
            openai_model: "default".into(),
            request_timeout_secs: 120,
        }
    }
}

/// `[conversation]`: history window and message coalescing.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversationConfig {
    /// Messages of history given to the model with each new message.
    pub history_messages: usize,
    /// Messages of one contact arriving within this many milliseconds get one combined reply.
    pub burst_window_ms: u64,
    /// Replies one contact gets per hour at most; beyond it their messages are recorded for
    /// staff but not answered, so one flooding sender cannot occupy the model.
    pub max_replies_per_hour: u32,
    /// Tries of a turn that fails (model, MagicLine or store error), the first included; after
    /// the last one the contact is handed to staff with their messages in the history.
    pub turn_attempts: u32,
    /// Seconds before the second try of a failed turn; doubled for each further one, at most
    /// five minutes, and no try later than 30 minutes after the first failure.
    pub turn_retry_delay_secs: u64,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        ConversationConfig {
            history_messages: 12,
            burst_window_ms: 3000,
            max_replies_per_hour: 30,
            turn_attempts: 5,
            turn_retry_delay_secs: 10,
        }
    }
}

/// `[magicline]`: the studio's MagicLine Open API tenant.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MagicLineConfig {
    /// `https://<tenant>.open-api.magicline.com/v1`; empty disables booking.
    pub base_url: String,
    /// Timeout of one MagicLine call, in seconds.
    pub timeout_secs: u64,
    /// How many days ahead free slots are searched (asked for in windows of at most six days,
    /// MagicLine's limit per query).
    pub days_ahead: u32,
    /// The bookable trial offer appointment leads book (its id as `frontdesk doctor` lists it);
    /// unset takes the first one MagicLine lists.
    pub trial_offer_appointment_id: Option<i64>,
    /// The bookable trial offer *class* leads book instead of an appointment (its id as
    /// `frontdesk doctor` lists it), for studios whose trial is a place in a group class.
    /// Excludes `trial_offer_appointment_id`.
    pub trial_offer_class_id: Option<i64>,
    /// The appointment type members book; unset books the trial offer's appointment type
    /// (with a trial class there is none, and members are handed to staff).
    pub member_appointment_id: Option<i64>,
    /// How frontdesk learns what staff change in MagicLine and who checks in: `webhook`
    /// (MagicLine calls `/webhook/magicline`; the `magicline-webhook-key` credential holds the
    /// key it sends) or `poll` (for studios without MagicLine webhooks: the booked trials are
    /// read every `poll_interval_secs`).
    pub events: MagicLineEvents,
    /// Seconds between sweeps of the booked trials: no-shows are settled, and with
    /// `events = "poll"` every upcoming and just-past trial is read.
    pub poll_interval_secs: u64,
    /// Minutes after a trial's end until which a check-in still counts for it; past that,
    /// without one, the trial is a no-show.
    pub no_show_after_minutes: u32,
}

/// How MagicLine's changes reach frontdesk (`[magicline] events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MagicLineEvents {
    /// MagicLine calls the webhook.
    #[default]
    Webhook,
    /// frontdesk asks MagicLine periodically.
    Poll,
}

impl Default for MagicLineConfig {
    fn default() -> Self {
        MagicLineConfig {
            base_url: String::new(),
            timeout_secs: 10,
            days_ahead: 14,
            trial_offer_appointment_id: None,
            trial_offer_class_id: None,
            member_appointment_id: None,
            events: MagicLineEvents::Webhook,
            poll_interval_secs: 300,
            no_show_after_minutes: 60,
        }
    }
}

/// `[tunnel]`: the outbound connection to `frontdesk relay`. Absent: no tunnel.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// `host:port` of the relay's tunnel listener.
    pub relay: String,
    /// TLS server name of the relay.
    pub server_name: String,
    /// PEM file with the CA that signed the relay's certificate; absent → system roots.
    pub ca_file: Option<PathBuf>,
    /// Which credential holds this box's token.
    #[serde(default = "default_tunnel_credential")]
    pub credential: String,
}

fn default_tunnel_credential() -> String {
    crate::secrets::names::TUNNEL_TOKEN.into()
}

impl Config {
    /// Loads and validates the configuration at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        cfg.source = path.to_path_buf();
        cfg.validate()?;
        // Alerts link the console where staff can reach it: its public URL, or its address
        // when it listens beyond this machine.
        if cfg.alerts.console_url.is_empty()
            && (!cfg.console.public_url.is_empty() || cfg.console.https())
        {
            cfg.alerts.console_url = cfg.console.url();
        }
        Ok(cfg)
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.service.state_dir.is_absolute() {
            return Err(self.invalid("service.state_dir", "must be an absolute path"));
        }
        if !self.service.admin_socket.is_absolute() {
            return Err(self.invalid("service.admin_socket", "must be an absolute path"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.service.log_level).is_err() {
            return Err(self.invalid(
                "service.log_level",
                "must be a level (error, warn, info, debug, trace) or a filter directive",
            ));
        }
        if self.webhook.max_body_bytes < 1024 || self.webhook.max_body_bytes > 64 * 1024 * 1024 {
            return Err(self.invalid(
                "webhook.max_body_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        if !self.metrics.listen.ip().is_loopback() {
            return Err(self.invalid(
                "metrics.listen",
                "must be a loopback address: metrics are never exposed",
            ));
        }
        for (key, url) in [
            ("whatsapp.graph_base", &self.whatsapp.graph_base),
            ("llm.openai_base_url", &self.llm.openai_base_url),
        ] {
            check_service_url(url).map_err(|why| self.invalid(key, why))?;
        }
        self.validate_attendance()?;
        if !self.magicline.base_url.is_empty() {
            check_service_url(&self.magicline.base_url)
                .map_err(|why| self.invalid("magicline.base_url", why))?;
        }
        if !(0.0..=2.0).contains(&self.llm.temperature) {
            return Err(self.invalid("llm.temperature", "must be between 0.0 and 2.0"));
        }
        if !(0.0..=1.0).contains(&self.llm.top_p) || self.llm.top_p == 0.0 {
            return Err(self.invalid("llm.top_p", "must be in (0.0, 1.0]"));
        }
        if self.llm.max_tokens == 0 || self.llm.max_tokens > 4096 {
            return Err(self.invalid("llm.max_tokens", "must be between 1 and 4096"));
        }
        if self.llm.context_size < 512 {
            return Err(self.invalid("llm.context_size", "must be at least 512"));
        }
        if self.conversation.max_replies_per_hour == 0 {
            return Err(self.invalid("conversation.max_replies_per_hour", "must be at least 1"));
        }
        if self.conversation.turn_attempts == 0 || self.conversation.turn_attempts > 20 {
            return Err(self.invalid("conversation.turn_attempts", "must be between 1 and 20"));
        }
        if self.conversation.history_messages == 0 || self.conversation.history_messages > 100 {
            return Err(self.invalid("conversation.history_messages", "must be between 1 and 100"));
        }
        if self.whatsapp.max_concurrent_conversations == 0 {
            return Err(self.invalid(
                "whatsapp.max_concurrent_conversations",
                "must be at least 1",
            ));
        }
        self.validate_costs()?;
        self.console
            .validate()
            .map_err(|(key, why)| self.invalid(key, why))?;
        let r = &self.retention;
        for (key, days) in [
            ("retention.history_days", r.history_days),
            ("retention.inactive_lead_days", r.inactive_lead_days),
            ("retention.seen_ids_days", r.seen_ids_days),
            ("retention.audit_days", r.audit_days),
        ] {
            if days == 0 {
                return Err(self.invalid(key, "must be at least 1 day"));
            }
        }
        if r.seen_ids_days < 8 {
            // WhatsApp retries a webhook for up to 7 days; forgetting ids sooner re-answers them.
            return Err(self.invalid(
                "retention.seen_ids_days",
                "must be at least 8 (WhatsApp retries deliveries for up to 7 days)",
            ));
        }
        self.alerts
            .validate()
            .map_err(|(key, why)| self.invalid(&format!("alerts.{key}"), why))?;
        self.reminders
            .validate()
            .map_err(|(key, why)| self.invalid(&format!("reminders.{key}"), why))?;
        if let Some(t) = &self.tunnel {
            if !t.relay.contains(':') {
                return Err(self.invalid("tunnel.relay", "must be host:port"));
            }
            if t.server_name.is_empty() {
                return Err(self.invalid("tunnel.server_name", "must not be empty"));
            }
        }
        Ok(())
    }

    /// `[magicline]`: one trial offer chosen, and the sweep of the booked trials.
    fn validate_attendance(&self) -> Result<(), ConfigError> {
        if self.magicline.trial_offer_appointment_id.is_some()
            && self.magicline.trial_offer_class_id.is_some()
        {
            return Err(self.invalid(
                "magicline.trial_offer_class_id",
                "names a trial class while magicline.trial_offer_appointment_id names a trial appointment; leads book one of them: remove the other",
            ));
        }
        if !(10..=86_400).contains(&self.magicline.poll_interval_secs) {
            return Err(self.invalid(
                "magicline.poll_interval_secs",
                "must be between 10 and 86400 seconds",
            ));
        }
        if self.magicline.no_show_after_minutes > 24 * 60 {
            return Err(self.invalid(
                "magicline.no_show_after_minutes",
                "must be at most 1440 (a day)",
            ));
        }
        Ok(())
    }

    /// `[whatsapp.pricing]` and `[whatsapp.template_categories]`.
    fn validate_costs(&self) -> Result<(), ConfigError> {
        let p = &self.whatsapp.pricing;
        for (key, eur) in [
            ("whatsapp.pricing.service", p.service),
            ("whatsapp.pricing.utility", p.utility),
            ("whatsapp.pricing.marketing", p.marketing),
            ("whatsapp.pricing.authentication", p.authentication),
        ] {
            // A rate is cents, never euros: 10 € a message is a typo (a missing decimal point).
            if !eur.is_finite() || !(0.0..10.0).contains(&eur) {
                return Err(
                    self.invalid(key, "must be EUR per message between 0 and 10, e.g. 0.1365")
                );
            }
        }
        if p.as_of.parse::<jiff::civil::Date>().is_err() {
            return Err(self.invalid("whatsapp.pricing.as_of", "must be a date, YYYY-MM-DD"));
        }
        if let Some(name) = self.whatsapp.template_categories.keys().find(|n| {
            n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }) {
            return Err(self.invalid(
                &format!("whatsapp.template_categories.{name}"),
                "template names are lowercase letters, digits and underscores",
            ));
        }
        Ok(())
    }

    /// The store directory inside the state directory.
    pub fn store_dir(&self) -> PathBuf {
        self.service.state_dir.join("store")
    }

    /// The forget ledger file, beside the store so it outlives it.
    pub fn ledger_file(&self) -> PathBuf {
        self.service
            .state_dir
            .join(crate::store::ledger::LEDGER_FILE)
    }
}

/// A URL the daemon sends tokens or personal data to: `https://`, or `http://` only to this
/// machine (a local model server, the simulators), where nothing crosses a network.
pub(crate) fn check_service_url(url: &str) -> Result<(), &'static str> {
    let uri: hyper::Uri = url.parse().map_err(|_| "must be an http(s) URL")?;
    let host = uri.host().ok_or("must be an http(s) URL with a host")?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = bare.eq_ignore_ascii_case("localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err("must use https:// (plain http:// is only accepted for 127.0.0.1, ::1 or localhost)")
            }
        }
        _ => Err("must be an http(s) URL"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_is_valid_and_complete() {
        let text = include_str!("../../packaging/frontdesk.toml");
        let cfg = Config::parse(text, Path::new("frontdesk.toml")).unwrap();
        assert_eq!(cfg.conversation.history_messages, 12);
        assert_eq!(cfg.retention, RetentionPolicy::default());
        // The example ships the same rates as the built-in defaults.
        assert_eq!(
            cfg.whatsapp.pricing.rates(),
            PricingConfig::default().rates()
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        let err = Config::parse(
            "[webhook]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n",
            Path::new("/etc/x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/etc/x.toml") && err.contains("bogus"),
            "{err}"
        );

        let err = Config::parse(
            "[metrics]\nlisten = \"0.0.0.0:9464\"\n",
            Path::new("/etc/x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("metrics.listen") && err.contains("loopback"),
            "{err}"
        );

        let err = Config::parse("[retention]\nseen_ids_days = 2\n", Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention.seen_ids_days"), "{err}");
    }

    #[test]
    fn alerts_link_the_console_where_staff_reach_it() {
        let url = |text: &str| {
            Config::parse(text, Path::new("f.toml"))
                .unwrap()
                .alerts
                .console_url
        };
        assert_eq!(url(""), "", "a console on loopback is no link for staff");
        assert_eq!(
            url("[console]\npublic_url = \"https://desk.studio.lan:8470/\"\n"),
            "https://desk.studio.lan:8470"
        );
        assert_eq!(
            url("[console]\nlisten = \"192.168.1.20:8470\"\n"),
            "https://192.168.1.20:8470"
        );
        assert_eq!(
            url("[alerts]\nconsole_url = \"https://x.example\"\n[console]\npublic_url = \"https://y.example\"\n"),
            "https://x.example",
            "an explicit alert link wins"
        );
    }

    #[test]
    fn pricing_and_template_categories() {
        let cfg = Config::parse(
            "[whatsapp.template_categories]\nangebot = \"marketing\"\n\
             [whatsapp.pricing]\nas_of = \"2026-10-01\"\nservice = 0.01\nmarketing = 0.2\n",
            Path::new("f.toml"),
        )
        .unwrap();
        assert_eq!(
            cfg.whatsapp.template_categories["angebot"],
            TemplateCategory::Marketing
        );
        let rates = cfg.whatsapp.pricing.rates();
        assert_eq!(rates.service_micro_eur, 10_000);
        assert_eq!(rates.marketing_micro_eur, 200_000);
        // Unset rates keep the shipped ones.
        assert_eq!(rates.utility_micro_eur, 45_600);
        assert_eq!(rates.as_of, Some("2026-10-01".parse().unwrap()));

        for (text, key) in [
            (
                "[whatsapp.pricing]\nmarketing = 13.65\n",
                "whatsapp.pricing.marketing",
            ),
            (
                "[whatsapp.pricing]\nservice = -0.01\n",
                "whatsapp.pricing.service",
            ),
            (
                "[whatsapp.pricing]\nas_of = \"July\"\n",
                "whatsapp.pricing.as_of",
            ),
            (
                "[whatsapp.template_categories]\nAngebot = \"marketing\"\n",
                "whatsapp.template_categories.Angebot",
            ),
        ] {
            let err = Config::parse(text, Path::new("f.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
        }
        let err = Config::parse(
            "[whatsapp.template_categories]\nangebot = \"service\"\n",
            Path::new("f.toml"),
        );
        assert!(err.is_err(), "service is no template category");
    }

    #[test]
    fn secrets_are_not_config_keys() {
        let err = Config::parse("[whatsapp]\ntoken = \"abc\"\n", Path::new("f.toml"));
        assert!(err.is_err());
    }

    #[test]
    fn service_urls_are_https_unless_local() {
        for ok in [
            "https://graph.facebook.com",
            "https://open-api.magicline.com/v1",
            "http://127.0.0.1:8081",
            "http://[::1]:9000",
            "http://localhost:11434/v1",
        ] {
            assert_eq!(check_service_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://graph.facebook.com",
            "http://192.168.1.20:8081",
            "http://localhost.example.com",
            "ftp://127.0.0.1",
            "graph.facebook.com",
        ] {
            assert!(check_service_url(bad).is_err(), "{bad}");
        }
        let mut cfg = Config::default();
        cfg.magicline.base_url = "http://studio.example/v1".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("magicline.base_url"), "{err}");
    }

    #[test]
    fn a_trial_class_and_a_trial_appointment_are_not_both_chosen() {
        let mut cfg = Config::default();
        cfg.magicline.trial_offer_class_id = Some(3001);
        assert!(cfg.validate().is_ok());
        cfg.magicline.trial_offer_appointment_id = Some(1001);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("magicline.trial_offer_class_id"), "{err}");
    }
}
