//! `frontdesk staff …`: console accounts, through the daemon's admin socket (audited there).
//! Passwords are read from the terminal without echo, or from standard input with
//! `--password-stdin` (one line), never from the command line where `ps` would show them.

use std::io::BufRead;

use clap::{Subcommand, ValueEnum};

use super::admin_cmd::{client, fail};
use super::{exit, Cli};
use crate::admin::staff::{
    AccountRow, AddRequest, PasswdRequest, RemoveRequest, STAFF_ADD, STAFF_LIST, STAFF_PASSWD,
    STAFF_REMOVE,
};
use crate::audit::StaffName;
use crate::console::accounts::{Role, MIN_PASSWORD_CHARS};

/// A console role on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    /// Reads and answers conversations, hands back, pauses.
    Staff,
    /// Also forgets and exports customers.
    Owner,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Staff => Role::Staff,
            RoleArg::Owner => Role::Owner,
        }
    }
}

/// What `frontdesk staff` does.
#[derive(Subcommand, Debug)]
pub enum StaffCommand {
    /// Create a console account (asks for its password).
    Add {
        /// Account name: lowercase letters, digits, '.', '_' or '-', starting with a letter.
        name: String,
        /// What the account may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Read the password from standard input (one line) instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a new password (and optionally a new role); the account's sessions end.
    Passwd {
        /// Account name.
        name: String,
        /// Also change the role.
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        /// Only change the role, keep the password.
        #[arg(long, requires = "role")]
        keep_password: bool,
        /// Read the password from standard input (one line) instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a console account; its sessions end.
    Remove {
        /// Account name.
        name: String,
    },
    /// List the console accounts.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn account_name(name: &str) -> anyhow::Result<StaffName> {
    StaffName::parse(name).ok_or_else(|| {
        anyhow::anyhow!(
            "account names are 1 to 32 lowercase letters, digits, '.', '_' or '-', starting with a letter"
        )
    })
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    let first = rpassword::prompt_password(format!(
        "Password (at least {MIN_PASSWORD_CHARS} characters): "
    ))?;
    let again = rpassword::prompt_password("Again: ")?;
    if first != again {
        anyhow::bail!("the passwords differ; nothing was changed");
    }
    Ok(first)
}

/// Runs `frontdesk staff …`.
pub fn run(cli: &Cli, cmd: &StaffCommand) -> anyhow::Result<u8> {
    let c = client(cli);
    let answer = match cmd {
        StaffCommand::Add {
            name,
            role,
            password_stdin,
        } => {
            let req = AddRequest {
                name: account_name(name)?,
                role: (*role).into(),
                password: read_password(*password_stdin)?,
            };
            c.post(STAFF_ADD, &req)
        }
        StaffCommand::Passwd {
            name,
            role,
            keep_password,
            password_stdin,
        } => {
            let password = if *keep_password {
                None
            } else {
                Some(read_password(*password_stdin)?)
            };
            let req = PasswdRequest {
                name: account_name(name)?,
                password,
                role: role.map(Role::from),
            };
            c.post(STAFF_PASSWD, &req)
        }
        StaffCommand::Remove { name } => c.post(
            STAFF_REMOVE,
            &RemoveRequest {
                name: account_name(name)?,
            },
        ),
        StaffCommand::List { json } => {
            let a = match c.post(STAFF_LIST, &serde_json::json!({})) {
                Ok(a) => a,
                Err(e) => return Ok(fail(e)),
            };
            if *json {
                println!("{}", String::from_utf8_lossy(&a.body));
                return Ok(exit::OK);
            }
            let rows: Vec<AccountRow> = match a.json() {
                Ok(r) => r,
                Err(e) => return Ok(fail(e)),
            };
            println!("{:<32} {:<6} PASSWORD SET", "NAME", "ROLE");
            for r in &rows {
                println!(
                    "{:<32} {:<6} {}",
                    r.name,
                    r.role.code(),
                    r.password_changed.strftime("%Y-%m-%d %H:%M UTC")
                );
            }
            return Ok(exit::OK);
        }
    };
    match answer {
        Ok(_) => {
            println!("done");
            Ok(exit::OK)
        }
        Err(e) => Ok(fail(e)),
    }
}
