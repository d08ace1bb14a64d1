//! `frontdesk console certificate`: makes the console's self-signed certificate, so it exists
//! from the install on (the package runs it with the box's host name and addresses) and staff
//! can compare its fingerprint, which `frontdesk doctor` prints, before the first sign-in.

use clap::Subcommand;

use super::{exit, load_config, Cli};
use crate::console::tls;

/// What `frontdesk console` does.
#[derive(Subcommand, Debug)]
pub enum ConsoleCommand {
    /// Generate the console's self-signed certificate (kept if it exists, unless --renew).
    /// It names localhost, this machine's host name, the configured address and public URL,
    /// and every --name.
    Certificate {
        /// A further host name or IP address staff use to open the console (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Replace an existing generated certificate (its fingerprint changes).
        #[arg(long)]
        renew: bool,
    },
}

/// Runs `frontdesk console …`.
pub fn run(cli: &Cli, cmd: &ConsoleCommand) -> anyhow::Result<u8> {
    let ConsoleCommand::Certificate { names, renew } = cmd;
    let cfg = load_config(cli)?;
    if cfg.console.tls_certificate.is_some() {
        println!(
            "The console uses the configured certificate {}; nothing generated.",
            cfg.console
                .tls_certificate
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display()
        );
        return Ok(exit::OK);
    }
    let (cert, key) = tls::files(&cfg);
    if cert.exists() && key.exists() && !renew {
        println!("kept {}", cert.display());
    } else {
        // Split "a b" too: the package passes the box's addresses as one list.
        let extra: Vec<String> = names
            .iter()
            .flat_map(|n| n.split_whitespace())
            .map(str::to_string)
            .collect();
        tls::generate(&tls::names(&cfg.console, &extra), &cert, &key)?;
        println!("generated {}", cert.display());
    }
    println!("SHA-256 fingerprint {}", tls::fingerprint(&cert)?);
    Ok(exit::OK)
}
