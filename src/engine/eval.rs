//! Evaluating compiled rules against one profile, and predicting when they can change.
//!
//! [`Eval::truth`] and [`Eval::number`] read a profile row at a time `now`. They do not
//! allocate, hash or compare strings: every name was resolved to an index at compile
//! time and every string constant to an integer code.
//!
//! [`Eval::next_change`] answers the question the timers need: at what time, with no new
//! event, could this condition next become different? It must never answer *later* than
//! the truth (an early answer only costs a re-evaluation). It works on two facts:
//!
//! - step changes: a window's value drops when its oldest non-empty bucket expires, a
//!   channel stops counting as active when its last event leaves the window;
//! - slopes: `since(...)` grows by one per second, so between steps a numeric expression
//!   is `value + slope * t`, carried as a dual number (value and derivative). A
//!   comparison of two such expressions flips where their difference crosses zero,
//!   which is computed exactly when both sides are linear.
//!
//! Where time enters non-linearly (decayed scores, a model score, a product of two
//! `since`), the linear estimate is the tangent: for decays toward zero it is early,
//! and it is capped at `recheck_interval` in every case, so the wait is bounded.

use super::event::PropValue;
use super::profile::{decayed_at, get_f64, Layout, Ring, FIRST_SEEN, KEY_MASK, LAST_SEEN};
use crate::config::rule::{ArithOp, CmpOp, Expr};
use crate::config::{Config, ScoreModel};

/// A value and how fast it changes per second; `linear` is false once time entered in a
/// non-linear way.
#[derive(Debug, Clone, Copy)]
struct Dual {
    v: f64,
    d: f64,
    linear: bool,
}

impl Dual {
    fn constant(v: f64) -> Dual {
        Dual {
            v,
            d: 0.0,
            linear: true,
        }
    }

    /// Time since `t` (seconds; 0 = never, which is infinitely long ago).
    fn since(t: u32, now: u32) -> Dual {
        if t == 0 {
            Dual::constant(f64::INFINITY)
        } else {
            Dual {
                v: now.saturating_sub(t) as f64,
                d: 1.0,
                linear: true,
            }
        }
    }
}

fn earliest(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[inline]
fn compare(op: CmpOp, a: f64, b: f64) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
    }
}

#[inline]
fn arith(op: ArithOp, a: f64, b: f64) -> f64 {
    match op {
        ArithOp::Add => a + b,
        ArithOp::Sub => a - b,
        ArithOp::Mul => a * b,
        ArithOp::Div => a / b,
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// One profile at one moment.
pub(crate) struct Eval<'a> {
    pub config: &'a Config,
    pub layout: &'a Layout,
    pub rings: &'a [Option<Ring>],
    pub p: &'a [u32],
    pub now: u32,
}

impl Eval<'_> {
    pub fn truth(&self, e: &Expr) -> bool {
        match e {
            Expr::Bool(b) => *b,
            Expr::Ever(f) => self.p[self.layout.features[*f]] != 0,
            Expr::HasKey(ns) => self.p[KEY_MASK] & (1 << ns) != 0,
            Expr::AttrBool(a) => self.p[self.layout.attributes[*a].0] != 0,
            Expr::InSegment(s) => self.layout.in_segment(self.p, *s),
            Expr::Cmp(op, a, b) => compare(*op, self.number(a), self.number(b)),
            Expr::StrEq {
                negated,
                left,
                right,
            } => (self.string(left) == self.string(right)) != *negated,
            Expr::BoolEq {
                negated,
                left,
                right,
            } => (self.truth(left) == self.truth(right)) != *negated,
            Expr::NumIn {
                negated,
                value,
                items,
            } => {
                let v = self.number(value);
                items.contains(&v) != *negated
            }
            Expr::StrIn {
                negated,
                value,
                items,
            } => {
                let v = self.string(value);
                items.contains(&v) != *negated
            }
            Expr::Not(x) => !self.truth(x),
            Expr::And(a, b) => self.truth(a) && self.truth(b),
            Expr::Or(a, b) => self.truth(a) || self.truth(b),
            _ => false,
        }
    }

    fn string(&self, e: &Expr) -> u32 {
        match e {
            Expr::Str(code) => *code,
            Expr::AttrStr(a) => self.p[self.layout.attributes[*a].0],
            _ => 0,
        }
    }

    pub fn number(&self, e: &Expr) -> f64 {
        self.dual(e).v
    }

    /// The value of a score at `now`.
    pub fn score(&self, s: usize) -> f64 {
        self.dual(&Expr::Score(s)).v
    }

    fn dual(&self, e: &Expr) -> Dual {
        let (p, l, now) = (self.p, self.layout, self.now);
        match e {
            Expr::Num(v) => Dual::constant(*v),
            Expr::Window(f) => Dual::constant(match &self.rings[*f] {
                Some(ring) => ring.value(p, l.features[*f], now),
                None => 0.0,
            }),
            Expr::Since(f) => Dual::since(p[l.features[*f]], now),
            Expr::SinceLastSeen => Dual::since(p[LAST_SEEN], now),
            Expr::SinceFirstSeen => Dual::since(p[FIRST_SEEN], now),
            Expr::SinceChannel(c) => Dual::since(p[l.channel_last_seen(*c)], now),
            Expr::ActiveChannels(window) => {
                let active = (0..self.config.channels.len())
                    .filter(|&c| {
                        let t = p[l.channel_last_seen(c)];
                        t != 0 && now.saturating_sub(t) < *window
                    })
                    .count();
                Dual::constant(active as f64)
            }
            Expr::AttrNum(a) => {
                let at = l.attributes[*a].0;
                // Unset numbers are NaN: every comparison with them is false but `!=`.
                Dual::constant(if p[at + 2] == 0 {
                    f64::NAN
                } else {
                    get_f64(p, at)
                })
            }
            Expr::Score(s) => match &self.config.scores[*s].model {
                ScoreModel::Decayed { half_life, .. } => {
                    let at = l.scores[*s].unwrap_or(0);
                    let v = decayed_at(p, at, *half_life, now);
                    let d = -v * std::f64::consts::LN_2 / *half_life as f64;
                    Dual {
                        v,
                        d,
                        linear: d == 0.0,
                    }
                }
                ScoreModel::Logistic {
                    intercept,
                    features,
                    ..
                } => {
                    let mut z = Dual::constant(*intercept);
                    for f in features {
                        let x = self.dual(&f.expr);
                        z.v += f.weight * x.v;
                        z.d += f.weight * x.d;
                        z.linear &= x.linear;
                    }
                    let s = sigmoid(z.v);
                    let d = s * (1.0 - s) * z.d;
                    Dual {
                        v: s,
                        d,
                        linear: d == 0.0,
                    }
                }
            },
            Expr::Indicator(c) => Dual::constant(if self.truth(c) { 1.0 } else { 0.0 }),
            Expr::Neg(x) => {
                let x = self.dual(x);
                Dual {
                    v: -x.v,
                    d: -x.d,
                    linear: x.linear,
                }
            }
            Expr::Arith(op, a, b) => {
                let (a, b) = (self.dual(a), self.dual(b));
                let v = arith(*op, a.v, b.v);
                let (d, linear) = match op {
                    ArithOp::Add => (a.d + b.d, a.linear && b.linear),
                    ArithOp::Sub => (a.d - b.d, a.linear && b.linear),
                    ArithOp::Mul => (
                        a.d * b.v + a.v * b.d,
                        a.linear && b.linear && (a.d == 0.0 || b.d == 0.0),
                    ),
                    ArithOp::Div => (
                        (a.d * b.v - a.v * b.d) / (b.v * b.v),
                        a.linear && b.linear && b.d == 0.0,
                    ),
                };
                let d = if v.is_finite() && d.is_finite() {
                    d
                } else {
                    0.0
                };
                Dual { v, d, linear }
            }
            Expr::Min(a, b) | Expr::Max(a, b) => {
                let (a, b) = (self.dual(a), self.dual(b));
                let want_min = matches!(e, Expr::Min(..));
                // On a tie, the side that moves the right way next wins.
                let pick_a = if a.v == b.v {
                    (a.d <= b.d) == want_min
                } else {
                    (a.v < b.v) == want_min
                };
                if pick_a {
                    a
                } else {
                    b
                }
            }
            _ => Dual::constant(if self.truth(e) { 1.0 } else { 0.0 }),
        }
    }

    /// The earliest time after `now` at which a numeric expression can jump.
    fn next_step(&self, e: &Expr) -> Option<u32> {
        let (p, l, now) = (self.p, self.layout, self.now);
        match e {
            Expr::Window(f) => self.rings[*f]
                .as_ref()
                .and_then(|ring| ring.next_change(p, l.features[*f], now)),
            Expr::ActiveChannels(window) => (0..self.config.channels.len())
                .filter_map(|c| {
                    let t = p[l.channel_last_seen(c)];
                    (t != 0 && now.saturating_sub(t) < *window).then(|| t.saturating_add(*window))
                })
                .min(),
            Expr::Score(s) => match &self.config.scores[*s].model {
                ScoreModel::Logistic { features, .. } => features
                    .iter()
                    .map(|f| self.next_step(&f.expr))
                    .fold(None, earliest),
                ScoreModel::Decayed { .. } => None,
            },
            Expr::Indicator(c) => self.next_change(c),
            Expr::Neg(x) => self.next_step(x),
            Expr::Arith(_, a, b) => earliest(self.next_step(a), self.next_step(b)),
            Expr::Min(a, b) | Expr::Max(a, b) => {
                // Besides each side's own steps, the pick can switch where the sides cross.
                let crossing = self.crossing(a, b);
                earliest(earliest(self.next_step(a), self.next_step(b)), crossing)
            }
            _ => None,
        }
    }

    /// For a comparison: the earliest time its sides' difference can cross zero, from
    /// their slopes alone.
    fn crossing(&self, a: &Expr, b: &Expr) -> Option<u32> {
        let (a, b) = (self.dual(a), self.dual(b));
        let gap = a.v - b.v;
        let slope = a.d - b.d;
        let recheck = self.now.saturating_add(self.config.engine.recheck_interval);
        let cap = if a.linear && b.linear {
            None
        } else {
            Some(recheck)
        };
        if !gap.is_finite() || slope == 0.0 || !slope.is_finite() {
            return cap;
        }
        let t = -gap / slope;
        let crossing = if t >= 0.0 {
            // `floor` keeps it early; at the instant of equality the next call asks again
            // for one second later, where a strict comparison flips.
            Some(self.now.saturating_add((t.floor() as u32).max(1)))
        } else {
            None
        };
        earliest(crossing, cap)
    }

    /// The earliest time after `now` at which the condition can change with no event.
    pub fn next_change(&self, e: &Expr) -> Option<u32> {
        match e {
            Expr::Cmp(_, a, b) => earliest(
                earliest(self.next_step(a), self.next_step(b)),
                self.crossing(a, b),
            ),
            Expr::NumIn { value, items, .. } => {
                let v = self.dual(value);
                let mut next = self.next_step(value);
                if v.d != 0.0 && v.v.is_finite() {
                    for item in items {
                        let t = (item - v.v) / v.d;
                        if t >= 0.0 {
                            next = earliest(
                                next,
                                Some(self.now.saturating_add((t.floor() as u32).max(1))),
                            );
                        }
                    }
                }
                if !v.linear {
                    next = earliest(
                        next,
                        Some(self.now.saturating_add(self.config.engine.recheck_interval)),
                    );
                }
                next
            }
            Expr::InSegment(s) => {
                let segment = &self.config.segments[*s];
                if segment.time_dependent {
                    self.next_change(&segment.expr)
                } else {
                    None
                }
            }
            Expr::BoolEq { left, right, .. } | Expr::And(left, right) | Expr::Or(left, right) => {
                earliest(self.next_change(left), self.next_change(right))
            }
            Expr::Not(x) => self.next_change(x),
            _ => None,
        }
    }
}

/// Whether an event's properties pass a `where` filter.
pub(crate) fn filter_matches(e: &Expr, props: &[PropValue]) -> bool {
    match e {
        Expr::Bool(b) => *b,
        Expr::PropBool(i) => matches!(props.get(*i), Some(PropValue::Bool(true))),
        Expr::Cmp(op, a, b) => compare(*op, prop_number(a, props), prop_number(b, props)),
        Expr::StrEq {
            negated,
            left,
            right,
        } => (prop_code(left, props) == prop_code(right, props)) != *negated,
        Expr::BoolEq {
            negated,
            left,
            right,
        } => (filter_matches(left, props) == filter_matches(right, props)) != *negated,
        Expr::NumIn {
            negated,
            value,
            items,
        } => items.contains(&prop_number(value, props)) != *negated,
        Expr::StrIn {
            negated,
            value,
            items,
        } => items.contains(&prop_code(value, props)) != *negated,
        Expr::Not(x) => !filter_matches(x, props),
        Expr::And(a, b) => filter_matches(a, props) && filter_matches(b, props),
        Expr::Or(a, b) => filter_matches(a, props) || filter_matches(b, props),
        _ => false,
    }
}

fn prop_number(e: &Expr, props: &[PropValue]) -> f64 {
    match e {
        Expr::Num(v) => *v,
        Expr::PropNum(i) => match props.get(*i) {
            Some(PropValue::Num(v)) => *v,
            _ => f64::NAN,
        },
        Expr::Neg(x) => -prop_number(x, props),
        Expr::Arith(op, a, b) => arith(*op, prop_number(a, props), prop_number(b, props)),
        Expr::Min(a, b) => prop_number(a, props).min(prop_number(b, props)),
        Expr::Max(a, b) => prop_number(a, props).max(prop_number(b, props)),
        _ => f64::NAN,
    }
}

fn prop_code(e: &Expr, props: &[PropValue]) -> u32 {
    match e {
        Expr::Str(code) => *code,
        // Unset properties have no code; `u32::MAX` equals no constant.
        Expr::PropStr(i) => match props.get(*i) {
            Some(PropValue::Str(code)) => *code,
            _ => u32::MAX,
        },
        _ => u32::MAX,
    }
}
