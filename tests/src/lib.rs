//! End-to-end tests and benchmarks of frontdesk: the harness that runs the real daemon
//! ([`harness`]); the tests live in `tests/`, the benchmark binaries in `src/bin/`.

pub mod fixed;
pub mod harness;
