//! Omnichannel journeys: the traffic a retailer's channels really send.
//!
//! Each customer walks a small state machine: anonymous browsing on the web or in the
//! app, product views, add to cart, then either abandonment (and later a reminder click
//! from e-mail or SMS) or a login that merges the anonymous profile into the account;
//! purchases on the web, in the app or in a store; coupons issued by e-mail and redeemed
//! in a store with a loyalty card; now and then an unsubscribe. Every transition has a
//! probability in [`Mix`], which a TOML file can override.
//!
//! Popularity is Zipf distributed over the population, so a few customers are very
//! active, as in real traffic. A [`Journeys`] generator owns a slice of the population
//! and a seeded RNG: the same seed and slice give the same events, in the same order
//! (with an [`Effect`], also the same decision answers: the effect reads them).

use std::sync::Arc;

use omnia::engine::RawEvent;
use omnia::model::ValueRef;
use omnia::protocol::IngestWriter;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};

use crate::effect::Effect;

/// Transition probabilities. Each stage's probabilities are checked in order; what is
/// left over is the stage's default step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Mix {
    /// Anonymous: a page view (else a product view or, with `add_to_cart`, a cart).
    pub anonymous_page_view: f64,
    pub anonymous_add_to_cart: f64,
    /// Carted: log in (merge), else keep browsing anonymously or abandon.
    pub carted_login: f64,
    /// Carted: abandon the cart; later a reminder click brings the customer back.
    pub carted_abandon: f64,
    /// Abandoned: click the reminder on e-mail or SMS (else stay away).
    pub abandoned_reminder_click: f64,
    /// Logged in: buy (on web, app or in a store).
    pub logged_in_purchase: f64,
    /// Customer: an e-mail coupon, its redemption in a store, an unsubscribe.
    pub customer_coupon_issued: f64,
    pub customer_coupon_redeemed: f64,
    pub customer_unsubscribe: f64,
    /// Customer: buy again (else browse).
    pub customer_purchase: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            anonymous_page_view: 0.55,
            anonymous_add_to_cart: 0.15,
            carted_login: 0.4,
            carted_abandon: 0.3,
            abandoned_reminder_click: 0.2,
            logged_in_purchase: 0.4,
            customer_coupon_issued: 0.1,
            customer_coupon_redeemed: 0.08,
            customer_unsubscribe: 0.01,
            customer_purchase: 0.25,
        }
    }
}

impl Mix {
    /// Reads a mix from TOML; fields left out keep their defaults.
    pub fn from_toml(text: &str) -> Result<Mix, String> {
        let mix: Mix = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, p) in [
            ("anonymous_page_view", mix.anonymous_page_view),
            ("anonymous_add_to_cart", mix.anonymous_add_to_cart),
            ("carted_login", mix.carted_login),
            ("carted_abandon", mix.carted_abandon),
            ("abandoned_reminder_click", mix.abandoned_reminder_click),
            ("logged_in_purchase", mix.logged_in_purchase),
            ("customer_coupon_issued", mix.customer_coupon_issued),
            ("customer_coupon_redeemed", mix.customer_coupon_redeemed),
            ("customer_unsubscribe", mix.customer_unsubscribe),
            ("customer_purchase", mix.customer_purchase),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} is {p}; a probability is from 0 to 1"));
            }
        }
        let sums = [
            (
                "anonymous",
                mix.anonymous_page_view + mix.anonymous_add_to_cart,
            ),
            ("carted", mix.carted_login + mix.carted_abandon),
            (
                "customer",
                mix.customer_coupon_issued
                    + mix.customer_coupon_redeemed
                    + mix.customer_unsubscribe
                    + mix.customer_purchase,
            ),
        ];
        for (stage, sum) in sums {
            if sum > 1.0 {
                return Err(format!(
                    "the {stage} probabilities add up to {sum}; at most 1"
                ));
            }
        }
        Ok(mix)
    }
}

impl Mix {
    /// The mix of a customer the [`Effect`] treats: each step towards a purchase
    /// (logging in with a cart, clicking the cart reminder, buying) `factor` times as
    /// likely, each stage's probabilities still adding up to at most 1.
    fn towards_purchase(&self, factor: f64) -> Mix {
        let scale = |p: f64, room: f64| (p * factor).min(room).max(0.0);
        let customer_other =
            self.customer_coupon_issued + self.customer_coupon_redeemed + self.customer_unsubscribe;
        Mix {
            carted_login: scale(self.carted_login, 1.0 - self.carted_abandon),
            abandoned_reminder_click: scale(self.abandoned_reminder_click, 1.0),
            logged_in_purchase: scale(self.logged_in_purchase, 1.0),
            customer_purchase: scale(self.customer_purchase, 1.0 - customer_other),
            ..self.clone()
        }
    }
}

/// Where a customer is in its journey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Anonymous,
    Carted,
    Abandoned,
    LoggedIn,
    Customer,
}

pub const CATEGORIES: [&str; 4] = ["shoes", "bags", "coats", "hats"];

/// A generator of events for customers `first .. first + count`.
pub struct Journeys {
    mix: Mix,
    stages: Vec<Stage>,
    rng: SmallRng,
    first: u64,
    zipf: Zipf<f64>,
    scratch: String,
    effect: Option<Arc<Effect>>,
}

impl Journeys {
    pub fn new(mix: Mix, first: u64, count: u64, zipf: f64, seed: u64) -> Result<Journeys, String> {
        let zipf = Zipf::new(count.max(1) as f64, zipf).map_err(|e| format!("zipf: {e}"))?;
        Ok(Journeys {
            mix,
            stages: vec![Stage::Anonymous; count.max(1) as usize],
            rng: SmallRng::seed_from_u64(seed),
            first,
            zipf,
            scratch: String::with_capacity(64),
            effect: None,
        })
    }

    /// These journeys carry `effect`: its treated customers, once shown an exposing
    /// offer, take each step towards a purchase more often, and every placed customer's
    /// purchases are tallied.
    pub fn with_effect(mut self, effect: Option<Arc<Effect>>) -> Journeys {
        self.effect = effect;
        self
    }

    /// A customer chosen by popularity.
    pub fn pick(&mut self) -> u64 {
        self.first + self.zipf.sample(&mut self.rng) as u64 - 1
    }

    /// The key a channel would know customer `c` by in its current stage.
    pub fn key_of(&self, c: u64) -> String {
        match self.stages[(c - self.first) as usize] {
            Stage::Anonymous | Stage::Carted | Stage::Abandoned => format!("anon:{c}"),
            Stage::LoggedIn | Stage::Customer => format!("user:{c}"),
        }
    }

    pub fn stage_of(&self, c: u64) -> Stage {
        self.stages[(c - self.first) as usize]
    }

    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    /// The next event of a customer chosen by popularity, stamped `now_ms`.
    pub fn next(&mut self, now_ms: i64) -> RawEvent {
        let c = self.pick();
        self.next_for(c, now_ms)
    }

    /// The next event of customer `c`.
    pub fn next_for(&mut self, c: u64, now_ms: i64) -> RawEvent {
        self.step(c, now_ms).to_raw()
    }

    /// Writes the next event of a customer chosen by popularity straight into an INGEST
    /// body: the same event [`Journeys::next`] makes, without allocating for it.
    pub fn write_next(&mut self, now_ms: i64, out: &mut IngestWriter) {
        let c = self.pick();
        let step = self.step(c, now_ms);
        step.write(out, &mut self.scratch);
    }

    /// Moves customer `c` one step along its journey.
    pub fn step(&mut self, c: u64, now: i64) -> Step {
        use KeyKind::*;
        let slot = (c - self.first) as usize;
        let treated;
        let factor = self.effect.as_ref().map_or(1.0, |e| e.factor(c));
        let m = if factor == 1.0 {
            &self.mix
        } else {
            treated = self.mix.towards_purchase(factor);
            &treated
        };
        let rng = &mut self.rng;
        let web_or_app = ["web", "app"][rng.random_range(0..2)];
        let sku = Val::Sku(rng.random_range(0..5000));
        let category = Val::Str(CATEGORIES[rng.random_range(0..4)]);
        let price = Val::Num(rng.random_range(10..400) as f64);
        let stage = self.stages[slot];
        let roll: f64 = rng.random();
        let step = |event, channel, keys: &'static [KeyKind], props: &[(&'static str, Val)]| {
            Step::new(c, event, channel, now, keys, props, &[])
        };
        let product = |event, key: &'static [KeyKind]| {
            step(
                event,
                web_or_app,
                key,
                &[("sku", sku), ("category", category), ("price", price)],
            )
        };
        let (event, next) = match stage {
            Stage::Anonymous if roll < m.anonymous_page_view => (
                step(
                    "page_view",
                    web_or_app,
                    &[Anon],
                    &[("url", Val::Str("/c/shoes"))],
                ),
                stage,
            ),
            Stage::Anonymous if roll < m.anonymous_page_view + m.anonymous_add_to_cart => (
                step(
                    "add_to_cart",
                    web_or_app,
                    &[Anon],
                    &[
                        ("sku", sku),
                        ("category", category),
                        ("price", price),
                        ("quantity", Val::Num(1.0)),
                    ],
                ),
                Stage::Carted,
            ),
            Stage::Anonymous => (product("product_view", &[Anon]), stage),
            Stage::Carted if roll < m.carted_login => (
                // Login in the app: the anonymous profile merges into the account.
                Step::new(
                    c,
                    "identify",
                    "app",
                    now,
                    &[User, Anon, Email],
                    &[],
                    &[
                        ("email_opt_in", Val::Bool(true)),
                        (
                            "country",
                            Val::Str(["NL", "BE", "DE"][rng.random_range(0..3)]),
                        ),
                    ],
                ),
                Stage::LoggedIn,
            ),
            Stage::Carted if roll < m.carted_login + m.carted_abandon => (
                step(
                    "page_view",
                    web_or_app,
                    &[Anon],
                    &[("url", Val::Str("/checkout"))],
                ),
                Stage::Abandoned,
            ),
            Stage::Carted => (product("product_view", &[Anon]), stage),
            Stage::Abandoned if roll < m.abandoned_reminder_click => {
                let (event, channel) =
                    [("email_click", "email"), ("sms_click", "sms")][rng.random_range(0..2)];
                (
                    // The link names the account, so the click joins the anonymous
                    // browser, the address and the account: the purchases that follow
                    // (by account) belong to the customer who left the cart.
                    step(
                        event,
                        channel,
                        &[Anon, Email, User],
                        &[("campaign", Val::Str("cart-reminder"))],
                    ),
                    Stage::LoggedIn,
                )
            }
            Stage::Abandoned => (step("page_view", web_or_app, &[Anon], &[]), stage),
            Stage::LoggedIn if roll < m.logged_in_purchase => {
                let where_ = ["web", "app", "store"][rng.random_range(0..3)];
                (
                    step(
                        "purchase",
                        where_,
                        &[User],
                        &[("amount", price), ("sku", sku), ("category", category)],
                    ),
                    Stage::Customer,
                )
            }
            Stage::LoggedIn => (product("product_view", &[User]), stage),
            Stage::Customer if roll < m.customer_coupon_issued => (
                step(
                    "coupon_issued",
                    "email",
                    &[Email],
                    &[("coupon", Val::Str("SPRING10")), ("value", Val::Num(10.0))],
                ),
                stage,
            ),
            Stage::Customer if roll < m.customer_coupon_issued + m.customer_coupon_redeemed => (
                step(
                    "coupon_redeemed",
                    "store",
                    &[Card, User],
                    &[
                        ("coupon", Val::Str("SPRING10")),
                        ("value", Val::Num(10.0)),
                        ("store", Val::Str("amsterdam-centraal")),
                    ],
                ),
                stage,
            ),
            Stage::Customer
                if roll
                    < m.customer_coupon_issued
                        + m.customer_coupon_redeemed
                        + m.customer_unsubscribe =>
            {
                (
                    step(
                        "unsubscribe",
                        "email",
                        &[User],
                        &[("list", Val::Str("newsletter"))],
                    ),
                    stage,
                )
            }
            Stage::Customer
                if roll
                    < m.customer_coupon_issued
                        + m.customer_coupon_redeemed
                        + m.customer_unsubscribe
                        + m.customer_purchase =>
            {
                (
                    step(
                        "purchase",
                        web_or_app,
                        &[User],
                        &[("amount", price), ("category", category)],
                    ),
                    stage,
                )
            }
            Stage::Customer => (product("product_view", &[User]), stage),
        };
        self.stages[slot] = next;
        if let (Some(effect), "purchase") = (&self.effect, event.event) {
            effect.bought(c);
        }
        event
    }
}

/// Which of a customer's keys an event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Anon,
    User,
    Email,
    Card,
}

impl KeyKind {
    fn write(self, c: u64, out: &mut String) {
        use std::fmt::Write;
        out.clear();
        let _ = match self {
            KeyKind::Anon => write!(out, "anon:{c}"),
            KeyKind::User => write!(out, "user:{c}"),
            KeyKind::Email => write!(out, "email:c{c}@example.com"),
            KeyKind::Card => write!(out, "card:{c}"),
        };
    }
}

/// A property or attribute value of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val {
    Num(f64),
    Str(&'static str),
    Bool(bool),
    /// A product code, `SKU-n`.
    Sku(u32),
}

impl Val {
    fn with<R>(self, scratch: &mut String, f: impl FnOnce(ValueRef<'_>) -> R) -> R {
        match self {
            Val::Num(n) => f(ValueRef::Num(n)),
            Val::Str(s) => f(ValueRef::Str(s)),
            Val::Bool(b) => f(ValueRef::Bool(b)),
            Val::Sku(n) => {
                use std::fmt::Write;
                scratch.clear();
                let _ = write!(scratch, "SKU-{n}");
                f(ValueRef::Str(scratch))
            }
        }
    }
}

/// One event of a journey, before it is written anywhere.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub customer: u64,
    pub event: &'static str,
    pub channel: &'static str,
    pub timestamp_ms: i64,
    pub keys: &'static [KeyKind],
    props: [(&'static str, Val); 4],
    prop_count: usize,
    attrs: [(&'static str, Val); 2],
    attr_count: usize,
}

impl Step {
    fn new(
        customer: u64,
        event: &'static str,
        channel: &'static str,
        timestamp_ms: i64,
        keys: &'static [KeyKind],
        props: &[(&'static str, Val)],
        attrs: &[(&'static str, Val)],
    ) -> Step {
        let mut step = Step {
            customer,
            event,
            channel,
            timestamp_ms,
            keys,
            props: [("", Val::Num(0.0)); 4],
            prop_count: props.len().min(4),
            attrs: [("", Val::Num(0.0)); 2],
            attr_count: attrs.len().min(2),
        };
        step.props[..step.prop_count].copy_from_slice(&props[..step.prop_count]);
        step.attrs[..step.attr_count].copy_from_slice(&attrs[..step.attr_count]);
        step
    }

    pub fn properties(&self) -> &[(&'static str, Val)] {
        &self.props[..self.prop_count]
    }

    pub fn attributes(&self) -> &[(&'static str, Val)] {
        &self.attrs[..self.attr_count]
    }

    pub fn to_raw(&self) -> RawEvent {
        let mut scratch = String::new();
        let mut e = RawEvent::new(self.event, self.channel, self.timestamp_ms);
        for k in self.keys {
            k.write(self.customer, &mut scratch);
            e.keys.push(scratch.clone());
        }
        for (name, v) in self.properties() {
            let value = v.with(&mut scratch, |v| v.to_owned());
            e.properties.push((name.to_string(), value));
        }
        for (name, v) in self.attributes() {
            let value = v.with(&mut scratch, |v| v.to_owned());
            e.attributes.push((name.to_string(), value));
        }
        e
    }

    pub fn write(&self, out: &mut IngestWriter, scratch: &mut String) {
        out.event(
            self.event,
            self.channel,
            self.timestamp_ms,
            self.keys.len() as u8,
        );
        for k in self.keys {
            k.write(self.customer, scratch);
            out.key(scratch);
        }
        out.properties(self.prop_count as u8);
        for (name, v) in self.properties() {
            v.with(scratch, |v| out.property(name, v));
        }
        out.attributes(self.attr_count as u8);
        for (name, v) in self.attributes() {
            v.with(scratch, |v| out.attribute(name, v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(seed: u64, n: usize) -> Vec<RawEvent> {
        let mut j = Journeys::new(Mix::default(), 0, 1000, 1.05, seed).unwrap();
        (0..n).map(|i| j.next(1_000 + i as i64)).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_events() {
        assert_eq!(events(7, 500), events(7, 500));
        assert_ne!(events(7, 500), events(8, 500));
    }

    #[test]
    fn the_mix_shapes_the_traffic() {
        let all = events(1, 200_000);
        let share =
            |name: &str| all.iter().filter(|e| e.event == name).count() as f64 / all.len() as f64;
        // Every kind of step happens, in plausible proportions.
        for name in [
            "page_view",
            "product_view",
            "add_to_cart",
            "identify",
            "email_click",
            "sms_click",
            "purchase",
            "coupon_issued",
            "coupon_redeemed",
            "unsubscribe",
        ] {
            assert!(share(name) > 0.0, "{name} never happens");
        }
        assert!(share("page_view") > share("add_to_cart"));
        assert!(share("purchase") > share("unsubscribe"));

        // A mix without carts never leaves the anonymous stage.
        let none = Mix {
            anonymous_add_to_cart: 0.0,
            ..Mix::default()
        };
        let mut j = Journeys::new(none, 0, 100, 1.05, 3).unwrap();
        let names: std::collections::HashSet<String> =
            (0..10_000).map(|i| j.next(i).event).collect();
        let expected: std::collections::HashSet<String> =
            ["page_view", "product_view"].map(String::from).into();
        assert_eq!(names, expected);
    }

    #[test]
    fn the_effect_makes_treated_abandoners_click_the_reminder_more_often() {
        use omnia::model::decision::ArmAssignment;
        let config = omnia::config::Config::embedded_default().unwrap();
        let effect = Arc::new(
            crate::effect::Effect::new(&config, None, None, 1.0, 2000)
                .unwrap()
                .unwrap(),
        );
        for c in 0..2000u64 {
            let arm = if c % 2 == 0 { "boosted" } else { "standard" };
            let answer = crate::target::Answered {
                arms: vec![ArmAssignment {
                    experiment: "cart_reminder_boost".into(),
                    arm: arm.into(),
                }],
                offers: vec!["cart_reminder".into()],
            };
            effect.saw(c, &answer);
        }
        // Every customer abandons and is then stepped until it clicks or 50 steps pass.
        let mix = Mix {
            anonymous_page_view: 0.0,
            anonymous_add_to_cart: 1.0,
            carted_login: 0.0,
            carted_abandon: 1.0,
            abandoned_reminder_click: 0.02,
            ..Mix::default()
        };
        let mut j = Journeys::new(mix, 0, 2000, 1.05, 5)
            .unwrap()
            .with_effect(Some(effect.clone()));
        let mut clicked = [0u32; 2];
        for c in 0..2000u64 {
            for step in 0..52 {
                let e = j.next_for(c, step);
                if e.event.ends_with("_click") {
                    clicked[(c % 2) as usize] += 1;
                    break;
                }
            }
        }
        // 50 tries at 4% against 2%: 87% against 64% click, far apart for 1000 each.
        let [boosted, standard] = clicked;
        assert!(
            boosted > standard + 150,
            "boosted {boosted}, standard {standard}"
        );
        assert!((820..=920).contains(&boosted), "{boosted}");
        assert!((590..=690).contains(&standard), "{standard}");
    }

    #[test]
    fn a_mix_file_overrides_defaults_and_is_checked() {
        let mix = Mix::from_toml("carted_login = 0.9\ncarted_abandon = 0.1").unwrap();
        assert_eq!(mix.carted_login, 0.9);
        assert_eq!(mix.anonymous_page_view, Mix::default().anonymous_page_view);
        let err = Mix::from_toml("carted_login = 0.9\ncarted_abandon = 0.2").unwrap_err();
        assert!(err.contains("carted probabilities add up to"), "{err}");
        assert!(Mix::from_toml("carted_logon = 1").is_err());
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;
    use omnia::protocol::Request;

    #[test]
    fn written_events_are_the_raw_events() {
        let mut a = Journeys::new(Mix::default(), 0, 500, 1.05, 9).unwrap();
        let mut b = Journeys::new(Mix::default(), 0, 500, 1.05, 9).unwrap();
        let raw: Vec<RawEvent> = (0..2000).map(|i| a.next(i)).collect();
        let mut w = IngestWriter::default();
        for i in 0..2000 {
            b.write_next(i, &mut w);
        }
        assert_eq!(
            w.finish(),
            Request::Ingest { events: raw }.encode().unwrap()
        );
    }
}
