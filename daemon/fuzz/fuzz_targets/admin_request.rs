//! Fuzzes the admin API's routing and body parsing (`admin::AdminRequest::parse`), everything a
//! caller's bytes reach before an operation touches the store.
//!
//! Input layout: first byte = method (low two bits: GET, POST, PUT, DELETE) and path (the rest:
//! one of the API's paths, or, past their number, the input up to the first newline); the
//! remaining bytes are the body.
//!
//! Properties: nothing panics; a request is refused with 405 exactly when method and path name
//! no endpoint, and otherwise parses or gets a 400; a 400 never quotes the body (the only
//! serde text kept is "missing field" with one of our field names); whatever parsed, sent again
//! as the CLI would serialise it, parses to the same request; the address checks the operations
//! run on a parsed phone field do not panic.

#![no_main]

use frontdesk::admin::{api, staff};
use frontdesk::admin::AdminRequest;
use frontdesk::store::address::is_valid_address;
use frontdesk::store::crypto::normalise_phone;
use hyper::Method;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ROUTES: &[(Method, &str)] = &[
    (Method::GET, api::STATUS),
    (Method::POST, api::CUSTOMERS_LIST),
    (Method::POST, api::CUSTOMERS_SHOW),
    (Method::POST, api::CUSTOMERS_EXPORT),
    (Method::POST, api::CUSTOMERS_FORGET),
    (Method::POST, api::CUSTOMERS_PAUSE),
    (Method::POST, api::CUSTOMERS_RESUME),
    (Method::POST, api::AUDIT_SHOW),
    (Method::POST, api::AUDIT_VERIFY),
    (Method::POST, api::AUDIT_EXPORT),
    (Method::POST, api::RETENTION_RUN),
    (Method::POST, api::STATS),
    (Method::POST, api::SEND),
    (Method::POST, staff::STAFF_ADD),
    (Method::POST, staff::STAFF_PASSWD),
    (Method::POST, staff::STAFF_REMOVE),
    (Method::POST, staff::STAFF_LIST),
];

/// Fields a request type requires; serde's "missing field" names one of these.
const REQUIRED_FIELDS: &[&str] = &[
    "phone",
    "recipient",
    "reason",
    "format",
    "template",
    "seq",
    "hash",
    "name",
    "role",
    "password",
];

/// The body as the CLI would send it, and which phone field the operation would look up.
fn reserialise(req: &AdminRequest) -> (Option<Value>, Option<&str>) {
    let json = |v: &dyn erased::Ser| Some(v.to_value());
    match req {
        AdminRequest::Status => (None, None),
        AdminRequest::CustomersList(r) => (json(r), None),
        AdminRequest::CustomersShow(r)
        | AdminRequest::CustomersPause(r)
        | AdminRequest::CustomersResume(r) => (json(r), Some(&r.phone)),
        AdminRequest::CustomersExport(r) => (json(r), Some(&r.phone)),
        AdminRequest::CustomersForget(r) => (json(r), Some(&r.phone)),
        AdminRequest::AuditShow(r) => (json(r), r.customer_phone.as_deref()),
        AdminRequest::AuditVerify(r) => (json(r), None),
        AdminRequest::AuditExport(r) => (json(r), None),
        AdminRequest::Retention(r) => (json(r), None),
        AdminRequest::Stats(r) => (json(r), None),
        AdminRequest::Send(r) => (json(r), Some(&r.phone)),
        AdminRequest::StaffAdd(r) => (json(r), None),
        AdminRequest::StaffPasswd(r) => (json(r), None),
        AdminRequest::StaffRemove(r) => (json(r), None),
        AdminRequest::StaffList => (None, None),
    }
}

/// Object-safe serialisation to a JSON value, so `reserialise` can treat every type alike.
mod erased {
    pub trait Ser {
        fn to_value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_value(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("admin requests serialise")
        }
    }
}

fn check_bad_request_message(message: &str) {
    let rest = message
        .strip_prefix("bad request body: ")
        .expect("a 400 names the body");
    if let Some(field) = rest.strip_prefix("missing field `") {
        let field = field.split('`').next().unwrap_or_default();
        assert!(
            REQUIRED_FIELDS.contains(&field),
            "unexpected field {field:?}"
        );
        return;
    }
    let position = [
        "not valid JSON",
        "incomplete JSON",
        "a field has the wrong type or value",
    ]
    .iter()
    .find_map(|what| rest.strip_prefix(what))
    .expect("a known kind of body error");
    let numbers = position
        .strip_prefix(" at line ")
        .expect("the error's position");
    let (line, column) = numbers.split_once(", column ").expect("line and column");
    assert!(line.parse::<usize>().is_ok() && column.parse::<usize>().is_ok());
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let method =
        [Method::GET, Method::POST, Method::PUT, Method::DELETE][usize::from(selector & 3)].clone();
    let route = usize::from(selector >> 2);
    let (path, body): (String, &[u8]) = match ROUTES.get(route) {
        Some((_, path)) => ((*path).to_owned(), rest),
        None => {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let path = String::from_utf8_lossy(&rest[..end]).into_owned();
            (path, rest.get(end + 1..).unwrap_or_default())
        }
    };
    let known = ROUTES.iter().any(|(m, p)| *m == method && *p == path);
    let req = match AdminRequest::parse(&method, &path, body) {
        Ok(req) => {
            assert!(known, "{method} {path:?} parsed");
            req
        }
        Err(e) => {
            assert_eq!(e.status == 405, !known, "{method} {path:?}: {}", e.status);
            if known {
                assert_eq!(e.status, 400);
                check_bad_request_message(&e.message);
            }
            return;
        }
    };
    let (sent, phone) = reserialise(&req);
    if let Some(phone) = phone {
        let _ = is_valid_address(phone.trim());
        let _ = normalise_phone(phone);
    }
    if let Some(sent) = sent {
        let again = serde_json::to_vec(&sent).expect("a JSON value serialises");
        let reparsed =
            AdminRequest::parse(&method, &path, &again).expect("what parsed parses again");
        assert_eq!(reserialise(&reparsed).0.as_ref(), Some(&sent));
    }
});
