//! `frontdesk staff …`: console accounts managed through the admin socket. Each change is
//! audited with the admin as the actor and the account name and role as details; passwords
//! travel only in the request body and are hashed at once ([`crate::console::accounts`]).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::ops::{Ctx, OpError, Reply};
use crate::audit::{AuditEvent, Code, NewEntry, StaffName};
use crate::console::accounts::{self, AccountError, Role};

/// `staff add`.
pub const STAFF_ADD: &str = "/v1/staff/add";
/// `staff passwd`: a new password and/or role.
pub const STAFF_PASSWD: &str = "/v1/staff/passwd";
/// `staff remove`.
pub const STAFF_REMOVE: &str = "/v1/staff/remove";
/// `staff list`.
pub const STAFF_LIST: &str = "/v1/staff/list";

/// `POST /v1/staff/add`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    /// Account name.
    pub name: StaffName,
    /// `owner` or `staff`.
    pub role: Role,
    /// The password (hashed by the daemon, never stored or logged as such).
    pub password: String,
}

/// `POST /v1/staff/passwd`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PasswdRequest {
    /// Account name.
    pub name: StaffName,
    /// The new password, if it changes.
    #[serde(default)]
    pub password: Option<String>,
    /// The new role, if it changes.
    #[serde(default)]
    pub role: Option<Role>,
}

/// `POST /v1/staff/remove`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    /// Account name.
    pub name: StaffName,
}

/// One account in `staff list` (never the hash).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AccountRow {
    /// Account name.
    pub name: String,
    /// `owner` or `staff`.
    pub role: Role,
    /// When it was created.
    pub created: Timestamp,
    /// When its password was last set.
    pub password_changed: Timestamp,
}

impl From<AccountError> for OpError {
    fn from(e: AccountError) -> Self {
        let status = match e {
            AccountError::Exists | AccountError::LastOwner => 409,
            AccountError::NotFound => 404,
            AccountError::WeakPassword => 400,
            AccountError::Store(_) => 500,
        };
        OpError::new(status, e.to_string())
    }
}

fn audit_change(
    ctx: &Ctx,
    change: &'static str,
    name: &StaffName,
    role: Role,
) -> Result<(), OpError> {
    let event = AuditEvent::StaffAccount {
        change: Code::new(change),
        account: name.clone(),
        role: Code::new(role.code()),
    };
    ctx.state
        .audit
        .append(NewEntry::new(ctx.caller.actor(), event).request(ctx.request_id))?;
    Ok(())
}

fn json(v: impl Serialize) -> Result<Reply, OpError> {
    Ok(Reply::Json(
        serde_json::to_value(v).expect("replies serialise"),
    ))
}

/// `staff add`: creates an account.
pub fn add(ctx: &Ctx, req: AddRequest) -> Result<Reply, OpError> {
    accounts::add(&ctx.state.store, &req.name, req.role, &req.password)?;
    audit_change(ctx, "added", &req.name, req.role)?;
    json(serde_json::json!({ "name": req.name, "role": req.role }))
}

/// `staff passwd`: sets a new password and/or role; the account's open sessions end.
pub fn passwd(ctx: &Ctx, req: PasswdRequest) -> Result<Reply, OpError> {
    if req.password.is_none() && req.role.is_none() {
        return Err(OpError::new(
            400,
            "give a new password, a new role, or both",
        ));
    }
    let account = accounts::update(
        &ctx.state.store,
        &req.name,
        req.password.as_deref(),
        req.role,
    )?;
    let change = if req.password.is_some() {
        "password_changed"
    } else {
        "role_changed"
    };
    audit_change(ctx, change, &req.name, account.role)?;
    json(serde_json::json!({ "name": req.name, "role": account.role }))
}

/// `staff remove`: deletes an account; its sessions end at their next request.
pub fn remove(ctx: &Ctx, req: RemoveRequest) -> Result<Reply, OpError> {
    let role = accounts::remove(&ctx.state.store, &req.name)?;
    audit_change(ctx, "removed", &req.name, role)?;
    json(serde_json::json!({ "name": req.name, "removed": true }))
}

/// `staff list`: every account with role and dates.
pub fn list(ctx: &Ctx) -> Result<Reply, OpError> {
    let rows: Vec<AccountRow> = accounts::list(&ctx.state.store)
        .map_err(OpError::from)?
        .into_iter()
        .map(|a| AccountRow {
            name: a.name.to_string(),
            role: a.role,
            created: a.created,
            password_changed: a.password_changed,
        })
        .collect();
    json(rows)
}
