//! The rule language: how data teams define segments, score features, and offer
//! eligibility and ranking.
//!
//! Text flows `lexer` -> `parser` (an AST with spans) -> `compile` (names resolved,
//! types checked, every aggregate the rule reads given a slot in the profile layout).
//! What comes out, [`Expr`], refers to events, channels, attributes, segments, scores
//! and aggregates by dense index only, so evaluating it per event needs no hashing, no
//! string comparison and no allocation. String constants are turned into integer codes
//! at compile time (see [`Interner`] and per-property constant tables).

pub(crate) mod compile;
mod lexer;
pub mod parser;

pub use compile::{Compiler, Refs, RuleContext};
pub use parser::{parse, ArithOp, CmpOp, KEYWORDS};

use crate::config::diagnostic::Span;

/// An error in a rule, with its span relative to the start of the rule text.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub span: Span,
    pub message: String,
    pub help: Option<String>,
}

impl RuleError {
    pub fn new(span: Span, message: impl Into<String>, help: Option<&str>) -> Self {
        RuleError {
            span,
            message: message.into(),
            help: help.map(str::to_string),
        }
    }
}

/// A compiled rule expression. Indices refer to the tables of the compiled
/// [`Config`](crate::config::Config).
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(f64),
    Bool(bool),
    /// A string constant, as a code in the domain it is compared in.
    Str(u32),
    /// The value of a window aggregate (count or sum), by feature index.
    Window(usize),
    /// Seconds since the last matching event (a last-seen feature); infinity if never.
    Since(usize),
    /// Whether a matching event was ever seen (a last-seen feature).
    Ever(usize),
    /// Seconds since the customer's last event of any type, on any channel.
    SinceLastSeen,
    /// Seconds since the customer's last event on a channel.
    SinceChannel(usize),
    /// Seconds since the customer's first event.
    SinceFirstSeen,
    /// Number of channels with at least one event in the window (seconds).
    ActiveChannels(u32),
    /// Whether the customer has a key in the namespace.
    HasKey(usize),
    AttrNum(usize),
    AttrStr(usize),
    AttrBool(usize),
    /// Context fields of a decision request, by index in `[decisions.context]`.
    CtxNum(usize),
    CtxStr(usize),
    CtxBool(usize),
    /// Event properties, only inside `where` filters: index within the event type.
    PropNum(usize),
    PropStr(usize),
    PropBool(usize),
    Score(usize),
    InSegment(usize),
    Neg(Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Min(Box<Expr>, Box<Expr>),
    Max(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// String (code) equality; `negated` for `!=`.
    StrEq {
        negated: bool,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    BoolEq {
        negated: bool,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    NumIn {
        negated: bool,
        value: Box<Expr>,
        items: Vec<f64>,
    },
    StrIn {
        negated: bool,
        value: Box<Expr>,
        items: Vec<u32>,
    },
    Not(Box<Expr>),
    /// A condition used as a number: 1 when true, 0 when false.
    Indicator(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// Interns attribute string values as dense codes (from 1; 0 means "not set"), so rules
/// compare attributes by integer. Shared by the compiled config and the engine.
#[derive(Debug, Default)]
pub struct Interner {
    codes: dashmap::DashMap<std::sync::Arc<str>, u32, ahash::RandomState>,
    strings: parking_lot::RwLock<Vec<std::sync::Arc<str>>>,
}

impl Interner {
    /// The code of `text`, assigning the next one if it is new.
    pub fn intern(&self, text: &str) -> u32 {
        if let Some(code) = self.codes.get(text) {
            return *code;
        }
        let mut strings = self.strings.write();
        // Checked again under the write lock: another thread may have won the race.
        if let Some(code) = self.codes.get(text) {
            return *code;
        }
        let shared: std::sync::Arc<str> = text.into();
        strings.push(shared.clone());
        let code = strings.len() as u32;
        self.codes.insert(shared, code);
        code
    }

    /// Every interned text, code 1 first (for snapshots).
    pub fn strings(&self) -> Vec<std::sync::Arc<str>> {
        self.strings.read().clone()
    }

    /// The code of `text` if it was ever interned.
    pub fn lookup(&self, text: &str) -> Option<u32> {
        self.codes.get(text).map(|c| *c)
    }

    /// The text of a code; `None` for 0 or an unknown code.
    pub fn resolve(&self, code: u32) -> Option<std::sync::Arc<str>> {
        if code == 0 {
            return None;
        }
        self.strings.read().get(code as usize - 1).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interner_gives_stable_dense_codes() {
        let i = Interner::default();
        assert_eq!(i.intern("NL"), 1);
        assert_eq!(i.intern("BE"), 2);
        assert_eq!(i.intern("NL"), 1);
        assert_eq!(i.lookup("DE"), None);
        assert_eq!(i.resolve(2).as_deref(), Some("BE"));
        assert_eq!(i.resolve(0), None);
    }
}
