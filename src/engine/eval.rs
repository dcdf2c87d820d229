//! Evaluating compiled rules against one profile, and predicting when they can change.
//!
//! [`Eval::truth`] and [`Eval::number`] read a profile row at a time `now`. They do not
//! allocate, hash or compare strings: every name was resolved to an index at compile
//! time and every string constant to an integer code.
//!
//! [`Eval::truth_and_next_change`] answers the question the timers need: at what time, with no new
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
use super::top::Top;
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
#[derive(Clone, Copy)]
pub(crate) struct Eval<'a> {
    pub config: &'a Config,
    pub layout: &'a Layout,
    pub rings: &'a [Option<Ring>],
    pub p: &'a [u32],
    pub now: u32,
    /// A decision request's context fields (see [`context_value`]); empty elsewhere.
    pub context: &'a [f64],
    /// Score values already known at `now`, by score index; empty outside decisions.
    /// A decision ranks dozens of offers by the same propensity: computing each score
    /// once instead of per offer is most of a decision's time saved.
    pub scores: &'a [f64],
}

impl<'a> Eval<'a> {
    /// A profile row laid out by `plan`, read at `now`, with no context fields and no
    /// scores computed ahead.
    pub fn of(plan: &'a super::Plan, row: &'a [u32], now: u32) -> Eval<'a> {
        Eval {
            config: &plan.config,
            layout: &plan.layout,
            rings: &plan.rings,
            p: row,
            now,
            context: &[],
            scores: &[],
        }
    }

    /// The same profile, reading `context` for `context.NAME`.
    pub fn with_context(self, context: &'a [f64]) -> Eval<'a> {
        Eval { context, ..self }
    }

    /// The same profile, with its scores computed once, by score index.
    pub fn with_scores(self, scores: &'a [f64]) -> Eval<'a> {
        Eval { scores, ..self }
    }
}

/// How a context field is carried in [`Eval::context`]: numbers as themselves (NaN when
/// absent, so every comparison but `!=` is false, like an unset attribute), strings as
/// their interner code (0 when absent, `u32::MAX` for a string no rule mentions), bools
/// as 1 or 0.
pub(crate) fn context_value(e: &Expr, context: &[f64]) -> f64 {
    let slot = |i: usize, absent: f64| context.get(i).copied().unwrap_or(absent);
    match e {
        Expr::CtxNum(i) => slot(*i, f64::NAN),
        Expr::CtxStr(i) | Expr::CtxBool(i) => slot(*i, 0.0),
        _ => f64::NAN,
    }
}

impl Eval<'_> {
    /// Whether a condition holds now.
    pub fn truth(&self, e: &Expr) -> bool {
        self.condition::<false>(e).0
    }

    /// Whether a condition holds now, and the earliest time after `now` at which it can
    /// change with no event (`None`: not by time alone).
    pub fn truth_and_next_change(&self, e: &Expr) -> (bool, Option<u32>) {
        self.condition::<true>(e)
    }

    pub fn number(&self, e: &Expr) -> f64 {
        self.value::<false>(e).0.v
    }

    /// The value of a score at `now`.
    pub fn score(&self, s: usize) -> f64 {
        self.value::<false>(&Expr::Score(s)).0.v
    }

    fn recheck(&self) -> Option<u32> {
        Some(self.now.saturating_add(self.config.engine.recheck_interval))
    }

    /// One pass over a condition: its truth and, when `NEXT`, when it can next change.
    ///
    /// Conjunctions and disjunctions short-circuit in both: while `a` is false,
    /// `a and b` is false and cannot change before `a` does, so `b` is not looked at;
    /// when both are false it cannot change before both have. The answer stays a lower
    /// bound on the true change time, and fewer customers are woken for nothing.
    fn condition<const NEXT: bool>(&self, e: &Expr) -> (bool, Option<u32>) {
        match e {
            Expr::Bool(b) => (*b, None),
            Expr::Ever(f) => (self.p[self.layout.features[*f]] != 0, None),
            Expr::HasKey(ns) => (self.p[KEY_MASK] & (1 << ns) != 0, None),
            Expr::AttrBool(a) => (self.p[self.layout.attributes[*a].0] != 0, None),
            Expr::CtxBool(_) => (context_value(e, self.context) != 0.0, None),
            Expr::InSegment(s) => {
                let member = self.layout.in_segment(self.p, *s);
                let segment = &self.config.segments[*s];
                let next = if NEXT && segment.time_dependent {
                    self.condition::<true>(&segment.expr).1
                } else {
                    None
                };
                (member, next)
            }
            Expr::Cmp(op, a, b) => {
                let (x, step_a) = self.value::<NEXT>(a);
                let (y, step_b) = self.value::<NEXT>(b);
                let next = if NEXT {
                    earliest(earliest(step_a, step_b), self.crossing(x, y))
                } else {
                    None
                };
                (compare(*op, x.v, y.v), next)
            }
            Expr::StrEq {
                negated,
                left,
                right,
            } => {
                let next = if NEXT {
                    earliest(self.string_next(left), self.string_next(right))
                } else {
                    None
                };
                ((self.string(left) == self.string(right)) != *negated, next)
            }
            Expr::TopHas {
                negated,
                value,
                feature,
                n,
            } => {
                let at = self.layout.features[*feature];
                let top = Top::of(&self.config.features[*feature]);
                let has = top.is_some_and(|t| t.has(self.p, at, self.now, self.string(value), *n));
                let next = if NEXT {
                    earliest(
                        self.string_next(value),
                        top.and_then(|t| t.next_change(self.p, at, self.now)),
                    )
                } else {
                    None
                };
                (has != *negated, next)
            }
            Expr::BoolEq {
                negated,
                left,
                right,
            } => {
                let (a, na) = self.condition::<NEXT>(left);
                let (b, nb) = self.condition::<NEXT>(right);
                ((a == b) != *negated, earliest(na, nb))
            }
            Expr::NumIn {
                negated,
                value,
                items,
            } => {
                let (v, mut next) = self.value::<NEXT>(value);
                if NEXT {
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
                        next = earliest(next, self.recheck());
                    }
                }
                (items.contains(&v.v) != *negated, next)
            }
            Expr::StrIn {
                negated,
                value,
                items,
            } => {
                let next = if NEXT { self.string_next(value) } else { None };
                (items.contains(&self.string(value)) != *negated, next)
            }
            Expr::Not(x) => {
                let (v, next) = self.condition::<NEXT>(x);
                (!v, next)
            }
            Expr::And(a, b) => {
                let (va, na) = self.condition::<NEXT>(a);
                if !va {
                    return (false, na);
                }
                let (vb, nb) = self.condition::<NEXT>(b);
                if !vb {
                    (false, nb)
                } else {
                    (true, earliest(na, nb))
                }
            }
            Expr::Or(a, b) => {
                let (va, na) = self.condition::<NEXT>(a);
                if va {
                    return (true, na);
                }
                let (vb, nb) = self.condition::<NEXT>(b);
                if vb {
                    (true, nb)
                } else {
                    (false, earliest(na, nb))
                }
            }
            _ => (false, None),
        }
    }

    pub(crate) fn string(&self, e: &Expr) -> u32 {
        match e {
            Expr::Str(code) => *code,
            Expr::AttrStr(a) => self.p[self.layout.attributes[*a].0],
            Expr::ValueStr(f) => self.p[self.layout.features[*f]],
            Expr::Top(f) => Top::of(&self.config.features[*f])
                .map_or(0, |t| t.best(self.p, self.layout.features[*f], self.now)),
            Expr::CtxStr(_) => context_value(e, self.context) as u32,
            _ => 0,
        }
    }

    /// When a string value can next change with time alone: only a top's can.
    fn string_next(&self, e: &Expr) -> Option<u32> {
        match e {
            Expr::Top(f) => Top::of(&self.config.features[*f])
                .and_then(|t| t.next_change(self.p, self.layout.features[*f], self.now)),
            _ => None,
        }
    }

    /// One pass over a numeric expression: its value and slope now and, when `NEXT`, the
    /// earliest time after `now` at which it can jump (a step).
    fn value<const NEXT: bool>(&self, e: &Expr) -> (Dual, Option<u32>) {
        let (p, l, now) = (self.p, self.layout, self.now);
        match e {
            Expr::Num(v) => (Dual::constant(*v), None),
            Expr::Window(f) => match &self.rings[*f] {
                Some(ring) => {
                    let at = l.features[*f];
                    let step = if NEXT {
                        ring.next_change(p, at, now)
                    } else {
                        None
                    };
                    (Dual::constant(ring.value(p, at, now)), step)
                }
                None => (Dual::constant(0.0), None),
            },
            Expr::Since(f) => (Dual::since(p[l.features[*f]], now), None),
            Expr::SinceLastSeen => (Dual::since(p[LAST_SEEN], now), None),
            Expr::SinceFirstSeen => (Dual::since(p[FIRST_SEEN], now), None),
            Expr::SinceChannel(c) => (Dual::since(p[l.channel_last_seen(*c)], now), None),
            Expr::ActiveChannels(window) => {
                let mut active = 0;
                let mut step = None;
                for c in 0..self.config.channels.len() {
                    let t = p[l.channel_last_seen(c)];
                    if t != 0 && now.saturating_sub(t) < *window {
                        active += 1;
                        if NEXT {
                            // Counted until its last event leaves the window.
                            step = earliest(step, Some(t.saturating_add(*window)));
                        }
                    }
                }
                (Dual::constant(active as f64), step)
            }
            Expr::CtxNum(_) => (Dual::constant(context_value(e, self.context)), None),
            Expr::ValueNum(f) => {
                let at = l.features[*f];
                // Not seen yet: NaN, as an unset attribute. A value never changes with
                // time, so there is no next change.
                (
                    Dual::constant(if p[at + 2] == 0 {
                        f64::NAN
                    } else {
                        get_f64(p, at)
                    }),
                    None,
                )
            }
            Expr::AttrNum(a) => {
                let at = l.attributes[*a].0;
                // Unset numbers are NaN: every comparison with them is false but `!=`.
                (
                    Dual::constant(if p[at + 2] == 0 {
                        f64::NAN
                    } else {
                        get_f64(p, at)
                    }),
                    None,
                )
            }
            Expr::Score(s) if !NEXT && *s < self.scores.len() => {
                (Dual::constant(self.scores[*s]), None)
            }
            Expr::Score(s) => match &self.config.scores[*s].model {
                ScoreModel::Decayed { half_life, .. } => {
                    let at = l.scores[*s].unwrap_or(0);
                    let v = decayed_at(p, at, *half_life, now);
                    let d = -v * std::f64::consts::LN_2 / *half_life as f64;
                    (
                        Dual {
                            v,
                            d,
                            linear: d == 0.0,
                        },
                        None,
                    )
                }
                ScoreModel::Logistic {
                    intercept,
                    features,
                    ..
                } => {
                    let mut z = Dual::constant(*intercept);
                    let mut step = None;
                    for f in features {
                        let (x, s) = self.value::<NEXT>(&f.expr);
                        z.v += f.weight * x.v;
                        z.d += f.weight * x.d;
                        step = earliest(step, s);
                    }
                    let s = sigmoid(z.v);
                    let d = s * (1.0 - s) * z.d;
                    (
                        Dual {
                            v: s,
                            d,
                            linear: d == 0.0,
                        },
                        step,
                    )
                }
            },
            Expr::Indicator(c) => {
                let (v, next) = self.condition::<NEXT>(c);
                (Dual::constant(if v { 1.0 } else { 0.0 }), next)
            }
            Expr::Neg(x) => {
                let (x, step) = self.value::<NEXT>(x);
                (
                    Dual {
                        v: -x.v,
                        d: -x.d,
                        linear: x.linear,
                    },
                    step,
                )
            }
            Expr::Arith(op, a, b) => {
                let ((a, sa), (b, sb)) = (self.value::<NEXT>(a), self.value::<NEXT>(b));
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
                (Dual { v, d, linear }, earliest(sa, sb))
            }
            Expr::Min(a, b) | Expr::Max(a, b) => {
                let ((a, sa), (b, sb)) = (self.value::<NEXT>(a), self.value::<NEXT>(b));
                let want_min = matches!(e, Expr::Min(..));
                // On a tie, the side that moves the right way next wins.
                // NaN (an unset attribute) wins whichever side it is on.
                let pick_a = if a.v.is_nan() || b.v.is_nan() {
                    a.v.is_nan()
                } else if a.v == b.v {
                    (a.d <= b.d) == want_min
                } else {
                    (a.v < b.v) == want_min
                };
                // Besides each side's own steps, the pick can switch where the sides cross.
                let step = if NEXT {
                    earliest(earliest(sa, sb), self.crossing(a, b))
                } else {
                    None
                };
                (if pick_a { a } else { b }, step)
            }
            _ => {
                let (v, next) = self.condition::<NEXT>(e);
                (Dual::constant(if v { 1.0 } else { 0.0 }), next)
            }
        }
    }

    /// The earliest time two values moving at their slopes can cross.
    fn crossing(&self, a: Dual, b: Dual) -> Option<u32> {
        let gap = a.v - b.v;
        let slope = a.d - b.d;
        let cap = if a.linear && b.linear {
            None
        } else {
            self.recheck()
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
        _ => f64::NAN,
    }
}

fn prop_code(e: &Expr, props: &[PropValue]) -> u32 {
    match e {
        Expr::Str(code) => *code,
        // Unset properties have no code; `u32::MAX` equals no constant.
        Expr::PropStr(i) => match props.get(*i) {
            Some(PropValue::Str { constant, .. }) => *constant,
            _ => u32::MAX,
        },
        _ => u32::MAX,
    }
}
