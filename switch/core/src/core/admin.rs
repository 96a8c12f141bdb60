//! Administration: participants, accounts and the number directory, funding, limits.

use ledger::ParticipantId;

use super::Core;

impl Core {
    pub(super) fn has_role(&self, participant: ParticipantId, role: u8) -> bool {
        self.participants
            .get(&participant)
            .is_some_and(|p| p.roles & role != 0)
    }
}
