//! The outbound tunnel between a box and `frontdesk relay`: the box dials the relay over TLS,
//! proves itself with its token, and then serves HTTP/2 to the relay over that connection
//! (reverse HTTP/2), so WhatsApp's webhook reaches a box behind NAT without any inbound port.
//!
//! - [`proto`]: the hello exchange, tokens, PEM loading, shared timings.
//! - [`client`]: the box side ([`run_tunnel`], [`TunnelState`]).
//! - [`relay`]: the relay ([`start_relay`], [`RelayConfig`]).

pub mod client;
mod limits;
pub mod proto;
pub mod relay;

pub use client::{run_tunnel, BackoffPolicy, TunnelClientConfig, TunnelError, TunnelState};
pub use proto::{TokenError, TunnelTimings, TunnelToken};
pub use relay::{start_relay, BoxEntry, RelayConfig, RelayError, RelayHandle};

#[cfg(test)]
mod tests;
