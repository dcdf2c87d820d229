//! Goals: what an experiment measures, the `[goals.NAME]` tables.
//!
//! A goal is an event a customer may do after an experiment exposed them: "bought
//! within 7 days" (`event = "purchase"`, `window = "7d"`), optionally only some of those
//! events (`where`, a condition on the event's properties as in rules), optionally with
//! a value summed per customer (`value = "amount"`, a number property: revenue per
//! customer). The engine tells its extension of every goal event it applies
//! (`engine::Extension::goal`), and decide counts it for the experiments the customer
//! was exposed in, inside each one's window (`decide::state`).
//!
//! Invariants of a compiled [`GoalDef`]: `event` is a declared event type, `value` a
//! number property of it, `filter` a condition on its properties, `window` at least one
//! second.

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

use super::rule::compile::{list, Compiler};
use super::rule::Expr;
use super::{Builder, ValueType};

/// `[goals.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGoal {
    #[serde(default)]
    pub description: Option<String>,
    pub event: Spanned<String>,
    pub window: Spanned<String>,
    pub value: Option<Spanned<String>>,
    #[serde(rename = "where")]
    pub filter: Option<Spanned<String>>,
}

/// A goal, compiled (see the module doc).
#[derive(Debug, Clone)]
pub struct GoalDef {
    pub name: String,
    pub description: Option<String>,
    /// The event type, by index.
    pub event: usize,
    /// A condition on the event's properties; `None`: every event of the type.
    pub filter: Option<Expr>,
    /// The number property summed per customer, by index within the event type.
    pub value: Option<usize>,
    /// Seconds after the customer's exposure in which the event counts.
    pub window: u32,
}

impl Builder<'_> {
    /// Validates and compiles the `[goals.*]` tables; a goal with an error is left out
    /// (its error reported), so experiments naming it are checked against the rest.
    pub(super) fn goals(
        &mut self,
        raw: &IndexMap<Spanned<String>, RawGoal>,
        compiler: &mut Compiler<'_>,
    ) -> Vec<Option<GoalDef>> {
        let events = compiler.ctx.events;
        let mut goals = Vec::new();
        for (name, goal) in raw {
            self.name(name, "goal");
            let Some(event) = events.iter().position(|e| e.name == *goal.event.get_ref()) else {
                self.error(
                    goal.event.span(),
                    format!(
                        "goal `{}` counts the event type `{}`, which is not declared",
                        name.get_ref(),
                        goal.event.get_ref()
                    ),
                    Some(format!(
                        "declared event types: {}",
                        list(events.iter().map(|e| e.name.as_str()))
                    )),
                );
                goals.push(None);
                continue;
            };
            let def = &events[event];
            let window = self.duration(&goal.window, &format!("goal `{}` window", name.get_ref()));
            let mut failed = window.is_none();
            let value = match &goal.value {
                None => None,
                Some(v) => match def.properties.iter().position(|p| p.name == *v.get_ref()) {
                    Some(p) if def.properties[p].ty == ValueType::Number => Some(p),
                    Some(_) => {
                        self.error(
                            v.span(),
                            format!(
                                "the value of goal `{}` must be a number property; `{}` of `{}` is not",
                                name.get_ref(),
                                v.get_ref(),
                                def.name
                            ),
                            None,
                        );
                        failed = true;
                        None
                    }
                    None => {
                        self.error(
                            v.span(),
                            format!(
                                "event type `{}` has no property `{}` for the value of goal `{}`",
                                def.name,
                                v.get_ref(),
                                name.get_ref()
                            ),
                            Some(format!(
                                "its properties are: {}",
                                list(def.properties.iter().map(|p| p.name.as_str()))
                            )),
                        );
                        failed = true;
                        None
                    }
                },
            };
            let filter = match &goal.filter {
                None => None,
                Some(text) => match compiler.filter(event, text.get_ref()) {
                    Ok(expr) => Some(expr),
                    Err(e) => {
                        self.rule_error(text, e);
                        failed = true;
                        None
                    }
                },
            };
            goals.push((!failed).then(|| GoalDef {
                name: name.get_ref().clone(),
                description: goal.description.clone(),
                event,
                filter,
                value,
                window: window.unwrap_or(1),
            }));
        }
        goals
    }
}
