//! REDEEM: a till (or a web checkout) redeems a coupon by its code, once.

use crate::engine::Receipt;
use crate::protocol::Response;
use crate::server::cmd::decide::decide_code;
use crate::server::Shared;

pub fn apply(
    shared: &Shared,
    code: &str,
    channel: &str,
    order_value: Option<f64>,
    receipt: &mut Receipt,
) -> Response {
    match shared
        .node()
        .redeem_with(code, channel, order_value, receipt)
    {
        Ok(redeemed) => Response::Redeemed(redeemed),
        Err(e) => Response::error(decide_code(&e), e.to_string()),
    }
}
