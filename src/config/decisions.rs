//! Offers, experiments and decision settings: the `[decisions]`, `[offers.*]` and
//! `[experiments.*]` tables, validated and compiled with the rest of the config.
//!
//! Offer rules are compiled by the same compiler as segments, so the aggregates they read
//! get slots in the profile layout like any other, and an eligibility check is the same
//! allocation-free evaluation as a segment rule. Everything here is checked up front:
//! a decision never meets an unknown name.

use toml::Spanned;

use super::file::{RawConfig, RawDecisions, RawOffer};
use super::rule::compile::{list, OfferNames};
use super::rule::{Compiler, Expr, Refs, RuleError};
use super::{AttributeDef, Builder, EventDef, ValueType};
use crate::model::decision::FeedbackKind;

/// Decisions remembered for feedback by id, unless `remember_decisions` says otherwise.
pub const DEFAULT_REMEMBER_DECISIONS: u32 = 1_000_000;

/// A frequency cap: at most `impressions` within any `per` seconds, on one channel or on
/// all together.
#[derive(Debug, Clone, PartialEq)]
pub struct Cap {
    pub impressions: u32,
    pub per: u32,
    pub channel: Option<usize>,
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetCounts {
    Impressions,
    Accepts,
}

impl BudgetCounts {
    pub fn name(self) -> &'static str {
        match self {
            BudgetCounts::Impressions => "impressions",
            BudgetCounts::Accepts => "accepts",
        }
    }
}

/// A global budget of an offer: at most `limit` of `counts` over its life, or per period
/// of `per` seconds (periods aligned to the Unix epoch, so `1d` is a UTC day).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetDef {
    pub counts: BudgetCounts,
    pub limit: u64,
    pub per: Option<u32>,
}

/// An offer's content: the fields a channel shows (title, text, URL, image), each a
/// template whose `{...}` placeholders are filled per customer at the decision, so that
/// every channel shows the same words.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContentDef {
    pub title: Option<Template>,
    pub text: Option<Template>,
    pub url: Option<Template>,
    pub image: Option<Template>,
}

/// Text with placeholders, compiled: literal text, a rule expression's value (a number
/// or a string), or the customer's coupon code for the offer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Template {
    pub pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Number(Expr),
    /// An interned string code, as `Expr`s of string type evaluate.
    String(Expr),
    Coupon,
}

/// The lengths a coupon code's body may have (characters after the dash, before the
/// check character), and the default: see `decide::code`.
pub const COUPON_LENGTHS: std::ops::RangeInclusive<u8> = 8..=12;
pub const DEFAULT_COUPON_LENGTH: u8 = 10;

/// A coupon the offer issues at an impression to a customer who holds no open coupon
/// for it (none yet, or the last one redeemed or expired).
#[derive(Debug, Clone, PartialEq)]
pub struct CouponDef {
    pub prefix: String,
    /// Seconds from issue to expiry.
    pub valid: u32,
    /// Characters of a code after the dash, before its check character.
    pub length: u8,
    /// Bit `c` set when the code may be redeemed on channel `c`.
    pub channels: u32,
}

#[derive(Debug, Clone)]
pub struct OfferDef {
    pub name: String,
    pub description: Option<String>,
    /// The eligibility rule; `None` means always eligible.
    pub rule: Option<(String, Expr)>,
    /// Bit `c` set when the offer may be shown on channel `c`.
    pub channels: u32,
    pub value: f64,
    pub weight: f64,
    /// The score that estimates the chance the customer takes the offer.
    pub propensity: Option<usize>,
    /// The ranking expression; `None` is `propensity * value * weight`.
    pub rank: Option<(String, Expr)>,
    /// Offers in a higher tier always rank above offers in a lower one.
    pub priority: i32,
    pub caps: Vec<Cap>,
    pub cooldown_dismiss: u32,
    pub cooldown_accept: u32,
    /// Whether an accepted offer can be offered again (after its accept cooldown).
    pub repeat: bool,
    pub budget: Option<BudgetDef>,
    /// Seconds an impression keeps this offer first on every channel; 0 is off.
    pub sticky: u32,
    pub coupon: Option<CouponDef>,
    pub content: Option<ContentDef>,
}

impl OfferDef {
    pub fn on_channel(&self, channel: usize) -> bool {
        self.channels & (1 << channel) != 0
    }
}

#[derive(Debug, Clone)]
pub struct ArmDef {
    pub name: String,
    pub weight: u32,
    /// A control arm receives only the fallback offer (or nothing).
    pub control: bool,
    /// Whether a control arm still receives the fallback offer (always for an
    /// experiment's control arm; `[decisions] holdout_fallback` for the holdout's).
    pub fallback: bool,
    /// Offers this arm may receive; `None` is all.
    pub offers: Option<Vec<bool>>,
    /// Per offer: a factor on its ranking score in this arm.
    pub boosts: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct ExperimentDef {
    pub name: String,
    pub description: Option<String>,
    pub arms: Vec<ArmDef>,
    pub total_weight: u64,
    /// The goals it is measured on, by index into `Config::goals`.
    pub goals: Vec<usize>,
    /// The arm the others are compared with, by index.
    pub baseline: usize,
    /// Per offer: whether its passing the gate in a decision exposes the customer
    /// (docs/decisioning.md, "Measuring an experiment").
    pub exposing: Vec<bool>,
    /// Exposed customers each compared arm needs before the report compares it.
    pub min_customers: u32,
    /// The global holdout of `[decisions] holdout`, not a `[experiments.*]` table.
    pub holdout: bool,
}

/// The name of the experiment `[decisions] holdout` makes, and of its held-out arm.
pub const HOLDOUT: &str = "holdout";
/// The name of the holdout's other arm: everyone omnia decides for.
pub const HOLDOUT_TREATED: &str = "treated";
/// The default of `[experiments.*] min_customers`.
pub const DEFAULT_MIN_CUSTOMERS: u32 = 100;

/// The offers an experiment's arms treat differently: with a control arm every offer but
/// the fallback; otherwise those some arm leaves out or weights differently from
/// another. An experiment whose arms are alike (an A/A test) is exposed by every offer
/// but the fallback.
fn exposing_offers(arms: &[ArmDef], offers: usize, fallback: Option<usize>) -> Vec<bool> {
    let every = || {
        (0..offers)
            .map(|o| Some(o) != fallback)
            .collect::<Vec<bool>>()
    };
    if arms.iter().any(|a| a.control) {
        return every();
    }
    let treatment = |a: &ArmDef, o: usize| {
        (
            a.offers.as_ref().map_or(true, |allowed| allowed[o]),
            a.boosts[o].to_bits(),
        )
    };
    let differs: Vec<bool> = (0..offers)
        .map(|o| {
            arms.windows(2)
                .any(|w| treatment(&w[0], o) != treatment(&w[1], o))
        })
        .collect();
    if differs.iter().any(|&d| d) {
        differs
    } else {
        every()
    }
}

/// Everything about decisions.
#[derive(Debug, Clone)]
pub struct Decisions {
    pub offers: Vec<OfferDef>,
    pub experiments: Vec<ExperimentDef>,
    /// Offered when no other offer is eligible (still subject to its own constraints).
    pub fallback: Option<usize>,
    pub remember_decisions: u32,
    /// Fields a channel may send with a decision request.
    pub context: Vec<AttributeDef>,
    /// Per [`FeedbackKind`]: the event type feedback of that kind becomes in the profile.
    pub feedback_events: [Option<usize>; 4],
    /// The event type a coupon redemption becomes in the profile (`feedback_events`'
    /// `redeem`); without it, the accept's.
    pub redeem_event: Option<usize>,
}

impl Default for Decisions {
    fn default() -> Self {
        Decisions {
            offers: Vec::new(),
            experiments: Vec::new(),
            fallback: None,
            remember_decisions: DEFAULT_REMEMBER_DECISIONS,
            context: Vec::new(),
            feedback_events: [None; 4],
            redeem_event: None,
        }
    }
}

impl Decisions {
    pub fn offer_id(&self, name: &str) -> Option<usize> {
        self.offers.iter().position(|o| o.name == name)
    }

    pub fn context_id(&self, name: &str) -> Option<usize> {
        self.context.iter().position(|c| c.name == name)
    }
}

impl Builder<'_> {
    /// The context fields, needed before any rule is compiled.
    pub(super) fn decision_context(&mut self, raw: &RawConfig) -> Vec<AttributeDef> {
        let Some(decisions) = &raw.decisions else {
            return Vec::new();
        };
        decisions
            .get_ref()
            .context
            .iter()
            .map(|(name, ty)| {
                self.name(name, "context field");
                AttributeDef {
                    name: name.get_ref().clone(),
                    ty: *ty,
                }
            })
            .collect()
    }

    /// Validates and compiles offers, experiments and the `[decisions]` table.
    pub(super) fn decisions(
        &mut self,
        raw: &RawConfig,
        compiler: &mut Compiler<'_>,
        context: Vec<AttributeDef>,
        declared_goals: &[String],
    ) -> Decisions {
        let events = compiler.ctx.events;
        let channels = compiler.ctx.channels;
        let empty = RawDecisions::default();
        let settings = raw.decisions.as_ref().map_or(&empty, |d| d.get_ref());
        let sticky_default = match &settings.sticky {
            Some(d) => self.sticky(d, "decisions.sticky"),
            None => 0,
        };
        if channels.len() > 32 {
            // Reported with the channels already; offers keep channels in a 32-bit mask.
            return Decisions::default();
        }

        let mut offers = Vec::new();
        for (name, offer) in &raw.offers {
            self.name(name, "offer");
            offers.push(self.offer(name, offer, compiler, sticky_default));
        }
        if offers.len() > u16::MAX as usize {
            self.error(0..0, "too many offers: at most 65535", None);
        }
        let offer_names: Vec<&str> = raw.offers.keys().map(|k| k.get_ref().as_str()).collect();

        let fallback = settings.fallback.as_ref().and_then(|f| {
            let found = offer_names.iter().position(|o| *o == f.get_ref());
            if found.is_none() {
                self.unknown_offer(f, "decisions.fallback", &offer_names);
            }
            found
        });
        let remember_decisions = match &settings.remember_decisions {
            Some(n) if !(1..=100_000_000).contains(n.get_ref()) => {
                self.error(
                    n.span(),
                    format!(
                        "decisions.remember_decisions is {}, but it must be from 1 to 100000000",
                        n.get_ref()
                    ),
                    Some("each remembered decision costs about 100 bytes".into()),
                );
                DEFAULT_REMEMBER_DECISIONS
            }
            Some(n) => *n.get_ref() as u32,
            None => DEFAULT_REMEMBER_DECISIONS,
        };
        let mut feedback_events = [None; 4];
        let mut redeem_event = None;
        if let Some(table) = &settings.feedback_events {
            for (kind, event) in table.get_ref() {
                let slot = match FeedbackKind::from_name(kind.get_ref()) {
                    Some(kind) => &mut feedback_events[kind.index()],
                    None if kind.get_ref() == "redeem" => &mut redeem_event,
                    None => {
                        self.error(
                            kind.span(),
                            format!("`{}` is not a kind of feedback", kind.get_ref()),
                            Some(
                                "the kinds are impression, click, accept, dismiss and redeem (a coupon redemption)"
                                    .into(),
                            ),
                        );
                        continue;
                    }
                };
                match events.iter().position(|e| e.name == *event.get_ref()) {
                    Some(e) => {
                        self.feedback_event_properties(&events[e], event);
                        *slot = Some(e);
                    }
                    None => self.error(
                        event.span(),
                        format!(
                            "unknown event type `{}` for {} feedback",
                            event.get_ref(),
                            kind
                        ),
                        Some(format!(
                            "declared event types: {}",
                            list(events.iter().map(|e| e.name.as_str()))
                        )),
                    ),
                }
            }
        }

        let mut experiments = Vec::new();
        // A customer's arms are stored with a `u8` count (snapshots, offer state).
        if raw.experiments.len() > u8::MAX as usize {
            let span = raw.experiments.keys().nth(255).map_or(0..0, |k| k.span());
            self.error(
                span,
                format!(
                    "{} experiments: at most 255; end experiments that have answered their question",
                    raw.experiments.len()
                ),
                None,
            );
        }
        for (name, experiment) in &raw.experiments {
            self.name(name, "experiment");
            let mut arms: Vec<ArmDef> = Vec::new();
            for arm in experiment.arms.get_ref() {
                let arm_ref = arm.get_ref();
                self.name(&arm_ref.name, "arm");
                if arms.iter().any(|a| a.name == *arm_ref.name.get_ref()) {
                    self.error(
                        arm_ref.name.span(),
                        format!(
                            "experiment `{}` has two arms named `{}`",
                            name.get_ref(),
                            arm_ref.name.get_ref()
                        ),
                        None,
                    );
                }
                let offers = arm_ref.offers.as_ref().map(|listed| {
                    let mut allowed = vec![false; offer_names.len()];
                    for o in listed {
                        match offer_names.iter().position(|n| n == o.get_ref()) {
                            Some(i) => allowed[i] = true,
                            None => self.unknown_offer(o, "an experiment arm", &offer_names),
                        }
                    }
                    allowed
                });
                let mut boosts = vec![1.0; offer_names.len()];
                for (o, factor) in &arm_ref.weights {
                    match offer_names.iter().position(|n| n == o.get_ref()) {
                        Some(i) if factor.is_finite() && *factor >= 0.0 => boosts[i] = *factor,
                        Some(_) => self.error(
                            o.span(),
                            format!(
                                "the weight of `{}` must be a number of 0 or more",
                                o.get_ref()
                            ),
                            None,
                        ),
                        None => self.unknown_offer(o, "an experiment arm", &offer_names),
                    }
                }
                if arm_ref.control && (arm_ref.offers.is_some() || !arm_ref.weights.is_empty()) {
                    self.error(
                        arm.span(),
                        format!(
                            "arm `{}` is a control arm, which receives only the fallback; it cannot also list `offers` or `weights`",
                            arm_ref.name.get_ref()
                        ),
                        None,
                    );
                }
                arms.push(ArmDef {
                    name: arm_ref.name.get_ref().clone(),
                    weight: *arm_ref.weight.get_ref(),
                    control: arm_ref.control,
                    fallback: true,
                    offers,
                    boosts,
                });
            }
            let total_weight: u64 = arms.iter().map(|a| a.weight as u64).sum();
            if arms.is_empty() || total_weight == 0 {
                self.error(
                    experiment.arms.span(),
                    format!(
                        "experiment `{}` needs at least one arm with a weight above 0",
                        name.get_ref()
                    ),
                    Some("for example `arms = [{ name = \"control\", weight = 10, control = true }, { name = \"treatment\", weight = 90 }]`".into()),
                );
            }
            if arms.len() > 255 {
                self.error(experiment.arms.span(), "at most 255 arms", None);
            }
            if name.get_ref() == HOLDOUT {
                self.error(
                    name.span(),
                    "`holdout` names the global holdout (`[decisions] holdout`); name this experiment otherwise",
                    None,
                );
            }
            let goal_indexes = self.goal_names(&experiment.goals, declared_goals, name.get_ref());
            let baseline = match &experiment.baseline {
                Some(b) => match arms.iter().position(|a| a.name == *b.get_ref()) {
                    Some(i) => i,
                    None => {
                        self.error(
                            b.span(),
                            format!(
                                "experiment `{}` has no arm `{}` to be its baseline",
                                name.get_ref(),
                                b.get_ref()
                            ),
                            Some(format!(
                                "its arms are: {}",
                                list(arms.iter().map(|a| a.name.as_str()))
                            )),
                        );
                        0
                    }
                },
                None => arms.iter().position(|a| a.control).unwrap_or(0),
            };
            let exposing = match &experiment.offers {
                Some(listed) => {
                    let mut exposing = vec![false; offer_names.len()];
                    for o in listed {
                        match offer_names.iter().position(|n| n == o.get_ref()) {
                            Some(i) => exposing[i] = true,
                            None => self.unknown_offer(o, "an experiment's `offers`", &offer_names),
                        }
                    }
                    exposing
                }
                None => exposing_offers(&arms, offer_names.len(), fallback),
            };
            let min_customers = match &experiment.min_customers {
                Some(n) if *n.get_ref() < 2 => {
                    self.error(
                        n.span(),
                        format!(
                            "min_customers is {}, but a comparison needs at least 2 customers per arm",
                            n.get_ref()
                        ),
                        None,
                    );
                    DEFAULT_MIN_CUSTOMERS
                }
                Some(n) => *n.get_ref(),
                None => DEFAULT_MIN_CUSTOMERS,
            };
            experiments.push(ExperimentDef {
                name: name.get_ref().clone(),
                description: experiment.description.clone(),
                arms,
                total_weight,
                goals: goal_indexes,
                baseline,
                exposing,
                min_customers,
                holdout: false,
            });
        }
        if let Some(holdout) = self.holdout(settings, declared_goals, offer_names.len(), fallback) {
            experiments.push(holdout);
        }

        Decisions {
            offers: offers.into_iter().flatten().collect(),
            experiments,
            fallback,
            remember_decisions,
            context,
            feedback_events,
            redeem_event,
        }
    }

    /// A sticky window: a duration, or `"off"`.
    /// The goals an experiment names, by index into `[goals.*]` (as declared, so a goal
    /// that failed to compile, reported already, still has its index); unknown ones and
    /// repeats are reported.
    fn goal_names(
        &mut self,
        names: &[Spanned<String>],
        declared: &[String],
        experiment: &str,
    ) -> Vec<usize> {
        let mut indexes: Vec<usize> = Vec::new();
        for name in names {
            match declared.iter().position(|g| g == name.get_ref()) {
                Some(i) if indexes.contains(&i) => self.error(
                    name.span(),
                    format!(
                        "experiment `{experiment}` lists goal `{}` twice",
                        name.get_ref()
                    ),
                    None,
                ),
                Some(i) => indexes.push(i),
                None => self.error(
                    name.span(),
                    format!(
                        "experiment `{experiment}` is measured on goal `{}`, which is not declared",
                        name.get_ref()
                    ),
                    Some(format!(
                        "declared goals: {}; declare one as `[goals.{}]` with `event` and `window`",
                        list(declared.iter().map(String::as_str)),
                        name.get_ref()
                    )),
                ),
            }
        }
        indexes
    }

    /// The experiment `[decisions] holdout` makes: a control arm of that percentage of
    /// customers and the rest, measured on `holdout_goals` (default every goal), exposed
    /// by every offer but the fallback.
    fn holdout(
        &mut self,
        settings: &RawDecisions,
        declared_goals: &[String],
        offers: usize,
        fallback: Option<usize>,
    ) -> Option<ExperimentDef> {
        let percent = settings.holdout.as_ref()?;
        let share = *percent.get_ref();
        if !(share > 0.0 && share < 100.0) {
            self.error(
                percent.span(),
                format!("decisions.holdout is {share}, but it must be a percentage above 0 and below 100"),
                Some("for example `holdout = 5`: 5% of customers get no offers, so the uplift of all of them can be measured".into()),
            );
            return None;
        }
        // Hundredths of a percent: `holdout = 2.5` is 250 of 10,000.
        let held = ((share * 100.0).round() as u32).clamp(1, 9_999);
        let goal_indexes = match &settings.holdout_goals {
            Some(names) => self.goal_names(names, declared_goals, HOLDOUT),
            None => (0..declared_goals.len()).collect(),
        };
        let arm = |name: &str, weight: u32, control: bool| ArmDef {
            name: name.to_string(),
            weight,
            control,
            fallback: settings.holdout_fallback.unwrap_or(true),
            offers: None,
            boosts: vec![1.0; offers],
        };
        let mut exposing = vec![true; offers];
        if let Some(f) = fallback {
            exposing[f] = false;
        }
        Some(ExperimentDef {
            name: HOLDOUT.to_string(),
            description: Some(format!(
                "The global holdout: {share}% of customers get no offers{}",
                if settings.holdout_fallback.unwrap_or(true) {
                    " but the fallback"
                } else {
                    ""
                }
            )),
            arms: vec![
                arm(HOLDOUT, held, true),
                arm(HOLDOUT_TREATED, 10_000 - held, false),
            ],
            total_weight: 10_000,
            goals: goal_indexes,
            baseline: 0,
            exposing,
            min_customers: DEFAULT_MIN_CUSTOMERS,
            holdout: true,
        })
    }

    fn sticky(&mut self, value: &Spanned<String>, what: &str) -> u32 {
        if value.get_ref() == "off" {
            return 0;
        }
        match super::duration::parse_duration(value.get_ref()) {
            Ok(s) => s as u32,
            Err(e) => {
                self.error(
                    value.span(),
                    format!("bad duration for {what}: {e}"),
                    Some("a sticky window is a duration such as `1d`, or `\"off\"`".into()),
                );
                0
            }
        }
    }

    fn unknown_offer(&mut self, name: &Spanned<String>, place: &str, offers: &[&str]) {
        self.error(
            name.span(),
            format!("unknown offer `{}` in {place}", name.get_ref()),
            Some(if offers.is_empty() {
                "no offers are declared; add an `[offers.NAME]` table".to_string()
            } else {
                format!("declared offers: {}", list(offers.iter().copied()))
            }),
        );
    }

    /// A feedback event's `offer` and `decision` properties, when it declares them, are
    /// filled in by omnia, so they must be strings.
    /// The properties a feedback event gets filled: `offer`, `decision` and `coupon` (the
    /// code issued or redeemed) as strings, `order_value` (of a redemption) as a number.
    fn feedback_event_properties(&mut self, event: &EventDef, at: &Spanned<String>) {
        for property in &event.properties {
            let (wanted, what) = match property.name.as_str() {
                "offer" => (ValueType::String, "the offer's name as a string"),
                "decision" => (ValueType::String, "the decision id as a string"),
                "coupon" => (ValueType::String, "the coupon code as a string"),
                "order_value" => (ValueType::Number, "a redemption's order value as a number"),
                _ => continue,
            };
            if property.ty != wanted {
                self.error(
                    at.span(),
                    format!(
                        "event type `{}` declares `{}` as {}, but feedback events carry {what}",
                        event.name,
                        property.name,
                        property.ty.name(),
                    ),
                    Some(format!(
                        "declare `{} = \"{}\"`",
                        property.name,
                        wanted.name()
                    )),
                );
            }
        }
    }

    /// A content field's template: text with `{EXPR}` placeholders (a rule expression
    /// over the profile, shown as its value), `{coupon}` (the customer's coupon code for
    /// the offer), and `{{` / `}}` for braces. Errors point into the text.
    fn template(
        &mut self,
        field: &Spanned<String>,
        compiler: &mut Compiler<'_>,
        what: &str,
    ) -> Option<Template> {
        let text = field.get_ref();
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text.char_indices().peekable();
        let before = self.errors.len();
        while let Some((i, ch)) = rest.next() {
            match ch {
                '{' if rest.peek().map(|&(_, c)| c) == Some('{') => {
                    rest.next();
                    literal.push('{');
                }
                '}' if rest.peek().map(|&(_, c)| c) == Some('}') => {
                    rest.next();
                    literal.push('}');
                }
                '{' => {
                    let Some(end) = text[i + 1..].find('}').map(|e| i + 1 + e) else {
                        self.rule_error(
                            field,
                            RuleError::new(
                                i..text.len(),
                                format!("`{{` without its `}}` in {what}"),
                                Some("close the placeholder, or write `{{` for a brace"),
                            ),
                        );
                        return None;
                    };
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    let inner = &text[i + 1..end];
                    if inner.trim() == "coupon" {
                        pieces.push(Piece::Coupon);
                    } else {
                        match compiler.offer_value(inner, &mut Refs::default()) {
                            Ok((expr, true)) => pieces.push(Piece::String(expr)),
                            Ok((expr, false)) => pieces.push(Piece::Number(expr)),
                            Err(mut e) => {
                                // The error's place is within the placeholder.
                                e.span = e.span.start + i + 1..e.span.end + i + 1;
                                self.rule_error(field, e);
                            }
                        }
                    }
                    while rest.peek().is_some_and(|&(j, _)| j <= end) {
                        rest.next();
                    }
                }
                '}' => {
                    self.rule_error(
                        field,
                        RuleError::new(
                            i..i + 1,
                            format!("`}}` without its `{{` in {what}"),
                            Some("write `}}` for a brace"),
                        ),
                    );
                    return None;
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        (self.errors.len() == before).then_some(Template { pieces })
    }

    /// The bits of the channels `listed` (every channel when not given); errors for an
    /// empty list or an unknown channel.
    fn channel_mask(
        &mut self,
        listed: Option<&Spanned<Vec<Spanned<String>>>>,
        channels: &[String],
        what: &str,
        owner: &str,
    ) -> u32 {
        let mut mask = 0u32;
        match listed {
            None => mask = (1u64 << channels.len()).wrapping_sub(1) as u32,
            Some(list_) if list_.get_ref().is_empty() => self.error(
                list_.span(),
                format!("{owner} lists no channels"),
                Some("leave `channels` out to allow every channel".into()),
            ),
            Some(list_) => {
                for c in list_.get_ref() {
                    match channels.iter().position(|x| x == c.get_ref()) {
                        Some(i) => mask |= 1 << i,
                        None => self.error(
                            c.span(),
                            format!("unknown channel `{}` in {what}", c.get_ref()),
                            Some(format!(
                                "declared channels: {}",
                                list(channels.iter().map(String::as_str))
                            )),
                        ),
                    }
                }
            }
        }
        mask
    }

    fn offer(
        &mut self,
        name: &Spanned<String>,
        offer: &RawOffer,
        compiler: &mut Compiler<'_>,
        sticky_default: u32,
    ) -> Option<OfferDef> {
        let channels = compiler.ctx.channels;
        let what = |field: &str| format!("offers.{}.{field}", name.get_ref());
        let errors_before = self.errors.len();
        let mut refs = Refs::default();
        let rule = offer.rule.as_ref().and_then(|rule| {
            match compiler.offer_condition(rule.get_ref(), &mut refs) {
                Ok(expr) => Some((rule.get_ref().clone(), expr)),
                Err(e) => {
                    self.rule_error(rule, e);
                    None
                }
            }
        });
        let channel_mask = self.channel_mask(
            offer.channels.as_ref(),
            channels,
            &what("channels"),
            &format!("offer `{}`", name.get_ref()),
        );
        let number = |this: &mut Self, field: &str, v: &Option<Spanned<f64>>| match v {
            Some(v) if !v.get_ref().is_finite() || *v.get_ref() < 0.0 => {
                this.error(
                    v.span(),
                    format!("{} must be a number of 0 or more", what(field)),
                    None,
                );
                1.0
            }
            Some(v) => *v.get_ref(),
            None => 1.0,
        };
        let value = number(self, "value", &offer.value);
        let weight = number(self, "weight", &offer.weight);
        let propensity = offer.propensity.as_ref().and_then(|p| {
            let found = compiler.ctx.scores.iter().position(|s| s == p.get_ref());
            if found.is_none() {
                self.error(
                    p.span(),
                    format!("unknown score `{}` in {}", p.get_ref(), what("propensity")),
                    Some(format!(
                        "declared scores: {}",
                        list(compiler.ctx.scores.iter().map(String::as_str))
                    )),
                );
            }
            found
        });
        let rank = offer.rank.as_ref().and_then(|rank| {
            let names = OfferNames {
                value,
                weight,
                propensity,
            };
            match compiler.offer_rank(rank.get_ref(), names, &mut Refs::default()) {
                Ok(expr) => Some((rank.get_ref().clone(), expr)),
                Err(e) => {
                    self.rule_error(rank, e);
                    None
                }
            }
        });
        let content = offer.content.as_ref().map(|c| {
            let mut field = |name: &str, text: &Option<Spanned<String>>| {
                text.as_ref()
                    .and_then(|t| self.template(t, compiler, &what(&format!("content.{name}"))))
            };
            ContentDef {
                title: field("title", &c.title),
                text: field("text", &c.text),
                url: field("url", &c.url),
                image: field("image", &c.image),
            }
        });
        let mut caps = Vec::new();
        for cap in &offer.caps {
            let c = cap.get_ref();
            let n = *c.impressions.get_ref();
            if !(1..=255).contains(&n) {
                self.error(
                    c.impressions.span(),
                    format!("a cap allows from 1 to 255 impressions, not {n}"),
                    None,
                );
            }
            let per = self.duration(&c.per, &what("caps.per"));
            let channel = c.channel.as_ref().and_then(|ch| {
                let found = channels.iter().position(|x| x == ch.get_ref());
                if found.is_none() {
                    self.error(
                        ch.span(),
                        format!(
                            "unknown channel `{}` in a cap of offer `{}`",
                            ch.get_ref(),
                            name.get_ref()
                        ),
                        Some(format!(
                            "declared channels: {}",
                            list(channels.iter().map(String::as_str))
                        )),
                    );
                }
                found
            });
            if let Some(per) = per {
                caps.push(Cap {
                    impressions: n,
                    per,
                    channel,
                });
            }
        }
        let (mut cooldown_dismiss, mut cooldown_accept) = (0, 0);
        if let Some(cooldown) = &offer.cooldown {
            if let Some(d) = &cooldown.dismiss {
                cooldown_dismiss = self.duration(d, &what("cooldown.dismiss")).unwrap_or(0);
            }
            if let Some(d) = &cooldown.accept {
                cooldown_accept = self.duration(d, &what("cooldown.accept")).unwrap_or(0);
            }
        }
        let budget = offer.budget.as_ref().and_then(|b| {
            let raw = b.get_ref();
            let (counts, limit) = match (raw.accepts, raw.impressions) {
                (Some(n), None) => (BudgetCounts::Accepts, n),
                (None, Some(n)) => (BudgetCounts::Impressions, n),
                _ => {
                    self.error(
                        b.span(),
                        format!("the budget of offer `{}` must count exactly one of `accepts` or `impressions`", name.get_ref()),
                        Some("for example `budget = { accepts = 10000 }` or `budget = { impressions = 5000, per = \"1d\" }`".into()),
                    );
                    return None;
                }
            };
            if limit == 0 || limit > u32::MAX as u64 {
                self.error(b.span(), format!("a budget must be from 1 to {}", u32::MAX), None);
                return None;
            }
            let per = match &raw.per {
                Some(p) => self.duration(p, &what("budget.per")),
                None => None,
            };
            Some(BudgetDef { counts, limit, per })
        });
        let sticky = match &offer.sticky {
            Some(d) => self.sticky(d, &what("sticky")),
            None => sticky_default,
        };
        let coupon = offer.coupon.as_ref().and_then(|c| {
            let prefix = c.prefix.get_ref();
            let valid_prefix = !prefix.is_empty()
                && prefix.len() <= 16
                && prefix
                    .chars()
                    .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_');
            if !valid_prefix {
                self.error(
                    c.prefix.span(),
                    format!(
                        "coupon prefix `{prefix}` must be 1 to 16 characters of A-Z, 0-9 and `_`"
                    ),
                    Some("coupon codes are read out at tills and typed in; keep them plain".into()),
                );
            }
            let valid = self.duration(&c.valid, &what("coupon.valid"))?;
            if valid == 0 {
                self.error(
                    c.valid.span(),
                    "a coupon must be valid for longer than 0s",
                    None,
                );
            }
            let length = match &c.length {
                None => DEFAULT_COUPON_LENGTH,
                Some(n) => match u8::try_from(*n.get_ref()) {
                    Ok(n) if COUPON_LENGTHS.contains(&n) => n,
                    _ => {
                        self.error(
                            n.span(),
                            format!(
                                "a coupon code's `length` must be 8 to 12 characters, not {}",
                                n.get_ref()
                            ),
                            Some("10, the default, makes a million billion codes; a check character follows them".into()),
                        );
                        DEFAULT_COUPON_LENGTH
                    }
                },
            };
            let redeem_channels = self.channel_mask(
                c.channels.as_ref(),
                channels,
                &what("coupon.channels"),
                &format!("the coupon of offer `{}`", name.get_ref()),
            );
            Some(CouponDef {
                prefix: prefix.clone(),
                valid,
                length,
                channels: redeem_channels,
            })
        });
        (self.errors.len() == errors_before).then(|| OfferDef {
            name: name.get_ref().clone(),
            description: offer.description.clone(),
            rule,
            channels: channel_mask,
            value,
            weight,
            propensity,
            rank,
            priority: offer.priority.unwrap_or(0),
            caps,
            cooldown_dismiss,
            cooldown_accept,
            repeat: offer.repeat.unwrap_or(false),
            budget,
            sticky,
            coupon,
            content,
        })
    }
}
