//! The real daemon with the conversation engine replaced by [`FixedReply`] (load tests and
//! benchmarks of the channel). `frontdesk-fixed --config FILE --reply TEXT`; everything else —
//! webhook, store, dispatcher, sender, admin socket, sd_notify — is the shipped code.

use std::path::PathBuf;
use std::sync::Arc;

use frontdesk::config::Config;
use frontdesk::service::{serve_with, EngineFactory, ServeOptions};
use frontdesk_tests::fixed::FixedReply;

fn main() -> anyhow::Result<()> {
    let mut config = None;
    let mut reply = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => config = args.next().map(PathBuf::from),
            "--reply" => reply = args.next(),
            other => anyhow::bail!("unknown argument {other}; usage: --config FILE --reply TEXT"),
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
    let opts = ServeOptions {
        engine: Some(factory),
        ..ServeOptions::default()
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve_with(cfg, opts))
}
