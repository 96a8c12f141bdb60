//! Administration: participants, accounts and the number directory, funding, limits. Only the
//! admin identity may send these (`plan` checks), and each runs in a wave of its own.

use ledger::{AccountFlags, NewAccount, Op, Outcome, ParticipantId, TransferKind};

use super::{
    Body, Core, CreateAccount, CreateParticipant, Finish, Fund, Participant, Plan, ROLES_KNOWN,
    RequestId, Response, SetLimits, funding_account, is_system_account, transfer,
};
use crate::codes::{Code, Reason};
use crate::journal::NAME_LEN_MAX;
use crate::routing::is_valid_number;

/// A participant's fields as sent: only the roles version 1 knows (issuer, acquirer), and a
/// name.
pub(super) fn valid_participant(
    id: RequestId,
    p: CreateParticipant,
) -> Result<CreateParticipant, Response> {
    if p.roles & !ROLES_KNOWN != 0 {
        return Err(Response::new(
            id,
            Code::InvalidTransaction,
            Reason::RESERVED_BITS,
        ));
    }
    if p.name.is_empty() || p.name.len() > NAME_LEN_MAX {
        return Err(Response::new(id, Code::InvalidTransaction, Reason::NONE));
    }
    Ok(p)
}

/// An account's fields as sent: its number, if any, is a card or wallet number.
pub(super) fn valid_account(id: RequestId, a: CreateAccount) -> Result<CreateAccount, Response> {
    match &a.number {
        Some(number) if !is_valid_number(number) => Err(Response::new(
            id,
            Code::InvalidCardOrAccount,
            Reason::UNKNOWN_NUMBER,
        )),
        _ => Ok(a),
    }
}

impl Core {
    pub(super) fn has_role(&self, participant: ParticipantId, role: u8) -> bool {
        self.participants
            .get(&participant)
            .is_some_and(|p| p.roles & role != 0)
    }

    /// Whether `participant` is held, or there is room for one more (`participants_max`).
    pub(super) fn has_room_for_participant(&self, participant: ParticipantId) -> bool {
        self.participants.len() < self.config.participants_max
            || self.participants.contains_key(&participant)
    }

    /// A new participant, or the same one again (which changes nothing).
    pub(super) fn plan_create_participant(
        &mut self,
        id: RequestId,
        p: &CreateParticipant,
    ) -> Result<Plan, Response> {
        let refuse = |code, reason| Err(Response::new(id, code, reason));
        if !p.participant.is_valid() {
            return refuse(Code::InvalidTransaction, Reason::ACCOUNT_NOT_FOUND);
        }
        let new = Participant {
            name: p.name.clone(),
            roles: p.roles,
        };
        match self.participants.get(&p.participant) {
            Some(existing) if *existing == new => {}
            Some(_) => return refuse(Code::DuplicateWithOtherFields, Reason::ID_REUSED),
            None => {
                self.participants.insert(p.participant, new);
            }
        }
        Plan::answer(Response::approved(id, Body::None))
    }

    pub(super) fn plan_set_limits(
        &mut self,
        id: RequestId,
        l: &SetLimits,
    ) -> Result<Plan, Response> {
        if !self.participants.contains_key(&l.participant) {
            return Err(Response::new(
                id,
                Code::InvalidTransaction,
                Reason::ACCOUNT_NOT_FOUND,
            ));
        }
        self.limits
            .insert((l.participant, l.currency), l.net_debit_cap);
        Plan::answer(Response::approved(id, Body::None))
    }

    /// The account for the ledger to create; its number is bound once it exists.
    pub(super) fn plan_create_account(
        &mut self,
        id: RequestId,
        a: &CreateAccount,
    ) -> Result<Plan, Response> {
        let refuse = |code, reason| Err(Response::new(id, code, reason));
        if !self.participants.contains_key(&a.owner) {
            return refuse(Code::InvalidTransaction, Reason::ACCOUNT_NOT_FOUND);
        }
        if is_system_account(a.account) {
            return refuse(Code::InvalidCardOrAccount, Reason::NONE);
        }
        let number = match &a.number {
            None => None,
            Some(n) if !is_valid_number(n) => {
                return refuse(Code::InvalidCardOrAccount, Reason::UNKNOWN_NUMBER);
            }
            Some(n) => match self.directory.get(n) {
                Some(existing) if *existing != a.account => {
                    return refuse(Code::InvalidTransaction, Reason::ALREADY_EXISTS);
                }
                _ => Some((n.clone(), a.account)),
            },
        };
        let op = Op::CreateAccount(NewAccount {
            id: a.account,
            currency: a.currency,
            owner: a.owner,
            flags: a.flags,
        });
        Plan::apply(op, Finish::CreateAccount(number))
    }

    /// A transfer from the owner's funding account in the currency, made with it if need be.
    pub(super) fn plan_fund(&mut self, id: RequestId, f: &Fund) -> Result<Plan, Response> {
        let Some(target) = self.ledger.account(f.account) else {
            return Err(Response::new(id, Code::InvalidCardOrAccount, Reason::NONE));
        };
        let funding = funding_account(target.owner, f.currency);
        let mut events = Vec::with_capacity(2);
        if self.ledger.account(funding).is_none() {
            events.push(Op::CreateAccount(NewAccount {
                id: funding,
                currency: f.currency,
                owner: target.owner,
                flags: AccountFlags::empty(),
            }));
        }
        events.push(transfer(
            id,
            funding,
            f.account,
            f.amount,
            f.currency,
            TransferKind::Single,
        ));
        Ok(Plan::Apply {
            events,
            finish: Finish::Fund,
        })
    }

    pub(super) fn finish_create_account(
        &mut self,
        id: RequestId,
        number: Option<(String, ledger::AccountId)>,
        outcome: Outcome,
    ) -> Response {
        if let Some((number, account)) = number {
            // The account exists already with the same fields: a number it is not bound to
            // is another field, not a second binding.
            if outcome == Outcome::Exists && self.directory.get(&number) != Some(&account) {
                return Response::new(id, Code::DuplicateWithOtherFields, Reason::ID_REUSED);
            }
            self.directory.insert(number, account);
        }
        Response::approved(id, Body::None)
    }

    pub(super) fn finish_fund(&mut self, id: RequestId) -> Response {
        match self.ledger.transfer(ledger::TransferId(id.0)) {
            Some(r) => Response::moved(id, r.event.amount, r.event.currency),
            None => Response::approved(id, Body::None),
        }
    }
}
