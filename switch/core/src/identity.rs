//! Who a request acts as: the participant a client's certificate maps to, and whether it is the
//! operator's admin identity (PROTOCOL.md section 10). The server decides it once per connection
//! (`switch::tls`); the core decides from it what a request may do.

use ledger::ParticipantId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub participant: ParticipantId,
    pub admin: bool,
}
