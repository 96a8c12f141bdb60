//! Membership changes the operator asks for (ChangeMembership, the admin's): the leader's
//! stage checks each against the membership and the configuration, proposes it (one change at
//! a time, through joint consensus), and answers once it is committed.

use std::net::SocketAddr;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use ledger::bell::Bell;

use crate::replica::{Node, Refused};
use crate::server::replication::ReplicaState;

/// Changes waiting for the stage at most; past it the asker hears "busy".
const WAITING_MAX: usize = 16;

/// One change: `remove` and `add`, either of them `None`.
pub struct Change {
    pub remove: Option<u64>,
    pub add: Option<u64>,
    /// The change's log index once committed.
    pub answer: tokio::sync::oneshot::Sender<Result<u64, ChangeRefusal>>,
}

/// Why a change was not made (or not known to be).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeRefusal {
    /// This replica does not lead (the leader's client address, if known). A change it had
    /// proposed before it lost the lead may still be made: the leader's membership says.
    NotLeader(Option<SocketAddr>),
    /// The change cannot be made as asked; the message says why and what to do.
    Invalid(String),
    /// Another change is being made.
    Changing,
    /// The stage is busy (many changes asked at once, or a new leader not yet serving).
    Busy,
    /// The replica failed.
    Failed(String),
}

/// The connections' side: hands changes to the stage.
#[derive(Clone)]
pub struct Desk {
    tx: Sender<Change>,
    bell: Arc<Bell>,
}

impl Desk {
    /// Hands a change to the stage, or refuses it at once when too many wait.
    pub fn ask(
        &self,
        remove: Option<u64>,
        add: Option<u64>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<u64, ChangeRefusal>>, ChangeRefusal> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.tx
            .try_send(Change {
                remove,
                add,
                answer,
            })
            .map_err(|_| ChangeRefusal::Busy)?;
        self.bell.ring();
        Ok(answered)
    }
}

/// The stage's side: changes asked, and the one proposed and not yet committed.
pub struct Changes {
    rx: Receiver<Change>,
    tx: Sender<Change>,
    /// The change proposed, with its index and the term it was proposed in.
    proposed: Option<(u64, u64, Change)>,
}

impl Default for Changes {
    fn default() -> Changes {
        let (tx, rx) = crossbeam_channel::bounded(WAITING_MAX);
        Changes {
            rx,
            tx,
            proposed: None,
        }
    }
}

impl Changes {
    pub fn desk(&self, bell: Arc<Bell>) -> Desk {
        Desk {
            tx: self.tx.clone(),
            bell,
        }
    }

    /// Checks and proposes what was asked, against the members the configuration lists now.
    pub fn take(&mut self, node: &mut Node, replica: &ReplicaState) {
        while let Ok(change) = self.rx.try_recv() {
            let leader = replica.leader_address();
            let known: Vec<u64> = replica.members().iter().map(|m| m.0).collect();
            let checked = if self.proposed.is_some() {
                Err(ChangeRefusal::Changing)
            } else {
                let (voters, outgoing) = node.voters();
                let leads = node.role().is_leader;
                if leads {
                    check(
                        node.id(),
                        &voters,
                        &outgoing,
                        &known,
                        change.remove,
                        change.add,
                    )
                } else {
                    Err(ChangeRefusal::NotLeader(leader))
                }
            };
            if checked == Ok(Checked::Made) {
                let _ = change.answer.send(Ok(node.committed()));
                continue;
            }
            let proposed = checked.and_then(|_| {
                node.propose_membership(change.remove, change.add)
                    .map_err(|e| match e {
                        Refused::NotLeader { .. } => ChangeRefusal::NotLeader(leader),
                        Refused::NotReady => ChangeRefusal::Busy,
                        Refused::Failed(e) => ChangeRefusal::Failed(e),
                    })
            });
            match proposed {
                Ok(index) => {
                    let term = node.role().term;
                    tracing::info!(
                        remove = ?change.remove,
                        add = ?change.add,
                        index,
                        "membership change proposed"
                    );
                    self.proposed = Some((index, term, change));
                }
                Err(refusal) => {
                    let _ = change.answer.send(Err(refusal));
                }
            }
        }
    }

    /// Answers the change proposed once its entry is committed, while this replica still leads
    /// in the term it proposed it in (so the entry at its index is still the change); if it no
    /// longer does, the new leader makes the change or drops it.
    pub fn committed(&mut self, node: &Node, replica: &ReplicaState) {
        let Some((index, term, _)) = self.proposed.as_ref() else {
            return;
        };
        let role = node.role();
        if !role.is_leader || role.term != *term {
            self.deposed(replica.leader_address());
            return;
        }
        if *index <= node.committed() {
            let Some((index, _, change)) = self.proposed.take() else {
                return;
            };
            tracing::info!(
                remove = ?change.remove,
                add = ?change.add,
                index,
                "membership change committed"
            );
            let _ = change.answer.send(Ok(index));
        }
    }

    /// This replica lost the lead: the change proposed is the new leader's to make or drop.
    pub fn deposed(&mut self, leader: Option<SocketAddr>) {
        if let Some((_, _, change)) = self.proposed.take() {
            let _ = change.answer.send(Err(ChangeRefusal::NotLeader(leader)));
        }
    }
}

/// What a change asks of the membership as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// The change is to be proposed.
    Propose,
    /// The membership is as asked already (a change asked again): approved as it is.
    Made,
}

/// Whether the leader `leader` may change the membership (`voters`, and `outgoing` while a
/// change is being made) by removing `remove` and adding `add`; `known` are the members the
/// configuration lists (only those can be reached).
pub fn check(
    leader: u64,
    voters: &[u64],
    outgoing: &[u64],
    known: &[u64],
    remove: Option<u64>,
    add: Option<u64>,
) -> Result<Checked, ChangeRefusal> {
    let invalid = |m: String| Err(ChangeRefusal::Invalid(m));
    if !outgoing.is_empty() {
        return Err(ChangeRefusal::Changing);
    }
    if remove.is_none() && add.is_none() {
        return invalid("the change names no member to remove or add".into());
    }
    if remove.is_some() && remove == add {
        return invalid("the change removes and adds the same member".into());
    }
    if remove.is_none_or(|r| !voters.contains(&r)) && add.is_none_or(|a| voters.contains(&a)) {
        return Ok(Checked::Made);
    }
    if let Some(r) = remove {
        if !voters.contains(&r) {
            return invalid(format!("member {r} is not a voter (voters: {voters:?})"));
        }
        if r == leader {
            return invalid(format!(
                "member {r} leads: stop it, and ask the leader the others elect to remove it"
            ));
        }
    }
    if let Some(a) = add {
        if voters.contains(&a) {
            return invalid(format!("member {a} is a voter already"));
        }
        if !known.contains(&a) {
            return invalid(format!(
                "member {a} is not in the leader's [[cluster.members]]: add it to every \
                 member's configuration, reload them (SIGHUP), and ask again"
            ));
        }
        let after = voters.len() + 1 - usize::from(remove.is_some());
        if after > crate::cluster::config::MEMBERS_MAX {
            return invalid(format!(
                "the cluster would have {after} voters; {} at most",
                crate::cluster::config::MEMBERS_MAX
            ));
        }
    }
    Ok(Checked::Propose)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_invalid(r: Result<Checked, ChangeRefusal>) -> bool {
        matches!(r, Err(ChangeRefusal::Invalid(_)))
    }

    #[test]
    fn a_change_is_checked_against_the_membership_and_the_configuration() {
        let voters = [1, 2, 3];
        let known = [1, 2, 3, 4];
        let propose = Ok(Checked::Propose);
        assert_eq!(check(1, &voters, &[], &known, Some(3), Some(4)), propose);
        assert_eq!(check(1, &voters, &[], &known, None, Some(4)), propose);
        assert_eq!(check(1, &voters, &[], &known, Some(3), None), propose);
        // Asked again once made.
        let made = Ok(Checked::Made);
        assert_eq!(check(1, &[1, 2, 4], &[], &known, Some(3), Some(4)), made);
        assert_eq!(check(1, &[1, 2], &[], &known, Some(3), None), made);
        assert_eq!(check(1, &voters, &[], &known, None, Some(2)), made);
        assert!(is_invalid(check(1, &voters, &[], &known, None, None)));
        assert!(is_invalid(check(1, &voters, &[], &known, Some(3), Some(3))));
        // Half of it made, or another change made meanwhile.
        assert!(is_invalid(check(1, &[1, 2], &[], &known, Some(3), Some(4))));
        assert!(is_invalid(check(1, &[1, 2], &[], &known, Some(3), Some(5))));
        assert!(is_invalid(check(1, &voters, &[], &known, Some(1), Some(4))));
        assert!(is_invalid(check(1, &voters, &[], &known, None, Some(5))));
        assert_eq!(
            check(1, &[1, 2, 4], &voters, &known, Some(2), Some(3)),
            Err(ChangeRefusal::Changing)
        );
        let seven = [1, 2, 3, 4, 5, 6, 7];
        let known: Vec<u64> = (1..=8).collect();
        assert!(is_invalid(check(1, &seven, &[], &known, None, Some(8))));
        assert_eq!(check(1, &seven, &[], &known, Some(7), Some(8)), propose);
    }
}
