//! Routing and body parsing of one admin request: method, path and body bytes in, the typed
//! request (or a 400/405) out. Nothing here reads or writes the store, so the whole of what a
//! caller's bytes can do before an operation runs is this one pure function, which the fuzz
//! target `admin_request` exercises.

use hyper::Method;

use super::api::{
    self, AuditExportRequest, AuditShowRequest, ExportRequest, ForgetRequest, ListRequest,
    PhoneRequest, RetentionRequest, SendRequest, StatsRequest, VerifyRequest,
};
use super::ops::OpError;
use super::staff::{self, AddRequest, PasswdRequest, RemoveRequest};

/// An admin request whose endpoint is known and whose body parsed.
pub enum AdminRequest {
    /// `GET /v1/status` (a body is ignored).
    Status,
    /// `POST /v1/customers/list`.
    CustomersList(ListRequest),
    /// `POST /v1/customers/show`.
    CustomersShow(PhoneRequest),
    /// `POST /v1/customers/export`.
    CustomersExport(ExportRequest),
    /// `POST /v1/customers/forget`.
    CustomersForget(ForgetRequest),
    /// `POST /v1/customers/pause`.
    CustomersPause(PhoneRequest),
    /// `POST /v1/customers/resume`.
    CustomersResume(PhoneRequest),
    /// `POST /v1/audit/show`.
    AuditShow(AuditShowRequest),
    /// `POST /v1/audit/verify`.
    AuditVerify(VerifyRequest),
    /// `POST /v1/audit/export`.
    AuditExport(AuditExportRequest),
    /// `POST /v1/retention/run`.
    Retention(RetentionRequest),
    /// `POST /v1/stats`.
    Stats(StatsRequest),
    /// `POST /v1/send`.
    Send(SendRequest),
    /// `POST /v1/staff/add`.
    StaffAdd(AddRequest),
    /// `POST /v1/staff/passwd`.
    StaffPasswd(PasswdRequest),
    /// `POST /v1/staff/remove`.
    StaffRemove(RemoveRequest),
    /// `POST /v1/staff/list`.
    StaffList,
}

impl AdminRequest {
    /// Routes `method` and `path` and parses `body` for that endpoint.
    ///
    /// Errors: 405 for a method and path that name no endpoint, 400 for a body that does not
    /// parse. Endpoints whose every field has a default take an empty (or all-whitespace) body.
    /// An error message never quotes the body: it may hold a phone number.
    pub fn parse(method: &Method, path: &str, body: &[u8]) -> Result<AdminRequest, OpError> {
        use AdminRequest as R;
        Ok(match (method, path) {
            (&Method::GET, api::STATUS) => R::Status,
            (&Method::POST, api::CUSTOMERS_LIST) => R::CustomersList(optional(body)?),
            (&Method::POST, api::CUSTOMERS_SHOW) => R::CustomersShow(required(body)?),
            (&Method::POST, api::CUSTOMERS_EXPORT) => R::CustomersExport(required(body)?),
            (&Method::POST, api::CUSTOMERS_FORGET) => R::CustomersForget(required(body)?),
            (&Method::POST, api::CUSTOMERS_PAUSE) => R::CustomersPause(required(body)?),
            (&Method::POST, api::CUSTOMERS_RESUME) => R::CustomersResume(required(body)?),
            (&Method::POST, api::AUDIT_SHOW) => R::AuditShow(optional(body)?),
            (&Method::POST, api::AUDIT_VERIFY) => R::AuditVerify(optional(body)?),
            (&Method::POST, api::AUDIT_EXPORT) => R::AuditExport(required(body)?),
            (&Method::POST, api::RETENTION_RUN) => R::Retention(optional(body)?),
            (&Method::POST, api::STATS) => R::Stats(optional(body)?),
            (&Method::POST, api::SEND) => R::Send(required(body)?),
            (&Method::POST, staff::STAFF_ADD) => R::StaffAdd(required(body)?),
            (&Method::POST, staff::STAFF_PASSWD) => R::StaffPasswd(required(body)?),
            (&Method::POST, staff::STAFF_REMOVE) => R::StaffRemove(required(body)?),
            (&Method::POST, staff::STAFF_LIST) => R::StaffList,
            _ => return Err(OpError::new(405, format!("no endpoint {method} {path}"))),
        })
    }
}

fn optional<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, OpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    required(body)
}

fn required<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, OpError> {
    serde_json::from_slice(body).map_err(|e| OpError::new(400, body_error(&e)))
}

/// What is wrong with a body, by position. serde_json's own text is kept only for a missing
/// field (it names one of our fields); its other messages can quote what the caller sent
/// ("invalid type: integer `4915112345678`"), which may be a phone number.
fn body_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let (line, column) = (e.line(), e.column());
    let text = e.to_string();
    if e.classify() == Category::Data && text.starts_with("missing field `") {
        return format!("bad request body: {text}");
    }
    let what = match e.classify() {
        Category::Io | Category::Syntax => "not valid JSON",
        Category::Eof => "incomplete JSON",
        Category::Data => "a field has the wrong type or value",
    };
    format!("bad request body: {what} at line {line}, column {column}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(method: Method, path: &str, body: &str) -> OpError {
        match AdminRequest::parse(&method, path, body.as_bytes()) {
            Ok(_) => panic!("{method} {path} {body:?} parsed"),
            Err(e) => e,
        }
    }

    #[test]
    fn routes_and_parses() {
        assert!(matches!(
            AdminRequest::parse(&Method::GET, api::STATUS, b"ignored"),
            Ok(AdminRequest::Status)
        ));
        assert!(matches!(
            AdminRequest::parse(&Method::POST, api::STATS, b" \n"),
            Ok(AdminRequest::Stats(_))
        ));
        let Ok(AdminRequest::CustomersPause(p)) = AdminRequest::parse(
            &Method::POST,
            api::CUSTOMERS_PAUSE,
            br#"{"phone":"+49 151"}"#,
        ) else {
            panic!("pause did not parse");
        };
        assert_eq!(p.phone, "+49 151");
        assert_eq!(parse_err(Method::POST, api::STATUS, "").status, 405);
        assert_eq!(parse_err(Method::GET, api::SEND, "").status, 405);
        assert_eq!(parse_err(Method::POST, "/v1/nope", "").status, 405);
        assert_eq!(parse_err(Method::POST, api::SEND, "").status, 400);
    }

    #[test]
    fn a_bad_body_is_named_by_position_without_its_values() {
        let e = parse_err(
            Method::POST,
            api::CUSTOMERS_SHOW,
            r#"{"phone": 4915112345678}"#,
        );
        assert_eq!(e.status, 400);
        assert!(!e.message.contains("4915112345678"), "{}", e.message);
        assert!(e.message.contains("line 1, column"), "{}", e.message);
        let e = parse_err(
            Method::POST,
            api::CUSTOMERS_FORGET,
            r#"{"phone": "+4915112345678", "reason": "+4915112345678"}"#,
        );
        assert!(!e.message.contains("4915112345678"), "{}", e.message);
        // A missing field is named: that text is ours, not the caller's.
        let e = parse_err(Method::POST, api::CUSTOMERS_SHOW, "{}");
        assert!(e.message.contains("missing field `phone`"), "{}", e.message);
        let e = parse_err(Method::POST, api::CUSTOMERS_SHOW, "{\"phone\": \"0151");
        assert!(e.message.contains("incomplete JSON"), "{}", e.message);
    }
}
