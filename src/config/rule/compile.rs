//! The rule compiler: AST to [`Expr`], with names resolved and types checked.
//!
//! Besides the expression, compiling a rule records what it reads ([`Refs`]): which
//! profile aggregates (features), segments, scores, attributes and identity facts. The
//! config uses these to lay out profiles (one slot per distinct aggregate, shared by
//! every rule that reads it) and to build the dependency index that tells the engine
//! which segments an event can change.

use std::collections::{BTreeSet, HashMap};

use super::parser::{Call, CmpOp, Node, NodeKind, Selector};
use super::{Expr, Interner, RuleError};
use crate::config::{Aggregate, AttributeDef, EventDef, EventMatch, Feature, ValueType};

/// The names a rule can refer to.
pub struct RuleContext<'a> {
    pub events: &'a [EventDef],
    pub channels: &'a [String],
    pub namespaces: &'a [String],
    pub attributes: &'a [AttributeDef],
    pub segments: &'a [String],
    pub scores: &'a [String],
    /// Context fields a channel may send with a decision request (`context.NAME`).
    pub context: &'a [AttributeDef],
    pub window_buckets: u32,
}

/// The constants an offer's ranking expression can name: `value`, `weight` and
/// `propensity` (the offer's propensity score, or 1 when it names none).
#[derive(Debug, Clone, Copy)]
pub struct OfferNames {
    pub value: f64,
    pub weight: f64,
    pub propensity: Option<usize>,
}

/// What a compiled expression reads.
#[derive(Debug, Default, Clone)]
pub struct Refs {
    pub features: BTreeSet<usize>,
    pub segments: BTreeSet<usize>,
    pub scores: BTreeSet<usize>,
    /// Reads profile attributes.
    pub attributes: bool,
    /// Reads which identity namespaces the customer has keys in.
    pub keys: bool,
    /// Reads first seen, last seen or per-channel activity, which every event updates.
    pub activity: bool,
}

impl Refs {
    pub fn merge(&mut self, other: &Refs) {
        self.features.extend(other.features.iter().copied());
        self.segments.extend(other.segments.iter().copied());
        self.scores.extend(other.scores.iter().copied());
        self.attributes |= other.attributes;
        self.keys |= other.keys;
        self.activity |= other.activity;
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Num,
    Bool,
    /// An attribute's string value (codes of the shared interner).
    AttrStr,
    /// An event property's string value (codes of that property's constant table).
    PropStr {
        event: usize,
        property: usize,
    },
    /// A string literal, coded once we know what it is compared with.
    Literal(String),
}

impl Ty {
    fn describe(&self) -> &'static str {
        match self {
            Ty::Num => "a number",
            Ty::Bool => "a condition (true or false)",
            Ty::AttrStr | Ty::PropStr { .. } | Ty::Literal(_) => "a string",
        }
    }
}

/// Where a name is looked up: in the profile, or in the event a `where` filter tests.
#[derive(Clone, Copy)]
enum Scope {
    Profile,
    Filter {
        event: usize,
    },
    /// An offer's eligibility rule (`context.NAME` allowed) or, with names, its ranking.
    Offer {
        names: Option<OfferNames>,
    },
}

/// Compiles rules against one config, accumulating the features they read.
pub struct Compiler<'a> {
    pub ctx: RuleContext<'a>,
    pub interner: &'a Interner,
    /// Every distinct aggregate read by any rule, in first-use order.
    pub features: Vec<Feature>,
    feature_index: HashMap<String, usize>,
    /// String constants compared with each event property: `[event][property]`.
    pub property_constants: Vec<Vec<Vec<String>>>,
}

impl<'a> Compiler<'a> {
    pub fn new(ctx: RuleContext<'a>, interner: &'a Interner) -> Self {
        let property_constants = ctx
            .events
            .iter()
            .map(|e| vec![Vec::new(); e.properties.len()])
            .collect();
        Compiler {
            ctx,
            interner,
            features: Vec::new(),
            feature_index: HashMap::new(),
            property_constants,
        }
    }

    /// Compiles a condition (segment rules, filters): the rule must be true or false.
    pub fn condition(&mut self, text: &str, refs: &mut Refs) -> Result<Expr, RuleError> {
        let node = super::parse(text)?;
        let (expr, ty) = self.typed(&node, text, Scope::Profile, refs)?;
        if ty != Ty::Bool {
            return Err(RuleError::new(
                node.span.clone(),
                format!(
                    "this rule is {}, but a segment rule must be a condition",
                    ty.describe()
                ),
                Some("compare it with something, for example `... > 0`"),
            ));
        }
        Ok(expr)
    }

    /// Compiles an offer's eligibility rule: a condition that may read `context.NAME`.
    pub fn offer_condition(&mut self, text: &str, refs: &mut Refs) -> Result<Expr, RuleError> {
        let node = super::parse(text)?;
        let (expr, ty) = self.typed(&node, text, Scope::Offer { names: None }, refs)?;
        if ty != Ty::Bool {
            return Err(RuleError::new(
                node.span.clone(),
                format!(
                    "this rule is {}, but an eligibility rule must be a condition",
                    ty.describe()
                ),
                Some("compare it with something, for example `... > 0`"),
            ));
        }
        Ok(expr)
    }

    /// Compiles a content placeholder: a rule expression over the profile whose value is
    /// shown, a number or a string (`Some(true)` for a string).
    pub fn offer_value(&mut self, text: &str, refs: &mut Refs) -> Result<(Expr, bool), RuleError> {
        let node = super::parse(text)?;
        match self.typed(&node, text, Scope::Offer { names: None }, refs)? {
            (e, Ty::Num) => Ok((e, false)),
            (e, Ty::AttrStr) => Ok((e, true)),
            (_, Ty::Literal(s)) => Ok((Expr::Str(self.interner.pin(&s)), true)),
            (_, other) => Err(RuleError::new(
                node.span.clone(),
                format!("a placeholder shows a number or a string, and this is {}", other.describe()),
                Some("a condition has no words of its own; show a value, for example `{count(purchase, 30d)}`"),
            )),
        }
    }

    /// Compiles an offer's ranking expression, which may also name `value`, `weight`
    /// and `propensity`.
    pub fn offer_rank(
        &mut self,
        text: &str,
        names: OfferNames,
        refs: &mut Refs,
    ) -> Result<Expr, RuleError> {
        self.number_in(text, Scope::Offer { names: Some(names) }, refs)
    }

    /// Compiles a condition on the properties of one event type, as a `where` filter
    /// inside an aggregate is (a goal's `where`).
    pub fn filter(&mut self, event: usize, text: &str) -> Result<Expr, RuleError> {
        let node = super::parse(text)?;
        self.filter_node(
            &node,
            text,
            event,
            Some("compare a property with something, for example `amount > 50`"),
        )
    }

    /// A parsed `where` filter on `event`'s properties, which must be a condition.
    fn filter_node(
        &mut self,
        node: &Node,
        text: &str,
        event: usize,
        help: Option<&str>,
    ) -> Result<Expr, RuleError> {
        let (expr, ty) = self.typed(node, text, Scope::Filter { event }, &mut Refs::default())?;
        if ty != Ty::Bool {
            return Err(RuleError::new(
                node.span.clone(),
                format!(
                    "a `where` filter must be a condition, found {}",
                    ty.describe()
                ),
                help,
            ));
        }
        Ok(expr)
    }

    /// Compiles a numeric expression (score features).
    pub fn number(&mut self, text: &str, refs: &mut Refs) -> Result<Expr, RuleError> {
        self.number_in(text, Scope::Profile, refs)
    }

    fn number_in(&mut self, text: &str, scope: Scope, refs: &mut Refs) -> Result<Expr, RuleError> {
        let node = super::parse(text)?;
        let (expr, ty) = self.typed(&node, text, scope, refs)?;
        match ty {
            Ty::Num => Ok(expr),
            // A condition counts as 1 or 0, so `in(vip)` can be a model feature.
            Ty::Bool => Ok(Expr::Indicator(Box::new(expr))),
            other => Err(RuleError::new(
                node.span.clone(),
                format!("expected a number here, found {}", other.describe()),
                None,
            )),
        }
    }

    fn typed(
        &mut self,
        node: &Node,
        text: &str,
        scope: Scope,
        refs: &mut Refs,
    ) -> Result<(Expr, Ty), RuleError> {
        let span = node.span.clone();
        Ok(match &node.kind {
            NodeKind::Number(n) => (Expr::Num(*n), Ty::Num),
            NodeKind::Duration(d) => (Expr::Num(*d as f64), Ty::Num),
            NodeKind::Bool(b) => (Expr::Bool(*b), Ty::Bool),
            NodeKind::Str(s) => (Expr::Str(0), Ty::Literal(s.clone())),
            NodeKind::Property(name) => match scope {
                Scope::Filter { event } => {
                    let def = &self.ctx.events[event];
                    let Some(index) = def.properties.iter().position(|p| p.name == *name) else {
                        return Err(RuleError::new(
                            span,
                            format!("event type `{}` has no property `{name}`", def.name),
                            Some(&format!(
                                "its properties are: {}",
                                list(def.properties.iter().map(|p| p.name.as_str()))
                            )),
                        ));
                    };
                    match def.properties[index].ty {
                        ValueType::Number => (Expr::PropNum(index), Ty::Num),
                        ValueType::Bool => (Expr::PropBool(index), Ty::Bool),
                        ValueType::String => (
                            Expr::PropStr(index),
                            Ty::PropStr {
                                event,
                                property: index,
                            },
                        ),
                    }
                }
                Scope::Offer { names: Some(names) }
                    if matches!(name.as_str(), "value" | "weight" | "propensity") =>
                {
                    match name.as_str() {
                        "value" => (Expr::Num(names.value), Ty::Num),
                        "weight" => (Expr::Num(names.weight), Ty::Num),
                        _ => match names.propensity {
                            Some(score) => {
                                refs.scores.insert(score);
                                (Expr::Score(score), Ty::Num)
                            }
                            None => (Expr::Num(1.0), Ty::Num),
                        },
                    }
                }
                Scope::Profile | Scope::Offer { .. } => {
                    let help = if let Scope::Offer { names: None } = scope {
                        "an eligibility rule reads the profile (`attr.NAME`, `count(...)`, ...) and the request (`context.NAME`); `value`, `weight` and `propensity` are only known in `rank`".to_string()
                    } else if let Scope::Offer { .. } = scope {
                        "a ranking expression can name `value`, `weight` and `propensity`, the profile (`attr.NAME`, `score(NAME)`, ...) and the request (`context.NAME`)".to_string()
                    } else if self.ctx.attributes.iter().any(|a| a.name == *name) {
                        format!("for the profile attribute write `attr.{name}`")
                    } else {
                        "bare names are event properties, used inside `where` filters; profile attributes are written `attr.NAME`".to_string()
                    };
                    return Err(RuleError::new(
                        span,
                        format!("unknown name `{name}`"),
                        Some(&help),
                    ));
                }
            },
            NodeKind::Context(name) => {
                if !matches!(scope, Scope::Offer { .. }) {
                    return Err(RuleError::new(
                        span,
                        format!("`context.{}` is only known to offer rules", name.text),
                        Some("the context is what a channel sends with a decision request; segments and scores describe the customer alone"),
                    ));
                }
                let index = find(
                    name,
                    "context field",
                    "context fields (`[decisions.context]`)",
                    self.ctx.context.iter().map(|a| a.name.as_str()),
                )?;
                match self.ctx.context[index].ty {
                    ValueType::Number => (Expr::CtxNum(index), Ty::Num),
                    ValueType::Bool => (Expr::CtxBool(index), Ty::Bool),
                    // Context strings are coded by the shared interner, like attributes.
                    ValueType::String => (Expr::CtxStr(index), Ty::AttrStr),
                }
            }
            NodeKind::Attr(name) if matches!(scope, Scope::Filter { .. }) => {
                return Err(RuleError::new(
                    span,
                    format!("a `where` filter can only test the event's own properties, not the profile attribute `{}`", name.text),
                    Some("move the attribute test out of the filter and join it with `and`"),
                ));
            }
            NodeKind::Attr(name) => {
                let index = find(
                    name,
                    "attribute",
                    "attributes",
                    self.ctx.attributes.iter().map(|a| a.name.as_str()),
                )?;
                refs.attributes = true;
                match self.ctx.attributes[index].ty {
                    ValueType::Number => (Expr::AttrNum(index), Ty::Num),
                    ValueType::Bool => (Expr::AttrBool(index), Ty::Bool),
                    ValueType::String => (Expr::AttrStr(index), Ty::AttrStr),
                }
            }
            NodeKind::Neg(inner) => {
                let e = self.expect_num(inner, text, scope, refs)?;
                (Expr::Neg(Box::new(e)), Ty::Num)
            }
            NodeKind::Arith(op, a, b) => {
                let a = self.expect_num(a, text, scope, refs)?;
                let b = self.expect_num(b, text, scope, refs)?;
                (Expr::Arith(*op, Box::new(a), Box::new(b)), Ty::Num)
            }
            NodeKind::Not(inner) => {
                let e = self.expect_bool(inner, text, scope, refs)?;
                (Expr::Not(Box::new(e)), Ty::Bool)
            }
            NodeKind::And(a, b) | NodeKind::Or(a, b) => {
                let a = self.expect_bool(a, text, scope, refs)?;
                let b = self.expect_bool(b, text, scope, refs)?;
                let e = if matches!(node.kind, NodeKind::And(..)) {
                    Expr::And(Box::new(a), Box::new(b))
                } else {
                    Expr::Or(Box::new(a), Box::new(b))
                };
                (e, Ty::Bool)
            }
            NodeKind::Compare(op, a, b) => {
                (self.compare(*op, a, b, span, text, scope, refs)?, Ty::Bool)
            }
            NodeKind::InList {
                value,
                items,
                negated,
            } => {
                let (value_expr, ty) = self.typed(value, text, scope, refs)?;
                let negated = *negated;
                match ty {
                    Ty::Num => {
                        let mut numbers = Vec::new();
                        for item in items {
                            match item.kind {
                                NodeKind::Number(n) => numbers.push(n),
                                NodeKind::Duration(d) => numbers.push(d as f64),
                                _ => return Err(RuleError::new(item.span.clone(), "expected a number in this list, because the value on the left is a number", None)),
                            }
                        }
                        (Expr::NumIn { negated, value: Box::new(value_expr), items: numbers }, Ty::Bool)
                    }
                    Ty::AttrStr | Ty::PropStr { .. } => {
                        let mut codes = Vec::new();
                        for item in items {
                            let NodeKind::Str(s) = &item.kind else {
                                return Err(RuleError::new(item.span.clone(), "expected a string in this list, because the value on the left is a string", None));
                            };
                            codes.push(self.code(&ty, s));
                        }
                        (Expr::StrIn { negated, value: Box::new(value_expr), items: codes }, Ty::Bool)
                    }
                    other => {
                        return Err(RuleError::new(
                            value.span.clone(),
                            format!("`in [...]` needs a number or a string attribute or property on its left, found {}", other.describe()),
                            None,
                        ))
                    }
                }
            }
            NodeKind::Call(call) => self.call(call, span, text, scope, refs)?,
            NodeKind::InTop {
                value,
                list,
                negated,
            } => {
                let NodeKind::Call(Call::Top(selector, window, count)) = &list.kind else {
                    unreachable!("the parser makes `in top(...)` only of a top call");
                };
                let n = match count {
                    None => 1,
                    Some((n, span)) => top_count(*n, span)?,
                };
                let (top, _) = self.call(
                    &Call::Top(selector.clone(), *window, None),
                    list.span.clone(),
                    text,
                    scope,
                    refs,
                )?;
                let Expr::Top(feature) = top else {
                    unreachable!("a top call compiles to Expr::Top");
                };
                let value_expr = match self.typed(value, text, scope, refs)? {
                    (e, Ty::AttrStr) => e,
                    (_, Ty::Literal(s)) => Expr::Str(self.code(&Ty::AttrStr, &s)),
                    (_, other) => {
                        return Err(RuleError::new(
                            value.span.clone(),
                            format!(
                                "`in top(...)` needs a string on its left, found {}",
                                other.describe()
                            ),
                            Some("the list holds values of a string property"),
                        ))
                    }
                };
                (
                    Expr::TopHas {
                        negated: *negated,
                        value: Box::new(value_expr),
                        feature,
                        n,
                    },
                    Ty::Bool,
                )
            }
        })
    }

    fn expect_num(
        &mut self,
        node: &Node,
        text: &str,
        scope: Scope,
        refs: &mut Refs,
    ) -> Result<Expr, RuleError> {
        match self.typed(node, text, scope, refs)? {
            (e, Ty::Num) => Ok(e),
            (_, other) => Err(RuleError::new(
                node.span.clone(),
                format!("expected a number, found {}", other.describe()),
                None,
            )),
        }
    }

    fn expect_bool(
        &mut self,
        node: &Node,
        text: &str,
        scope: Scope,
        refs: &mut Refs,
    ) -> Result<Expr, RuleError> {
        match self.typed(node, text, scope, refs)? {
            (e, Ty::Bool) => Ok(e),
            (_, other) => Err(RuleError::new(
                node.span.clone(),
                format!("expected a condition, found {}", other.describe()),
                Some("compare it, for example `count(purchase, 30d) > 0`"),
            )),
        }
    }

    /// The code of a string constant in the domain of `ty`.
    fn code(&mut self, ty: &Ty, value: &str) -> u32 {
        match ty {
            Ty::PropStr { event, property } => {
                let table = &mut self.property_constants[*event][*property];
                match table.iter().position(|c| c == value) {
                    Some(i) => i as u32 + 1,
                    None => {
                        table.push(value.to_string());
                        table.len() as u32
                    }
                }
            }
            // Compiled into expressions: the code must live as long as the config.
            _ => self.interner.pin(value),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn compare(
        &mut self,
        op: CmpOp,
        a: &Node,
        b: &Node,
        span: std::ops::Range<usize>,
        text: &str,
        scope: Scope,
        refs: &mut Refs,
    ) -> Result<Expr, RuleError> {
        let (ea, ta) = self.typed(a, text, scope, refs)?;
        let (eb, tb) = self.typed(b, text, scope, refs)?;
        let equality = matches!(op, CmpOp::Eq | CmpOp::Ne);
        let negated = op == CmpOp::Ne;
        match (&ta, &tb) {
            (Ty::Num, Ty::Num) => Ok(Expr::Cmp(op, Box::new(ea), Box::new(eb))),
            (Ty::Bool, Ty::Bool) if equality => Ok(Expr::BoolEq { negated, left: Box::new(ea), right: Box::new(eb) }),
            (Ty::AttrStr | Ty::PropStr { .. }, Ty::Literal(s)) | (Ty::Literal(s), Ty::AttrStr | Ty::PropStr { .. }) if equality => {
                let domain = if matches!(ta, Ty::Literal(_)) { &tb } else { &ta };
                let code = self.code(&domain.clone(), s);
                let value = if matches!(ta, Ty::Literal(_)) { eb } else { ea };
                Ok(Expr::StrEq { negated, left: Box::new(value), right: Box::new(Expr::Str(code)) })
            }
            (Ty::AttrStr, Ty::AttrStr) if equality => Ok(Expr::StrEq { negated, left: Box::new(ea), right: Box::new(eb) }),
            (Ty::AttrStr | Ty::PropStr { .. } | Ty::Literal(_), Ty::AttrStr | Ty::PropStr { .. } | Ty::Literal(_)) if !equality => Err(RuleError::new(
                span,
                format!("strings can only be compared with `==` and `!=`, not `{}`", op.symbol()),
                None,
            )),
            (Ty::PropStr { .. }, Ty::PropStr { .. } | Ty::AttrStr) | (Ty::AttrStr, Ty::PropStr { .. }) => Err(RuleError::new(
                span,
                "an event property can only be compared with a string constant",
                Some("for example `category == \"shoes\"`"),
            )),
                        (Ty::Literal(_), Ty::Literal(_)) => Err(RuleError::new(
                span,
                "both sides are string constants, so this comparison never changes",
                Some("compare an attribute (`attr.NAME`) or, in a filter, a property with a string"),
            )),
            (Ty::Bool, Ty::Bool) => Err(RuleError::new(span, format!("conditions can only be compared with `==` and `!=`, not `{}`", op.symbol()), None)),
            _ => Err(RuleError::new(
                span,
                format!("cannot compare {} with {}", ta.describe(), tb.describe()),
                Some("both sides of a comparison must be numbers (durations count as seconds), strings or conditions"),
            )),
        }
    }

    /// The event type and property index a selector names, for a function that needs
    /// one (`sum`, `first`, `last`): `missing` when it names none, with `example`.
    fn property_of(
        &self,
        selector: &Selector,
        matcher: &EventMatch,
        missing: &str,
        example: &str,
        function: &str,
    ) -> Result<(usize, usize), RuleError> {
        let Some(property) = &selector.property else {
            return Err(RuleError::new(
                selector.event.span.clone(),
                missing,
                Some(&format!(
                    "write `{function}({}.PROPERTY{})`, for example `{example}`",
                    selector.event.text,
                    if function == "sum" { ", ..." } else { "" }
                )),
            ));
        };
        let Some(event) = matcher.event else {
            return Err(RuleError::new(
                selector.event.span.clone(),
                format!("{function} needs a specific event type, not `any`"),
                None,
            ));
        };
        let def = &self.ctx.events[event];
        let Some(index) = def.properties.iter().position(|p| p.name == property.text) else {
            return Err(RuleError::new(
                property.span.clone(),
                format!(
                    "event type `{}` has no property `{}`",
                    def.name, property.text
                ),
                Some(&format!(
                    "its properties are: {}",
                    list(def.properties.iter().map(|p| p.name.as_str()))
                )),
            ));
        };
        Ok((event, index))
    }

    fn call(
        &mut self,
        call: &Call,
        span: std::ops::Range<usize>,
        text: &str,
        scope: Scope,
        refs: &mut Refs,
    ) -> Result<(Expr, Ty), RuleError> {
        if let Scope::Filter { .. } = scope {
            return Err(RuleError::new(
                span,
                "a `where` filter can only test the event's own properties",
                Some("move this condition out of the filter and join it with `and`"),
            ));
        }
        let label = text.get(span.clone()).unwrap_or("").to_string();
        Ok(match call {
            Call::Count(selector, window) | Call::Sum(selector, window) => {
                let is_sum = matches!(call, Call::Sum(..));
                let matcher = self.event_match(selector, text, refs)?;
                let aggregate = if is_sum {
                    let (event, index) = self.property_of(
                        selector,
                        &matcher,
                        "sum needs a property to add up",
                        "sum(purchase.amount, 90d)",
                        "sum",
                    )?;
                    let def = &self.ctx.events[event];
                    let property = selector.property.as_ref().expect("checked");
                    if def.properties[index].ty != ValueType::Number {
                        return Err(RuleError::new(
                            property.span.clone(),
                            format!(
                                "property `{}` of `{}` is not a number, so it cannot be summed",
                                property.text, def.name
                            ),
                            None,
                        ));
                    }
                    Aggregate::Sum(index)
                } else {
                    if let Some(property) = &selector.property {
                        return Err(RuleError::new(
                            property.span.clone(),
                            "count takes an event type, not a property",
                            Some("to add up a property use `sum(event.property, window)`"),
                        ));
                    }
                    Aggregate::Count
                };
                let buckets = self.ctx.window_buckets;
                if *window % buckets as u64 != 0 {
                    return Err(RuleError::new(span, format!("a window of {} cannot be split into {buckets} buckets of whole seconds", crate::config::duration::format_duration(*window)), Some(&format!("use a window that is a multiple of {buckets} seconds, or change `engine.window_buckets`"))));
                }
                let feature = Feature::Window {
                    matcher,
                    aggregate,
                    window: *window as u32,
                    bucket_width: (*window / buckets as u64) as u32,
                    buckets,
                    label,
                };
                let id = self.feature(feature);
                refs.features.insert(id);
                (Expr::Window(id), Ty::Num)
            }
            Call::Since(selector) | Call::Ever(selector) => {
                let ever = matches!(call, Call::Ever(..));
                if let Some(property) = &selector.property {
                    return Err(RuleError::new(
                        property.span.clone(),
                        "since and ever take an event type, not a property",
                        None,
                    ));
                }
                if selector.event.text == "first_seen" || selector.event.text == "any" {
                    if selector.filter.is_some() {
                        return Err(RuleError::new(
                            selector.event.span.clone(),
                            format!(
                                "`{}` cannot have a `where` filter: it has no properties",
                                selector.event.text
                            ),
                            None,
                        ));
                    }
                    refs.activity = true;
                    let since = if selector.event.text == "first_seen" {
                        if selector.channel.is_some() {
                            return Err(RuleError::new(
                                selector.event.span.clone(),
                                "`first_seen` cannot be narrowed to a channel",
                                None,
                            ));
                        }
                        Expr::SinceFirstSeen
                    } else {
                        match &selector.channel {
                            Some(channel) => Expr::SinceChannel(self.channel(channel)?),
                            None => Expr::SinceLastSeen,
                        }
                    };
                    return Ok(if ever {
                        (
                            Expr::Cmp(
                                CmpOp::Lt,
                                Box::new(since),
                                Box::new(Expr::Num(f64::INFINITY)),
                            ),
                            Ty::Bool,
                        )
                    } else {
                        (since, Ty::Num)
                    });
                }
                let matcher = self.event_match(selector, text, refs)?;
                let id = self.feature(Feature::LastSeen { matcher, label });
                refs.features.insert(id);
                if ever {
                    (Expr::Ever(id), Ty::Bool)
                } else {
                    (Expr::Since(id), Ty::Num)
                }
            }
            Call::First(selector) | Call::Last(selector) => {
                let last = matches!(call, Call::Last(..));
                let function = if last { "last" } else { "first" };
                let matcher = self.event_match(selector, text, refs)?;
                let (event, index) = self.property_of(
                    selector,
                    &matcher,
                    &format!("{function} needs a property whose value it keeps"),
                    &format!("{function}(purchase.color)"),
                    function,
                )?;
                let def = &self.ctx.events[event];
                let ty = def.properties[index].ty;
                if ty == ValueType::Bool {
                    let property = selector.property.as_ref().expect("checked");
                    return Err(RuleError::new(
                        property.span.clone(),
                        format!(
                            "property `{}` of `{}` is a bool; {function} keeps a string or a number",
                            property.text, def.name
                        ),
                        Some(&format!(
                            "to know whether such an event came, use `ever({} where {})`",
                            def.name, property.text
                        )),
                    ));
                }
                let id = self.feature(Feature::Value {
                    matcher,
                    property: index,
                    ty,
                    last,
                    label,
                });
                refs.features.insert(id);
                if ty == ValueType::Number {
                    (Expr::ValueNum(id), Ty::Num)
                } else {
                    (Expr::ValueStr(id), Ty::AttrStr)
                }
            }
            Call::Top(selector, window, count) => {
                if let Some((_, span)) = count {
                    return Err(RuleError::new(
                        span.clone(),
                        "`top(..., N)` is a list of values: test it with `in`",
                        Some("for example `attr.favourite in top(product_view.category, 30d, 3)`; without N, `top(...)` is the most frequent value"),
                    ));
                }
                let matcher = self.event_match(selector, text, refs)?;
                let (event, index) = self.property_of(
                    selector,
                    &matcher,
                    "top needs the property whose values it counts",
                    "top(product_view.category, 30d)",
                    "top",
                )?;
                let def = &self.ctx.events[event];
                if def.properties[index].ty != ValueType::String {
                    let property = selector.property.as_ref().expect("checked");
                    return Err(RuleError::new(
                        property.span.clone(),
                        format!(
                            "property `{}` of `{}` is not a string; top counts the values of a string property",
                            property.text, def.name
                        ),
                        None,
                    ));
                }
                let buckets = self.ctx.window_buckets;
                if *window % buckets as u64 != 0 {
                    return Err(RuleError::new(span, format!("a window of {} cannot be split into {buckets} buckets of whole seconds", crate::config::duration::format_duration(*window)), Some(&format!("use a window that is a multiple of {buckets} seconds, or change `engine.window_buckets`"))));
                }
                let id = self.feature(Feature::Top {
                    matcher,
                    property: index,
                    window: *window as u32,
                    bucket_width: (*window / buckets as u64) as u32,
                    buckets,
                    label,
                });
                refs.features.insert(id);
                (Expr::Top(id), Ty::AttrStr)
            }
            Call::ActiveChannels(window) => {
                refs.activity = true;
                (Expr::ActiveChannels(*window as u32), Ty::Num)
            }
            Call::Score(name) => {
                let index = find(
                    name,
                    "score",
                    "scores",
                    self.ctx.scores.iter().map(String::as_str),
                )?;
                refs.scores.insert(index);
                (Expr::Score(index), Ty::Num)
            }
            Call::In(name) => {
                let index = find(
                    name,
                    "segment",
                    "segments",
                    self.ctx.segments.iter().map(String::as_str),
                )?;
                refs.segments.insert(index);
                (Expr::InSegment(index), Ty::Bool)
            }
            Call::HasKey(name) => {
                let index = find(
                    name,
                    "identity namespace",
                    "namespaces",
                    self.ctx.namespaces.iter().map(String::as_str),
                )?;
                refs.keys = true;
                (Expr::HasKey(index), Ty::Bool)
            }
            Call::Min(a, b) | Call::Max(a, b) => {
                let ea = self.expect_num(a, text, scope, refs)?;
                let eb = self.expect_num(b, text, scope, refs)?;
                let e = if matches!(call, Call::Min(..)) {
                    Expr::Min(Box::new(ea), Box::new(eb))
                } else {
                    Expr::Max(Box::new(ea), Box::new(eb))
                };
                (e, Ty::Num)
            }
        })
    }

    fn channel(&self, name: &super::parser::Name) -> Result<usize, RuleError> {
        find(
            name,
            "channel",
            "channels",
            self.ctx.channels.iter().map(String::as_str),
        )
    }

    fn event_match(
        &mut self,
        selector: &Selector,
        text: &str,
        refs: &mut Refs,
    ) -> Result<EventMatch, RuleError> {
        let event = if selector.event.text == "any" {
            if let Some(filter) = &selector.filter {
                return Err(RuleError::new(
                    filter.span.clone(),
                    "`any` cannot have a `where` filter: properties belong to one event type",
                    Some("name the event type instead of `any`"),
                ));
            }
            refs.activity = true;
            None
        } else {
            Some(find(
                &selector.event,
                "event type",
                "event types",
                self.ctx.events.iter().map(|e| e.name.as_str()),
            )?)
        };
        let channel = match &selector.channel {
            Some(c) => Some(self.channel(c)?),
            None => None,
        };
        let filter = match (&selector.filter, event) {
            (Some(node), Some(event)) => Some(self.filter_node(node, text, event, None)?),
            _ => None,
        };
        Ok(EventMatch {
            event,
            channel,
            filter,
        })
    }

    fn feature(&mut self, feature: Feature) -> usize {
        let key = feature.identity();
        if let Some(&id) = self.feature_index.get(&key) {
            return id;
        }
        self.features.push(feature);
        let id = self.features.len() - 1;
        self.feature_index.insert(key, id);
        id
    }
}

/// The index of `name` among `declared`, or an error that lists what is declared.
fn find<'n>(
    name: &super::parser::Name,
    what: &str,
    plural: &str,
    declared: impl Iterator<Item = &'n str> + Clone,
) -> Result<usize, RuleError> {
    declared
        .clone()
        .position(|d| d == name.text)
        .ok_or_else(|| {
            RuleError::new(
                name.span.clone(),
                format!("unknown {what} `{}`", name.text),
                Some(&format!("declared {plural}: {}", list(declared))),
            )
        })
}

/// `a, b, c` for help texts.
pub fn list<'s>(names: impl Iterator<Item = &'s str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

/// The N of `top(..., N)`: a whole number from 1 to the slots a top keeps.
fn top_count(n: f64, span: &std::ops::Range<usize>) -> Result<u32, RuleError> {
    let slots = crate::config::TOP_SLOTS;
    if n.fract() != 0.0 || n < 1.0 || n > slots as f64 {
        return Err(RuleError::new(
            span.clone(),
            format!("`top` keeps the {slots} most frequent values, so N is 1 to {slots}, not {n}"),
            None,
        ));
    }
    Ok(n as u32)
}
