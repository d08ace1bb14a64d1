//! The real daemon with the conversation engine replaced by [`FixedReply`] (load tests and
//! benchmarks of the channel). `frontdesk-fixed --config FILE --reply TEXT [--clock-file FILE]`;
//! everything else — webhook, store, dispatcher, sender, scheduler, admin socket, sd_notify — is
//! the shipped code. With `--clock-file`, the reminder scheduler reads its time (unix seconds)
//! from that file at each tick, and ticks every 100 ms, so tests move time by days.

use std::path::PathBuf;
use std::sync::Arc;

use frontdesk::config::Config;
use frontdesk::service::{serve_with, EngineFactory, ServeOptions};
use frontdesk_tests::fixed::FixedReply;

fn main() -> anyhow::Result<()> {
    let mut config = None;
    let mut reply = None;
    let mut clock_file: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => config = args.next().map(PathBuf::from),
            "--reply" => reply = args.next(),
            "--clock-file" => clock_file = args.next().map(PathBuf::from),
            other => anyhow::bail!(
                "unknown argument {other}; usage: --config FILE --reply TEXT [--clock-file FILE]"
            ),
        }
    }
    let cfg = Config::load(&config.ok_or_else(|| anyhow::anyhow!("--config missing"))?)?;
    let text = reply.ok_or_else(|| anyhow::anyhow!("--reply missing"))?;
    let non_text_reply = cfg.studio.non_text_reply.clone();
    let factory: EngineFactory = Arc::new(move |store| {
        Arc::new(FixedReply {
            store,
            text: text.clone(),
            non_text_reply: non_text_reply.clone(),
        })
    });
    frontdesk::logging::init(&cfg.service.log_level, false);
    let mut opts = ServeOptions {
        engine: Some(factory),
        ..ServeOptions::default()
    };
    if let Some(file) = clock_file {
        opts.clock = Some(Arc::new(move || {
            std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
                .unwrap_or_else(jiff::Timestamp::now)
        }));
        opts.reminder_tick = Some(std::time::Duration::from_millis(100));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve_with(cfg, opts))
}
