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
    /// A number property's value at the first or last matching event (a value
    /// feature); NaN before any.
    ValueNum(usize),
    /// A string property's value at the first or last matching event, as an
    /// interned code (a value feature); 0 before any.
    ValueStr(usize),
    /// The most frequent value in a top feature's window, as an interned code; 0 when
    /// the window is empty.
    Top(usize),
    /// Whether `value` (a string) is among the `n` most frequent values of a top
    /// feature's window.
    TopHas {
        negated: bool,
        value: Box<Expr>,
        feature: usize,
        n: u32,
    },
}

impl Expr {
    /// Feeds the expression's canonical encoding to `fp`: a tag per variant (its place
    /// in the enum above, so a new variant goes last), then its operands in order. Two
    /// expressions encode alike iff they are equal (floats by their bits).
    pub fn fingerprint(&self, fp: &mut crate::codec::Fingerprint) {
        let index = |fp: &mut crate::codec::Fingerprint, tag: u8, i: usize| {
            fp.u8(tag).u64(i as u64);
        };
        match self {
            Expr::Num(v) => {
                fp.u8(0).u64(v.to_bits());
            }
            Expr::Bool(b) => {
                fp.u8(1).u8(*b as u8);
            }
            Expr::Str(code) => {
                fp.u8(2).u32(*code);
            }
            Expr::Window(i) => index(fp, 3, *i),
            Expr::Since(i) => index(fp, 4, *i),
            Expr::Ever(i) => index(fp, 5, *i),
            Expr::SinceLastSeen => {
                fp.u8(6);
            }
            Expr::SinceChannel(i) => index(fp, 7, *i),
            Expr::SinceFirstSeen => {
                fp.u8(8);
            }
            Expr::ActiveChannels(window) => {
                fp.u8(9).u32(*window);
            }
            Expr::HasKey(i) => index(fp, 10, *i),
            Expr::AttrNum(i) => index(fp, 11, *i),
            Expr::AttrStr(i) => index(fp, 12, *i),
            Expr::AttrBool(i) => index(fp, 13, *i),
            Expr::CtxNum(i) => index(fp, 14, *i),
            Expr::CtxStr(i) => index(fp, 15, *i),
            Expr::CtxBool(i) => index(fp, 16, *i),
            Expr::PropNum(i) => index(fp, 17, *i),
            Expr::PropStr(i) => index(fp, 18, *i),
            Expr::PropBool(i) => index(fp, 19, *i),
            Expr::Score(i) => index(fp, 20, *i),
            Expr::InSegment(i) => index(fp, 21, *i),
            Expr::Neg(e) => {
                fp.u8(22);
                e.fingerprint(fp);
            }
            Expr::Arith(op, l, r) => {
                fp.u8(23).u8(*op as u8);
                l.fingerprint(fp);
                r.fingerprint(fp);
            }
            Expr::Min(l, r) | Expr::Max(l, r) => {
                fp.u8(if matches!(self, Expr::Min(..)) {
                    24
                } else {
                    25
                });
                l.fingerprint(fp);
                r.fingerprint(fp);
            }
            Expr::Cmp(op, l, r) => {
                fp.u8(26).u8(*op as u8);
                l.fingerprint(fp);
                r.fingerprint(fp);
            }
            Expr::StrEq {
                negated,
                left,
                right,
            }
            | Expr::BoolEq {
                negated,
                left,
                right,
            } => {
                fp.u8(if matches!(self, Expr::StrEq { .. }) {
                    27
                } else {
                    28
                })
                .u8(*negated as u8);
                left.fingerprint(fp);
                right.fingerprint(fp);
            }
            Expr::NumIn {
                negated,
                value,
                items,
            } => {
                fp.u8(29).u8(*negated as u8).u32(items.len() as u32);
                for v in items {
                    fp.u64(v.to_bits());
                }
                value.fingerprint(fp);
            }
            Expr::StrIn {
                negated,
                value,
                items,
            } => {
                fp.u8(30).u8(*negated as u8).u32(items.len() as u32);
                for &code in items {
                    fp.u32(code);
                }
                value.fingerprint(fp);
            }
            Expr::Not(e) | Expr::Indicator(e) => {
                fp.u8(if matches!(self, Expr::Not(_)) { 31 } else { 32 });
                e.fingerprint(fp);
            }
            Expr::And(l, r) | Expr::Or(l, r) => {
                fp.u8(if matches!(self, Expr::And(..)) {
                    33
                } else {
                    34
                });
                l.fingerprint(fp);
                r.fingerprint(fp);
            }
            Expr::ValueNum(f) => {
                fp.u8(35).u64(*f as u64);
            }
            Expr::ValueStr(f) => {
                fp.u8(36).u64(*f as u64);
            }
            Expr::Top(f) => {
                fp.u8(37).u64(*f as u64);
            }
            Expr::TopHas {
                negated,
                value,
                feature,
                n,
            } => {
                fp.u8(38).u8(*negated as u8).u64(*feature as u64).u32(*n);
                value.fingerprint(fp);
            }
        }
    }
}

/// Interns attribute string values as dense codes (from 1; 0 means "not set"), so rules
/// compare attributes by integer. Shared by the compiled config and the engine.
///
/// Codes are reclaimed. A code is *pinned* when a rule mentions its text (its code is
/// compiled into expressions, so it lives as long as the config), and otherwise lives
/// while profile rows hold it: the engine counts, under each shard's lock, how many
/// rows hold each code ([`Interner::retain`], [`Interner::release`]). A code whose
/// count falls to zero becomes a candidate; [`Interner::sweep`] frees the candidates
/// still unreferenced and later interns reuse their codes. So a high-cardinality
/// attribute costs memory for the values customers hold now, not for every value ever
/// seen, and a snapshot carries live values only.
///
/// Invariant: a code in a row is never freed (its count is at least one), and a code
/// that [`Interner::intern`] returned is not freed before the caller stores it or drops
/// it, because the engine never sweeps while it resolves or applies events.
///
/// Memory per live value: its text, about 24 bytes of table entry, and a hash-map
/// entry of about 40 bytes (`docs/configuration.md` has the measured figure).
#[derive(Debug, Default)]
pub struct Interner {
    codes: dashmap::DashMap<std::sync::Arc<str>, u32, ahash::RandomState>,
    entries: parking_lot::RwLock<Vec<Entry>>,
    /// Freed codes, reused by later interns.
    free: parking_lot::Mutex<Vec<u32>>,
    /// Codes whose count fell to zero (or that no row took yet): what a sweep checks.
    unreferenced: parking_lot::Mutex<Vec<u32>>,
    /// Bytes of live text.
    text_bytes: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Default)]
struct Entry {
    /// `None` once freed.
    text: Option<std::sync::Arc<str>>,
    /// Rows that hold the code.
    refs: std::sync::atomic::AtomicU32,
    /// A rule mentions the text: never freed.
    pinned: std::sync::atomic::AtomicBool,
}

/// What an interner holds, for stats and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InternerStats {
    /// Codes assigned to a text now.
    pub live: usize,
    /// Codes freed and waiting for reuse.
    pub free: usize,
    /// Bytes of live text.
    pub text_bytes: usize,
}

impl Interner {
    /// The code of `text`, assigning one if it is new. A new code is held by nothing
    /// until a row takes it with [`Interner::retain`].
    pub fn intern(&self, text: &str) -> u32 {
        if let Some(code) = self.codes.get(text) {
            return *code;
        }
        self.insert(text, false)
    }

    /// The code of a text a rule mentions: it is never freed.
    pub fn pin(&self, text: &str) -> u32 {
        let code = self.intern(text);
        if let Some(entry) = self.entries.read().get(code as usize - 1) {
            entry
                .pinned
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        code
    }

    fn insert(&self, text: &str, pinned: bool) -> u32 {
        let mut entries = self.entries.write();
        // Checked again under the write lock: another thread may have won the race.
        if let Some(code) = self.codes.get(text) {
            return *code;
        }
        let shared: std::sync::Arc<str> = text.into();
        let entry = Entry {
            text: Some(shared.clone()),
            refs: Default::default(),
            pinned: pinned.into(),
        };
        let code = match self.free.lock().pop() {
            Some(code) => {
                entries[code as usize - 1] = entry;
                code
            }
            None => {
                entries.push(entry);
                entries.len() as u32
            }
        };
        self.codes.insert(shared, code);
        self.text_bytes
            .fetch_add(text.len(), std::sync::atomic::Ordering::Relaxed);
        self.unreferenced.lock().push(code);
        code
    }

    /// One more row holds `code` (0, "not set", is not counted).
    pub fn retain(&self, code: u32) {
        if code == 0 {
            return;
        }
        if let Some(entry) = self.entries.read().get(code as usize - 1) {
            entry
                .refs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// One row fewer holds `code`; at zero it becomes a candidate for the next sweep.
    pub fn release(&self, code: u32) {
        if code == 0 {
            return;
        }
        let last = self
            .entries
            .read()
            .get(code as usize - 1)
            .is_some_and(|e| e.refs.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 1);
        if last {
            self.unreferenced.lock().push(code);
        }
    }

    /// Whether some code may be freeable (a sweep has candidates to check).
    pub fn has_unreferenced(&self) -> bool {
        !self.unreferenced.lock().is_empty()
    }

    /// Frees the candidates no row holds and no rule mentions; returns how many. The
    /// caller guarantees that no code returned by [`Interner::intern`] is waiting to be
    /// stored (the engine holds its string gate for writing).
    pub fn sweep(&self) -> usize {
        let candidates = std::mem::take(&mut *self.unreferenced.lock());
        if candidates.is_empty() {
            return 0;
        }
        let mut entries = self.entries.write();
        let mut free = self.free.lock();
        let mut freed = 0;
        for code in candidates {
            let Some(entry) = entries.get_mut(code as usize - 1) else {
                continue;
            };
            if *entry.refs.get_mut() != 0 || *entry.pinned.get_mut() {
                continue;
            }
            let Some(text) = entry.text.take() else {
                continue; // listed twice
            };
            self.codes.remove(&*text);
            self.text_bytes
                .fetch_sub(text.len(), std::sync::atomic::Ordering::Relaxed);
            free.push(code);
            freed += 1;
        }
        // Freed codes at the end of the table are dropped rather than kept for reuse.
        while entries.last().is_some_and(|e| e.text.is_none()) {
            entries.pop();
        }
        let len = entries.len() as u32;
        free.retain(|&c| c <= len);
        if freed > 0 && self.codes.capacity() > 4 * self.codes.len().max(1024) {
            self.codes.shrink_to_fit();
            entries.shrink_to_fit();
            free.shrink_to_fit();
        }
        freed
    }

    /// Every code's text, code 1 first, `""` for freed codes (for snapshots: no row holds
    /// a freed code).
    pub fn strings(&self) -> Vec<std::sync::Arc<str>> {
        self.entries
            .read()
            .iter()
            .map(|e| e.text.clone().unwrap_or_else(|| "".into()))
            .collect()
    }

    /// The code of `text` if it is interned now.
    pub fn lookup(&self, text: &str) -> Option<u32> {
        self.codes.get(text).map(|c| *c)
    }

    /// The text of a code; `None` for 0, an unknown or a freed code.
    pub fn resolve(&self, code: u32) -> Option<std::sync::Arc<str>> {
        if code == 0 {
            return None;
        }
        self.entries
            .read()
            .get(code as usize - 1)
            .and_then(|e| e.text.clone())
    }

    /// Rows holding `code` (0 for unknown codes), for tests.
    pub fn references(&self, code: u32) -> u32 {
        self.entries
            .read()
            .get((code as usize).wrapping_sub(1))
            .map_or(0, |e| e.refs.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn stats(&self) -> InternerStats {
        let entries = self.entries.read();
        let free = self.free.lock().len();
        InternerStats {
            live: entries.len() - free,
            free,
            text_bytes: self.text_bytes.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreferenced_codes_are_freed_by_a_sweep_and_reused() {
        let i = Interner::default();
        let rule = i.pin("NL");
        let a = i.intern("a-1");
        let b = i.intern("b-2");
        i.retain(a);
        i.retain(b);
        // Nothing is freed while rows hold the codes, nor a pinned one no row holds.
        assert_eq!(i.sweep(), 0);
        i.release(a);
        assert_eq!(i.references(a), 0);
        assert_eq!(i.sweep(), 1);
        assert_eq!(i.resolve(a), None);
        assert_eq!(i.lookup("a-1"), None);
        assert_eq!(i.resolve(rule).as_deref(), Some("NL"));
        assert_eq!(
            i.stats(),
            InternerStats {
                live: 2,
                free: 1,
                text_bytes: 5
            }
        );
        // A new text takes the freed code; a snapshot lists live texts only.
        assert_eq!(i.intern("c-3"), a);
        assert_eq!(
            i.strings().iter().map(|s| &**s).collect::<Vec<_>>(),
            ["NL", "c-3", "b-2"]
        );
        // Freed codes at the end of the table are dropped.
        i.release(b);
        i.sweep();
        // (`c-3` too: no row took it.)
        assert_eq!(i.stats().live, 1, "{:?}", i.strings());
        assert_eq!(i.strings().len(), 1);
    }

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
