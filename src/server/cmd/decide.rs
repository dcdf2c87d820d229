//! DECIDE and FEEDBACK: the channels' questions and what their customers did.

use crate::decide::{DecideError, RedeemError};
use crate::engine::Receipt;
use crate::model::decision::{DecisionRequest, FeedbackKind, FeedbackTarget};
use crate::protocol::{ErrorCode, Response};
use crate::server::cmd::ingest::code_of;
use crate::server::Shared;

/// The protocol's code for a decision error.
pub fn decide_code(e: &DecideError) -> ErrorCode {
    match e {
        DecideError::UnknownChannel { .. } => ErrorCode::UnknownChannel,
        DecideError::BadKey { .. } => ErrorCode::BadKey,
        DecideError::UnknownOffer { .. } => ErrorCode::UnknownOffer,
        DecideError::UnknownContext { .. } | DecideError::ContextType { .. } => {
            ErrorCode::BadContext
        }
        DecideError::ZeroTop => ErrorCode::BadQuery,
        DecideError::UnknownDecision { .. } | DecideError::OfferNotInDecision { .. } => {
            ErrorCode::UnknownDecision
        }
        DecideError::BudgetSpent { .. } => ErrorCode::BudgetSpent,
        DecideError::UnknownCustomer { .. } => ErrorCode::UnknownCustomer,
        DecideError::Event(e) => code_of(e),
        DecideError::Redeem(e) => match e {
            RedeemError::Mistyped(_) => ErrorCode::CouponMistyped,
            RedeemError::UnknownPrefix { .. } | RedeemError::Unknown { .. } => {
                ErrorCode::UnknownCoupon
            }
            RedeemError::Expired { .. } => ErrorCode::CouponExpired,
            RedeemError::AlreadyRedeemed { .. } => ErrorCode::CouponAlreadyRedeemed,
            RedeemError::WrongChannel { .. } => ErrorCode::CouponWrongChannel,
        },
        // A config whose coupon codes are used up needs a longer `length`.
        DecideError::CodesExhausted(_) => ErrorCode::InvalidConfig,
    }
}

pub fn decide(shared: &Shared, request: &DecisionRequest, receipt: &mut Receipt) -> Response {
    match shared.node().decide_with(request, receipt) {
        Ok(decision) => Response::Decision(Box::new(decision)),
        Err(e) => Response::error(decide_code(&e), e.to_string()),
    }
}

pub fn feedback(
    shared: &Shared,
    kind: FeedbackKind,
    target: &FeedbackTarget,
    receipt: &mut Receipt,
) -> Response {
    match shared.node().feedback_with(kind, target, receipt) {
        Ok(result) => Response::Feedback(result),
        Err(e) => Response::error(decide_code(&e), e.to_string()),
    }
}
