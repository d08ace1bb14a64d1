//! The admin CLI against a real admin server on a temporary socket: access control with real
//! Unix users (needs root; skipped otherwise), every verb's exit code, and the audit trail it
//! leaves.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use frontdesk::admin::{AdminServerThread, AdminState};
use frontdesk::audit::{AuditLog, AuditRecord};
use frontdesk::config::Config;
use frontdesk::store::crypto::StoreIdentity;
use frontdesk::store::Store;

const GROUP: &str = "fdtest-admins";
const MEMBER: &str = "fdtest-member";
const OUTSIDER: &str = "fdtest-outsider";

fn is_root() -> bool {
    frontdesk::sys::euid() == 0
}

fn sh(cmd: &str, args: &[&str]) {
    // Already existing users and groups are fine.
    let _ = Command::new(cmd).args(args).output();
}

fn uid_gid(user: &str) -> (u32, u32) {
    let out = Command::new("id")
        .arg("-u")
        .arg(user)
        .output()
        .expect("run id -u");
    let uid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("id -u prints a uid");
    let out = Command::new("id")
        .arg("-g")
        .arg(user)
        .output()
        .expect("run id -g");
    let gid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("id -g prints a gid");
    (uid, gid)
}

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    store: Arc<Store>,
    _server: AdminServerThread,
}

fn start(group: &str) -> Env {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temporary directory");
    // Other users must reach the socket and read the configuration.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the test directory");
    let socket = dir.path().join("admin.sock");
    let config = dir.path().join("frontdesk.toml");
    std::fs::write(
        &config,
        format!(
            "[service]\nstate_dir = \"{}\"\nadmin_socket = \"{}\"\nadmin_group = \"{group}\"\n",
            dir.path().join("state").display(),
            socket.display()
        ),
    )
    .expect("write the test config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))
        .expect("chmod the test config");
    let cfg = Config::load(&config).expect("the test config loads");
    let store = Arc::new(
        Store::open(&cfg.store_dir(), StoreIdentity::generate()).expect("open a fresh store"),
    );
    let audit = Arc::new(
        AuditLog::open(store.clone())
            .expect("open the audit log")
            .without_journal(),
    );
    let state = Arc::new(AdminState::new(store.clone(), audit, Arc::new(cfg)));
    let server = AdminServerThread::start(state, &socket, group);
    Env {
        dir,
        config,
        socket,
        store,
        _server: server,
    }
}

fn frontdesk(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new(frontdesk_tests::harness::frontdesk_bin());
    c.arg("--config").arg(&env.config).args(args);
    c.env_remove("FRONTDESK_CONFIG");
    c
}

fn run(mut c: Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().expect("run the frontdesk CLI");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn entries(store: &Store) -> Vec<AuditRecord> {
    store
        .keyspaces()
        .audit
        .iter()
        .map(|g| {
            serde_json::from_slice(&g.into_inner().expect("an audit row can be read").1)
                .expect("an audit row parses")
        })
        .collect()
}

fn add_customer(store: &Store, phone: &str, first: &str, email: &str, text: &str) {
    use frontdesk::store::messages::{Direction, Message};
    let now = jiff::Timestamp::now();
    store
        .update_customer(phone, now, |c, batch, s| {
            c.body.profile.vorname = Some(first.into());
            c.body.profile.email = Some(email.into());
            s.append_message(
                c,
                &Message {
                    direction: Direction::Inbound,
                    text: text.into(),
                    at: now,
                    wamid: None,
                },
                batch,
            )?;
            Ok(())
        })
        .expect("read the audit keyspace");
}

fn tree_contains(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("list a store directory") {
            let e = e.expect("read a directory entry");
            if e.file_type().expect("stat a directory entry").is_dir() {
                stack.push(e.path());
            } else if std::fs::read(e.path())
                .expect("read a store file")
                .windows(needle.len())
                .any(|w| w == needle)
            {
                return true;
            }
        }
    }
    false
}

#[test]
fn only_root_and_the_admin_group_get_in_and_refusals_are_audited() {
    if !is_root() {
        eprintln!("skipped: needs root to create users");
        return;
    }
    sh("groupadd", &["-f", GROUP]);
    sh(
        "useradd",
        &["-M", "-N", "-s", "/usr/sbin/nologin", "-G", GROUP, MEMBER],
    );
    sh(
        "useradd",
        &["-M", "-N", "-s", "/usr/sbin/nologin", OUTSIDER],
    );
    sh("usermod", &["-a", "-G", GROUP, MEMBER]);
    let env = start(GROUP);
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md = std::fs::metadata(&env.socket).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o660);
    let (out_uid, out_gid) = uid_gid(OUTSIDER);
    let (mem_uid, _) = uid_gid(MEMBER);
    assert_ne!(md.gid(), 0);

    // The socket's mode keeps an outsider out already ...
    let mut c = frontdesk(&env, &["status"]);
    c.uid(out_uid).gid(out_gid);
    let (code, _, err) = run(c);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("permission"), "{err}");

    // ... and with the socket opened up by mistake, the peer check refuses and records it.
    std::fs::set_permissions(&env.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut c = frontdesk(&env, &["customers", "list"]);
    c.uid(out_uid).gid(out_gid);
    let (code, _, err) = run(c);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("permission"), "{err}");
    let denied: Vec<_> = entries(&env.store)
        .into_iter()
        .filter(|e| e.action == "admin.denied")
        .collect();
    assert_eq!(denied.len(), 1);
    assert!(
        matches!(&denied[0].actor, frontdesk::audit::Actor::Admin { uid, name } if *uid == out_uid && name == OUTSIDER)
    );
    assert_eq!(denied[0].outcome, frontdesk::audit::Status::Denied);

    // A member of the admin group through a supplementary group (runuser sets them up).
    let (code, out, err) = run({
        let mut c = Command::new("runuser");
        c.args(["-u", MEMBER, "--"])
            .arg(frontdesk_tests::harness::frontdesk_bin())
            .arg("--config")
            .arg(&env.config)
            .args(["status", "--json"]);
        c
    });
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"version\""), "{out}");
    let last = entries(&env.store).pop().unwrap();
    assert_eq!(last.action, "admin.status");
    assert!(matches!(last.actor, frontdesk::audit::Actor::Admin { uid, .. } if uid == mem_uid));
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario through every CLI verb, read top to bottom"
)]
fn every_verb_end_to_end() {
    let env = start("no-such-group-frontdesk");
    let anna = (
        "+49 151 2345678",
        "Annalena",
        "annalena@example.org",
        "Ich will ein Probetraining",
    );
    let bernd = (
        "+49 170 9876543",
        "Berndolf",
        "berndolf@example.net",
        "Was kostet das Abo",
    );
    add_customer(&env.store, anna.0, anna.1, anna.2, anna.3);
    add_customer(&env.store, bernd.0, bernd.1, bernd.2, bernd.3);
    let ok = |args: &[&str]| -> String {
        let (code, out, err) = run(frontdesk(&env, args));
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };

    let status: serde_json::Value = serde_json::from_str(&ok(&["status", "--json"])).unwrap();
    assert_eq!(status["customers"], 2);
    assert!(ok(&["status"]).contains("audit head"));

    let list = ok(&["customers", "list"]);
    assert!(
        list.contains("2 customers") && !list.contains("Annalena"),
        "{list}"
    );
    let names = ok(&["customers", "list", "--show-names", "--json"]);
    assert!(names.contains("Annalena"), "{names}");
    assert!(ok(&["customers", "list", "--status", "paused"]).contains("0 customers"));
    assert!(ok(&["customers", "list", "--since", "2000-01-01"]).contains("2 customers"));

    let show = ok(&["customers", "show", anna.0]);
    assert!(show.contains(anna.2) && show.contains(anna.3), "{show}");
    assert!(ok(&["customers", "pause", anna.0]).contains("paused"));
    assert!(ok(&["customers", "list", "--status", "paused"]).contains("1 customers"));
    ok(&["customers", "resume", anna.0, "--json"]);

    // Export to a 0600 file that only Anna's recipient can read.
    let id = age::x25519::Identity::generate();
    let out = env.dir.path().join("anna.age");
    let recipient = id.to_public().to_string();
    ok(&[
        "customers",
        "export",
        anna.0,
        "--recipient",
        &recipient,
        "--out",
        out.to_str().unwrap(),
    ]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut plain = String::new();
    frontdesk::store::crypto::decrypt_stream(&id, std::fs::File::open(&out).unwrap())
        .unwrap()
        .read_to_string(&mut plain)
        .unwrap();
    assert!(plain.contains(anna.1) && plain.contains(anna.2) && plain.contains(anna.3));
    assert!(!plain.contains(bernd.1) && !plain.contains(bernd.2) && !plain.contains(bernd.3));
    // An existing file is never overwritten (and no export is recorded for it).
    let before = entries(&env.store).len();
    let (code, _, _) = run(frontdesk(
        &env,
        &[
            "customers",
            "export",
            anna.0,
            "--recipient",
            &recipient,
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(code, 1);
    assert_eq!(entries(&env.store).len(), before);

    // Forget leaves no trace in the store and is recorded with the caller.
    ok(&["customers", "forget", anna.0, "--reason", "dsgvo-request"]);
    env.store.persist().unwrap();
    for needle in [anna.1, anna.2, anna.3, "491512345678"] {
        assert!(
            !tree_contains(env.store.path(), needle.as_bytes()),
            "{needle}"
        );
    }
    let forget = entries(&env.store)
        .into_iter()
        .find(|e| e.action == "customer.forget")
        .unwrap();
    let me = frontdesk::sys::uid();
    assert!(matches!(forget.actor, frontdesk::audit::Actor::Admin { uid, .. } if uid == me));
    let (code, _, _) = run(frontdesk(&env, &["customers", "show", anna.0]));
    assert_eq!(code, 1);

    // Audit verbs.
    let shown = ok(&["audit", "show", "--action", "customer."]);
    assert!(
        shown.contains("customer.forget") && shown.contains("customer.export"),
        "{shown}"
    );
    let about: Vec<AuditRecord> =
        serde_json::from_str(&ok(&["audit", "show", "--customer", anna.0, "--json"])).unwrap();
    assert!(about.len() >= 4);
    assert!(ok(&["audit", "show", "--actor", "root", "--since", "2000-01-01"]).contains("entries"));
    let verify = ok(&["audit", "verify"]);
    assert!(verify.contains("intact"), "{verify}");
    let jsonl = ok(&["audit", "export", "--format", "jsonl"]);
    let last: AuditRecord = serde_json::from_str(jsonl.lines().last().unwrap()).unwrap();
    let csv = ok(&["audit", "export", "--format", "csv"]);
    assert!(csv.starts_with("seq,time,actor"));

    // Retention and stats.
    assert!(ok(&["retention", "run", "--dry-run"]).contains("dry run"));
    let run_json: serde_json::Value =
        serde_json::from_str(&ok(&["retention", "run", "--json"])).unwrap();
    assert_eq!(run_json["dry_run"], false);
    assert!(ok(&["stats", "--by", "month"]).contains("total"));
    ok(&["stats", "--since", "2020-01-01", "--json"]);

    // Tampering is reported with exit 5 and the entry's number; a truncated log is caught
    // against the head noted from the export.
    let head = format!("{}:{}", last.seq, last.hash);
    assert!(ok(&["audit", "verify", "--expect-head", &head]).contains("intact"));
    let key = 3u64.to_be_bytes();
    let original = env.store.keyspaces().audit.get(key).unwrap().unwrap();
    let mut changed = original.to_vec();
    let pos = changed.len() - 5;
    changed[pos] ^= 1;
    env.store.keyspaces().audit.insert(key, changed).unwrap();
    let (code, out, _) = run(frontdesk(&env, &["audit", "verify"]));
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("entry 3"), "{out}");
    env.store.keyspaces().audit.insert(key, original).unwrap();
}

#[test]
fn a_stopped_daemon_gives_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("f.toml");
    std::fs::write(
        &config,
        format!(
            "[service]\nadmin_socket = \"{}\"\nstate_dir = \"{}\"\n",
            dir.path().join("none.sock").display(),
            dir.path().display()
        ),
    )
    .unwrap();
    for args in [
        vec!["status"],
        vec!["customers", "list"],
        vec!["audit", "verify"],
    ] {
        let out = Command::new(frontdesk_tests::harness::frontdesk_bin())
            .arg("--config")
            .arg(&config)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    }
}
