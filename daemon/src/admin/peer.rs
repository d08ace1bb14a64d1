//! Who is calling: the peer credentials of an admin-socket connection (SO_PEERCRED), the caller's
//! user name and groups, and the access rule (root, or a member of the admin group).

use crate::audit::{user_name, Actor};

/// The process at the other end of an admin connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// User id of the peer process.
    pub uid: u32,
    /// Primary group id of the peer process.
    pub gid: u32,
    /// Process id, when the kernel reports one.
    pub pid: Option<i32>,
    /// User name, or `uid<N>` when the user has none.
    pub name: String,
    /// Primary and supplementary groups.
    pub groups: Vec<u32>,
}

impl Caller {
    /// Resolves name and groups of the peer `uid`/`gid`/`pid` (blocking: reads /proc and NSS).
    pub fn resolve(uid: u32, gid: u32, pid: Option<i32>) -> Caller {
        let name = user_name(uid).unwrap_or_else(|| format!("uid{uid}"));
        let mut groups = vec![gid];
        // The peer's own view of its groups wins (it may have dropped or gained some since
        // login); when /proc hides other users' processes (ProtectProc=invisible), the group
        // database is asked instead.
        match pid.and_then(proc_groups) {
            Some(g) => groups.extend(g),
            None => groups.extend(group_list(&name, gid)),
        }
        groups.sort_unstable();
        groups.dedup();
        Caller {
            uid,
            gid,
            pid,
            name,
            groups,
        }
    }

    /// Root, or a member of `admin_gid`.
    pub fn is_authorised(&self, admin_gid: Option<u32>) -> bool {
        self.uid == 0 || admin_gid.is_some_and(|g| self.groups.contains(&g))
    }

    /// The caller as the actor of audit entries.
    pub fn actor(&self) -> Actor {
        Actor::Admin {
            uid: self.uid,
            name: self.name.clone(),
        }
    }
}

/// The `Groups:` line of /proc/<pid>/status.
fn proc_groups(pid: i32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(
        line.split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}

/// The groups of user `name` from the group database (getgrouplist).
fn group_list(name: &str, gid: u32) -> Vec<u32> {
    crate::sys::group_list(name, gid)
}

/// The gid of group `name`, if it exists.
pub fn group_gid(name: &str) -> Option<u32> {
    crate::sys::group_gid(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_always_allowed_others_need_the_group() {
        let root = Caller::resolve(0, 0, None);
        assert_eq!(root.name, "root");
        assert!(root.is_authorised(None));
        let other = Caller {
            uid: 1234,
            gid: 1234,
            pid: None,
            name: "x".into(),
            groups: vec![1234, 50],
        };
        assert!(!other.is_authorised(None));
        assert!(!other.is_authorised(Some(51)));
        assert!(other.is_authorised(Some(50)));
    }

    #[test]
    fn own_process_groups_are_read_from_proc() {
        let me = Caller::resolve(
            crate::sys::uid(),
            crate::sys::gid(),
            Some(std::process::id() as i32),
        );
        assert!(me.groups.contains(&crate::sys::gid()));
        assert_eq!(group_gid("root"), Some(0));
        assert_eq!(group_gid("no-such-group-frontdesk"), None);
    }
}
