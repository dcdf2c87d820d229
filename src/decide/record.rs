//! The log records of offer actions: [`ActionRecord`] (journal kind `ACTION`, 3): a decision that
//! recorded impressions, or one feedback, with everything its replay needs to reproduce
//! both halves, the offer state and the profile events (see `engine::action`); and
//! [`OfferAction`] (kind `OFFER_ACTION`, 2), the offer state half alone, as data
//! directory format 2 wrote it, still replayed.
//!
//! Offers, channel and event type are named, not indexed, so the record replays under a
//! config that reorders them. The profile events are not stored: one per offer, they
//! follow from the record (the event type, on the channel, at `timestamp_ms`, keyed by
//! `key`, with the `offer` and `decision` properties the event type declares), so a
//! decision of three offers costs one record, not three events.
//!
//! Body, little-endian (docs/storage.md, section 4.5):
//!
//! ```text
//! u8   kind          FEEDBACK kind code: 1 impression, 2 click, 3 accept, 4 dismiss
//! u32  time          seconds: when the action happened (offer state reads it)
//! i64  timestamp_ms  the profile events' timestamp
//! u64  decision_id   the decision (a fresh id for feedback by customer)
//! str  key           the customer's key, "namespace:value"
//! str  channel
//! str  event         the profile event type; empty when the kind maps to none
//! u8   offers        0 to 255 (0 only with exposures)
//! str × offers       offer names
//! then, only in a decision that exposed the customer, or before codes (format 7 on):
//! u8   exposures     0 to 255 (0 only when codes follow)
//! str × exposures    experiment names
//! then, only in an action that issued or redeemed coupon codes (format 8 on):
//! u8   codes         1 to 255
//! codes × (u8 offer, str code)   the offer's position in the record's offers
//! f64  order_value   a redemption's order value; NaN when none
//! ```
//!
//! An impression's code is made in the action's plan and logged here, because codes
//! come from a sequence and a key (see `code`), not from the record; a redemption logs
//! the code it redeemed, so that replay redeems that coupon, not another open one of
//! the offer (a merged customer can hold two).
//!
//! A decision exposes a customer in an experiment the first time one of the
//! experiment's offers passes the gate for them (see `decide`); that is logged with
//! the decision even when it records no impression, so a control arm that is shown
//! nothing is measured from the same moment as the arms that are.

use crate::model::decision::FeedbackKind;
use bytes::BufMut;

use crate::codec::{DecodeError, Reader, Write};

/// One action as logged.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRecord {
    pub kind: FeedbackKind,
    pub time: u32,
    pub timestamp_ms: i64,
    pub decision_id: u64,
    pub key: String,
    pub channel: String,
    /// Empty: no profile event.
    pub event: String,
    pub offers: Vec<String>,
    /// Experiments the decision exposed the customer in.
    pub exposures: Vec<String>,
    /// Coupon codes issued (an impression) or redeemed (an accept): (position in
    /// `offers`, code).
    pub codes: Vec<(u8, String)>,
    /// A redemption's order value.
    pub order_value: Option<f64>,
}

impl ActionRecord {
    /// Encodes a record from borrowed parts, as the live path writes it without copying.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_parts<'a>(
        out: &mut Vec<u8>,
        kind: FeedbackKind,
        time: u32,
        timestamp_ms: i64,
        decision_id: u64,
        key: &str,
        channel: &str,
        event: &str,
        offers: impl ExactSizeIterator<Item = &'a str>,
        exposures: impl ExactSizeIterator<Item = &'a str>,
        codes: &[(u8, &str)],
        order_value: Option<f64>,
    ) {
        // Every string here is a key (bounded at admission) or a config name, far below
        // the 65,535 bytes of a `str`.
        out.put_u8(kind as u8);
        out.put_u32_le(time);
        out.put_i64_le(timestamp_ms);
        out.put_u64_le(decision_id);
        out.str(key);
        out.str(channel);
        out.str(event);
        debug_assert!(
            offers.len() <= 255 && (offers.len() > 0 || exposures.len() > 0),
            "an action has 1 to 255 offers, or exposures"
        );
        out.push(offers.len().min(255) as u8);
        for offer in offers.take(255) {
            out.str(offer);
        }
        // Absent when empty: the record is then byte for byte what format 6 wrote.
        if exposures.len() > 0 || !codes.is_empty() {
            out.push(exposures.len().min(255) as u8);
            for experiment in exposures.take(255) {
                out.str(experiment);
            }
        }
        // Absent when empty: the record is then byte for byte what format 7 wrote.
        if !codes.is_empty() {
            out.push(codes.len().min(255) as u8);
            for &(offer, code) in codes.iter().take(255) {
                out.push(offer);
                out.str(code);
            }
            out.put_f64_le(order_value.unwrap_or(f64::NAN));
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        ActionRecord::encode_parts(
            out,
            self.kind,
            self.time,
            self.timestamp_ms,
            self.decision_id,
            &self.key,
            &self.channel,
            &self.event,
            self.offers.iter().map(String::as_str),
            self.exposures.iter().map(String::as_str),
            &self
                .codes
                .iter()
                .map(|(o, c)| (*o, c.as_str()))
                .collect::<Vec<_>>(),
            self.order_value,
        )
    }

    pub fn decode(body: &[u8]) -> Result<ActionRecord, String> {
        let mut r = Reader::new(body);
        let f = |name: &'static str| move || format!("action {name}");
        let code = r.u8(&f("kind")).map_err(|e| e.to_string())?;
        let kind =
            FeedbackKind::from_u8(code).ok_or_else(|| format!("action of unknown kind {code}"))?;
        let decoded = (|| {
            let time = r.u32(&f("time"))?;
            let timestamp_ms = r.i64(&f("timestamp"))?;
            let decision_id = r.u64(&f("decision id"))?;
            let key = r.str(&f("key"))?.to_string();
            let channel = r.str(&f("channel"))?.to_string();
            let event = r.str(&f("event"))?.to_string();
            let count = r.u8(&f("offer count"))?;
            let mut offers = Vec::with_capacity(count as usize);
            for _ in 0..count {
                offers.push(r.str(&f("offer"))?.to_string());
            }
            let mut exposures = Vec::new();
            if r.remaining() > 0 {
                let count = r.u8(&f("exposure count"))?;
                for _ in 0..count {
                    exposures.push(r.str(&f("exposure"))?.to_string());
                }
                if count == 0 && r.remaining() == 0 {
                    // Written only when there are exposures, or codes after them.
                    return Err(r.invalid("action exposure count", "0 exposures".to_string()));
                }
            }
            let mut codes = Vec::new();
            let mut order_value = None;
            if r.remaining() > 0 {
                let count = r.u8(&f("code count"))?;
                if count == 0 {
                    return Err(r.invalid("action code count", "0 codes".to_string()));
                }
                for _ in 0..count {
                    let offer = r.u8(&f("code offer"))?;
                    if offer as usize >= offers.len() {
                        return Err(r.invalid(
                            "action code offer",
                            format!("offer {offer} of {}", offers.len()),
                        ));
                    }
                    codes.push((offer, r.str(&f("code"))?.to_string()));
                }
                order_value = Some(r.f64(&f("order value"))?).filter(|v| !v.is_nan());
            }
            r.finish()?;
            Ok::<_, DecodeError>(ActionRecord {
                kind,
                time,
                timestamp_ms,
                decision_id,
                key,
                channel,
                event,
                offers,
                exposures,
                codes,
                order_value,
            })
        })();
        let record = decoded.map_err(|e| e.to_string())?;
        if record.offers.is_empty() && record.exposures.is_empty() {
            return Err("an action with no offer and no exposure".into());
        }
        Ok(record)
    }
}

/// A change to one customer's offer state, as data directory format 2 logged it (beside
/// an EVENT record for the profile), so that caps, cooldowns, stickiness,
/// coupons and budgets survive a crash. Read, no longer written. Names, not indexes, so a reordered config still
/// replays it.
///
/// Body: `u8 kind` (the FEEDBACK kind code), `u32 time` (seconds), `u64 decision id`,
/// then the customer key, the offer and the channel, each as `u16 length` + UTF-8.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferAction {
    pub kind: FeedbackKind,
    pub time: u32,
    pub decision_id: u64,
    pub key: String,
    pub offer: String,
    pub channel: String,
}

impl OfferAction {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u8(self.kind as u8);
        out.put_u32_le(self.time);
        out.put_u64_le(self.decision_id);
        for text in [&self.key, &self.offer, &self.channel] {
            out.str(text);
        }
    }

    pub fn decode(body: &[u8]) -> Result<OfferAction, String> {
        let mut r = Reader::new(body);
        let f = |name: &'static str| move || format!("offer action {name}");
        let code = r.u8(&f("kind")).map_err(|e| e.to_string())?;
        let kind = FeedbackKind::from_u8(code)
            .ok_or_else(|| format!("offer action of unknown kind {code}"))?;
        let decoded = (|| {
            let time = r.u32(&f("time"))?;
            let decision_id = r.u64(&f("decision id"))?;
            let key = r.str(&f("key"))?.to_string();
            let offer = r.str(&f("offer"))?.to_string();
            let channel = r.str(&f("channel"))?.to_string();
            r.finish()?;
            Ok::<_, DecodeError>(OfferAction {
                kind,
                time,
                decision_id,
                key,
                offer,
                channel,
            })
        })();
        decoded.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ActionRecord {
        ActionRecord {
            kind: FeedbackKind::Impression,
            time: 1_772_445_600,
            timestamp_ms: 1_772_445_600_123,
            decision_id: 117_662_402_903_474_180,
            key: "user:42".into(),
            channel: "web".into(),
            event: "offer_impression".into(),
            offers: vec!["welcome_discount".into(), "free_shipping".into()],
            exposures: vec![],
            codes: vec![],
            order_value: None,
        }
    }

    /// The body of the example in docs/storage.md, section 4.7 (record bytes 17 to 88).
    #[test]
    fn the_documented_example_is_what_omnia_writes() {
        let example = ActionRecord {
            timestamp_ms: 1_772_445_600_000,
            offers: vec!["welcome_discount".into()],
            ..record()
        };
        let mut body = Vec::new();
        example.encode(&mut body);
        let documented = "01 a0 5f a5 69 00 89 fd ad 9c 01 00 00 04 00 7b 00 55 05 a2 01 \
            07 00 75 73 65 72 3a 34 32 03 00 77 65 62 10 00 6f 66 66 65 72 5f 69 6d 70 72 \
            65 73 73 69 6f 6e 01 10 00 77 65 6c 63 6f 6d 65 5f 64 69 73 63 6f 75 6e 74";
        let documented: Vec<u8> = documented
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        assert_eq!(body, documented);
    }

    #[test]
    fn a_record_round_trips() {
        let exposed = ActionRecord {
            exposures: vec!["cart_reminder_boost".into(), "holdout".into()],
            ..record()
        };
        let exposed_only = ActionRecord {
            offers: vec![],
            event: String::new(),
            ..exposed.clone()
        };
        let issued = ActionRecord {
            codes: vec![(1, "SHIP-7K2M9QXRT4C".into())],
            ..record()
        };
        let redeemed = ActionRecord {
            kind: FeedbackKind::Accept,
            offers: vec!["welcome_discount".into()],
            codes: vec![(0, "WELCOME-7K2M9QXRT4C".into())],
            order_value: Some(59.9),
            ..exposed.clone()
        };
        for record in [record(), exposed, exposed_only, issued, redeemed] {
            let mut body = Vec::new();
            record.encode(&mut body);
            assert_eq!(ActionRecord::decode(&body).unwrap(), record);
        }
    }

    #[test]
    fn every_cut_short_record_and_trailing_bytes_are_errors() {
        let mut body = Vec::new();
        record().encode(&mut body);
        for len in 0..body.len() {
            assert!(ActionRecord::decode(&body[..len]).is_err(), "cut at {len}");
        }
        body.push(0);
        assert!(ActionRecord::decode(&body).is_err());
    }

    #[test]
    fn an_unknown_kind_or_no_offer_is_named() {
        let mut body = Vec::new();
        record().encode(&mut body);
        body[0] = 9;
        assert_eq!(
            ActionRecord::decode(&body).unwrap_err(),
            "action of unknown kind 9"
        );
        let mut none = record();
        none.offers.clear();
        let mut body = Vec::new();
        // Written by hand: encode refuses (in debug builds) to write an empty list.
        body.push(1);
        body.extend_from_slice(&none.time.to_le_bytes());
        body.extend_from_slice(&none.timestamp_ms.to_le_bytes());
        body.extend_from_slice(&none.decision_id.to_le_bytes());
        for s in [&none.key, &none.channel, &none.event] {
            body.str(s);
        }
        body.push(0);
        assert_eq!(
            ActionRecord::decode(&body).unwrap_err(),
            "an action with no offer and no exposure"
        );
    }
}
