//! Simulators of the external services frontdesk talks to (WhatsApp's Graph API and webhook
//! delivery, MagicLine's Open API), speaking their real HTTP APIs on loopback with fault
//! injection. Used by the tests and by `frontdesk demo`; `frontdesk serve` never starts them.

pub mod magicline;
pub mod whatsapp;
