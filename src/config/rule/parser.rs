//! The rule language's parser: tokens to an abstract syntax tree with spans.
//!
//! Grammar (lowest precedence first):
//!
//! ```text
//! expr     = or
//! or       = and ("or" and)*
//! and      = not ("and" not)*
//! not      = "not" not | compare
//! compare  = additive (cmp_op additive | "not"? "in" "[" literal ("," literal)* "]"
//!                     | "not"? "in" top)?
//! additive = term (("+" | "-") term)*
//! term     = unary (("*" | "/") unary)*
//! unary    = "-" unary | primary
//! primary  = number | duration | string | "true" | "false" | "(" expr ")"
//!          | "attr" "." name | call | name
//! call     = "count" "(" selector "," duration ")"
//!          | "sum" "(" selector "," duration ")"          (selector names event.property)
//!          | "since" "(" selector ")" | "ever" "(" selector ")"
//!          | "first" "(" selector ")" | "last" "(" selector ")"   (selector names event.property)
//!          | top
//! top      = "top" "(" selector "," duration ("," number)? ")"  (the N most frequent; a list with `in`)
//!          | "active_channels" "(" duration ")"
//!          | "score" "(" name ")" | "in" "(" name ")" | "has_key" "(" name ")"
//!          | ("min" | "max") "(" expr "," expr ")"
//! selector = name ("." name)? ("on" name)? ("where" expr)?
//! ```
//!
//! A bare `name` is an event property and only makes sense inside a `where` filter;
//! the compiler checks that, so the parser stays a plain grammar.

use super::lexer::{lex, Token};
use super::RuleError;
use crate::config::diagnostic::Span;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A name with the place it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Name {
    pub text: String,
    pub span: Span,
}

/// `purchase.amount on web where category == "shoes"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub event: Name,
    pub property: Option<Name>,
    pub channel: Option<Name>,
    pub filter: Option<Box<Node>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Count(Selector, u64),
    Sum(Selector, u64),
    Since(Selector),
    Ever(Selector),
    /// The value of a property at the first (earliest) matching event.
    First(Selector),
    /// The value of a property at the last (latest) matching event.
    Last(Selector),
    /// The most frequent values of a string property over a window; with a count (and
    /// its span), the list of the N most frequent, for `in`.
    Top(Selector, u64, Option<(f64, Span)>),
    ActiveChannels(u64),
    Score(Name),
    In(Name),
    HasKey(Name),
    Min(Box<Node>, Box<Node>),
    Max(Box<Node>, Box<Node>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Number(f64),
    Duration(u64),
    Str(String),
    Bool(bool),
    /// A bare name: an event property inside a `where` filter.
    Property(String),
    Attr(Name),
    /// `context.NAME`: a value the channel sends with a decision request.
    Context(Name),
    Call(Call),
    Neg(Box<Node>),
    Arith(ArithOp, Box<Node>, Box<Node>),
    Compare(CmpOp, Box<Node>, Box<Node>),
    InList {
        value: Box<Node>,
        items: Vec<Node>,
        negated: bool,
    },
    /// `x in top(...)`: `list` is the `top` call.
    InTop {
        value: Box<Node>,
        list: Box<Node>,
        negated: bool,
    },
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
}

/// Words with a meaning of their own: they cannot name events, segments or anything else.
pub const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "in",
    "on",
    "where",
    "true",
    "false",
    "attr",
    "context",
    "any",
    "first_seen",
];

/// The functions of the language, for "expected one of" messages.
pub const FUNCTIONS: &str =
    "count, sum, since, ever, first, last, top, active_channels, score, in, has_key, min, max";

/// Parses a whole rule.
pub fn parse(text: &str) -> Result<Node, RuleError> {
    let tokens = lex(text)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        end: text.len(),
    };
    if parser.tokens.is_empty() {
        return Err(RuleError::new(
            0..text.len(),
            "the rule is empty",
            Some("write a condition, for example `count(purchase, 30d) > 0`"),
        ));
    }
    let node = parser.expr()?;
    if let Some((token, span)) = parser.peek_full() {
        return Err(RuleError::new(
            span.clone(),
            format!(
                "unexpected {} after the end of the expression",
                token.describe()
            ),
            Some("join conditions with `and` or `or`"),
        ));
    }
    Ok(node)
}

struct Parser {
    tokens: Vec<(Token, Span)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(t, _)| t)
    }

    fn peek_full(&self) -> Option<&(Token, Span)> {
        self.tokens.get(self.pos)
    }

    fn peek_is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(w)) if w == word)
    }

    fn bump(&mut self) -> Option<(Token, Span)> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn here(&self) -> Span {
        match self.tokens.get(self.pos) {
            Some((_, span)) => span.clone(),
            None => self.end..self.end,
        }
    }

    fn unexpected(&self, expected: &str) -> RuleError {
        match self.peek_full() {
            Some((token, span)) => RuleError::new(
                span.clone(),
                format!("expected {expected}, found {}", token.describe()),
                None,
            ),
            None => RuleError::new(
                self.end..self.end,
                format!("expected {expected}, found the end of the rule"),
                None,
            ),
        }
    }

    fn expect(&mut self, token: Token, expected: &str) -> Result<Span, RuleError> {
        if self.peek() == Some(&token) {
            Ok(self.bump().map(|(_, s)| s).unwrap_or(self.end..self.end))
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn name(&mut self, what: &str) -> Result<Name, RuleError> {
        match self.peek_full() {
            Some((Token::Ident(text), span))
                if !KEYWORDS.contains(&text.as_str()) || text == "any" || text == "first_seen" =>
            {
                let name = Name {
                    text: text.clone(),
                    span: span.clone(),
                };
                self.pos += 1;
                Ok(name)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn expr(&mut self) -> Result<Node, RuleError> {
        let mut left = self.and()?;
        while self.peek_is_keyword("or") {
            self.bump();
            let right = self.and()?;
            let span = left.span.start..right.span.end;
            left = Node {
                kind: NodeKind::Or(Box::new(left), Box::new(right)),
                span,
            };
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, RuleError> {
        let mut left = self.not()?;
        while self.peek_is_keyword("and") {
            self.bump();
            let right = self.not()?;
            let span = left.span.start..right.span.end;
            left = Node {
                kind: NodeKind::And(Box::new(left), Box::new(right)),
                span,
            };
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Node, RuleError> {
        if self.peek_is_keyword("not") {
            let start = self.here().start;
            self.bump();
            let inner = self.not()?;
            let span = start..inner.span.end;
            return Ok(Node {
                kind: NodeKind::Not(Box::new(inner)),
                span,
            });
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Node, RuleError> {
        let left = self.additive()?;
        let op = match self.peek() {
            Some(Token::Eq) => Some(CmpOp::Eq),
            Some(Token::Ne) => Some(CmpOp::Ne),
            Some(Token::Lt) => Some(CmpOp::Lt),
            Some(Token::Le) => Some(CmpOp::Le),
            Some(Token::Gt) => Some(CmpOp::Gt),
            Some(Token::Ge) => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            self.bump();
            let right = self.additive()?;
            let span = left.span.start..right.span.end;
            return Ok(Node {
                kind: NodeKind::Compare(op, Box::new(left), Box::new(right)),
                span,
            });
        }
        let negated = self.peek_is_keyword("not")
            && matches!(self.tokens.get(self.pos + 1), Some((Token::Ident(w), _)) if w == "in");
        // `x in top(...)`: membership of the list a `top` makes.
        let list_at = self.pos + 1 + negated as usize;
        if (negated || self.peek_is_keyword("in"))
            && matches!(self.tokens.get(list_at), Some((Token::Ident(w), _)) if w == "top")
        {
            self.pos = list_at;
            let list = self.primary()?;
            let span = left.span.start..list.span.end;
            return Ok(Node {
                kind: NodeKind::InTop {
                    value: Box::new(left),
                    list: Box::new(list),
                    negated,
                },
                span,
            });
        }
        if negated
            || (self.peek_is_keyword("in")
                && matches!(self.tokens.get(self.pos + 1), Some((Token::LBracket, _))))
        {
            if negated {
                self.bump();
            }
            self.bump();
            self.expect(Token::LBracket, "`[` to start a list")?;
            let mut items = Vec::new();
            loop {
                items.push(self.literal()?);
                match self.peek() {
                    Some(Token::Comma) => {
                        self.bump();
                    }
                    Some(Token::RBracket) => break,
                    _ => return Err(self.unexpected("`,` or `]`")),
                }
            }
            let end = self.expect(Token::RBracket, "`]`")?.end;
            let span = left.span.start..end;
            return Ok(Node {
                kind: NodeKind::InList {
                    value: Box::new(left),
                    items,
                    negated,
                },
                span,
            });
        }
        Ok(left)
    }

    fn literal(&mut self) -> Result<Node, RuleError> {
        let negative = if self.peek() == Some(&Token::Minus) {
            Some(self.bump().map(|(_, s)| s.start).unwrap_or(0))
        } else {
            None
        };
        match self.bump() {
            Some((Token::Number(n), span)) => Ok(Node {
                kind: NodeKind::Number(if negative.is_some() { -n } else { n }),
                span: negative.unwrap_or(span.start)..span.end,
            }),
            Some((Token::Duration(d), span)) if negative.is_none() => Ok(Node {
                kind: NodeKind::Duration(d),
                span,
            }),
            Some((Token::Str(s), span)) if negative.is_none() => Ok(Node {
                kind: NodeKind::Str(s),
                span,
            }),
            _ => {
                self.pos -= 1;
                Err(self.unexpected("a number, duration or string in the list"))
            }
        }
    }

    fn additive(&mut self) -> Result<Node, RuleError> {
        let mut left = self.term()?;
        loop {
            let op = match self.peek() {
                Some(Token::Plus) => ArithOp::Add,
                Some(Token::Minus) => ArithOp::Sub,
                _ => break,
            };
            self.bump();
            let right = self.term()?;
            let span = left.span.start..right.span.end;
            left = Node {
                kind: NodeKind::Arith(op, Box::new(left), Box::new(right)),
                span,
            };
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Node, RuleError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Token::Star) => ArithOp::Mul,
                Some(Token::Slash) => ArithOp::Div,
                _ => break,
            };
            self.bump();
            let right = self.unary()?;
            let span = left.span.start..right.span.end;
            left = Node {
                kind: NodeKind::Arith(op, Box::new(left), Box::new(right)),
                span,
            };
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, RuleError> {
        if self.peek() == Some(&Token::Minus) {
            let start = self.here().start;
            self.bump();
            let inner = self.unary()?;
            let span = start..inner.span.end;
            return Ok(Node {
                kind: NodeKind::Neg(Box::new(inner)),
                span,
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Node, RuleError> {
        let Some((token, span)) = self.bump() else {
            return Err(RuleError::new(
                self.end..self.end,
                "expected a value or condition, found the end of the rule",
                None,
            ));
        };
        let kind = match token {
            Token::Number(n) => NodeKind::Number(n),
            Token::Duration(d) => NodeKind::Duration(d),
            Token::Str(s) => NodeKind::Str(s),
            Token::LParen => {
                let inner = self.expr()?;
                let end = self.expect(Token::RParen, "`)`")?.end;
                return Ok(Node {
                    kind: inner.kind,
                    span: span.start..end,
                });
            }
            Token::Ident(word) => match word.as_str() {
                "true" => NodeKind::Bool(true),
                "false" => NodeKind::Bool(false),
                "attr" => {
                    self.expect(Token::Dot, "`.` after `attr`, as in `attr.country`")?;
                    let name = self.name("an attribute name after `attr.`")?;
                    let end = name.span.end;
                    return Ok(Node {
                        kind: NodeKind::Attr(name),
                        span: span.start..end,
                    });
                }
                "context" => {
                    self.expect(Token::Dot, "`.` after `context`, as in `context.store`")?;
                    let name = self.name("a context field name after `context.`")?;
                    let end = name.span.end;
                    return Ok(Node {
                        kind: NodeKind::Context(name),
                        span: span.start..end,
                    });
                }
                _ if self.peek() == Some(&Token::LParen) => {
                    return self.call(word, span);
                }
                "and" | "or" | "not" | "in" | "on" | "where" => {
                    self.pos -= 1;
                    return Err(self.unexpected("a value or condition"));
                }
                _ => NodeKind::Property(word),
            },
            _ => {
                self.pos -= 1;
                return Err(self.unexpected("a value or condition"));
            }
        };
        Ok(Node { kind, span })
    }

    fn call(&mut self, function: String, name_span: Span) -> Result<Node, RuleError> {
        self.expect(Token::LParen, "`(`")?;
        let call = match function.as_str() {
            "count" => {
                let selector = self.selector()?;
                self.expect(
                    Token::Comma,
                    "`,` and a window, as in `count(purchase, 30d)`",
                )?;
                Call::Count(selector, self.duration()?)
            }
            "sum" => {
                let selector = self.selector()?;
                self.expect(
                    Token::Comma,
                    "`,` and a window, as in `sum(purchase.amount, 90d)`",
                )?;
                Call::Sum(selector, self.duration()?)
            }
            "since" => Call::Since(self.selector()?),
            "ever" => Call::Ever(self.selector()?),
            "first" => Call::First(self.selector()?),
            "last" => Call::Last(self.selector()?),
            "top" => {
                let selector = self.selector()?;
                self.expect(
                    Token::Comma,
                    "`,` and a window, as in `top(product_view.category, 30d)`",
                )?;
                let window = self.duration()?;
                let count = if self.peek() == Some(&Token::Comma) {
                    self.bump();
                    match self.bump() {
                        Some((Token::Number(n), span)) => Some((n, span)),
                        _ => {
                            self.pos -= 1;
                            return Err(self.unexpected(
                                "how many values, as in `top(product_view.category, 30d, 3)`",
                            ));
                        }
                    }
                } else {
                    None
                };
                Call::Top(selector, window, count)
            }
            "active_channels" => Call::ActiveChannels(self.duration()?),
            "score" => Call::Score(self.name("a score name")?),
            "in" => Call::In(self.name("a segment name")?),
            "has_key" => Call::HasKey(self.name("an identity namespace")?),
            "min" | "max" => {
                let a = self.expr()?;
                self.expect(Token::Comma, "`,` and a second value")?;
                let b = self.expr()?;
                if function == "min" {
                    Call::Min(Box::new(a), Box::new(b))
                } else {
                    Call::Max(Box::new(a), Box::new(b))
                }
            }
            other => {
                return Err(RuleError::new(
                    name_span,
                    format!("unknown function `{other}`"),
                    Some(&format!("the functions are {FUNCTIONS}")),
                ))
            }
        };
        let end = self.expect(Token::RParen, "`)`")?.end;
        Ok(Node {
            kind: NodeKind::Call(call),
            span: name_span.start..end,
        })
    }

    fn duration(&mut self) -> Result<u64, RuleError> {
        match self.peek() {
            Some(Token::Duration(d)) => {
                let d = *d;
                self.bump();
                Ok(d)
            }
            Some(Token::Number(_)) => Err(RuleError::new(
                self.here(),
                "a window needs a unit",
                Some("write for example `30d`, `12h` or `1h`"),
            )),
            _ => Err(self.unexpected("a window such as `30d`")),
        }
    }

    fn selector(&mut self) -> Result<Selector, RuleError> {
        let event = self.name("an event type (or `any`)")?;
        let property = if self.peek() == Some(&Token::Dot) {
            self.bump();
            Some(self.name("a property name after `.`")?)
        } else {
            None
        };
        let channel = if self.peek_is_keyword("on") {
            self.bump();
            Some(self.name("a channel after `on`")?)
        } else {
            None
        };
        let filter = if self.peek_is_keyword("where") {
            self.bump();
            Some(Box::new(self.expr()?))
        } else {
            None
        };
        Ok(Selector {
            event,
            property,
            channel,
            filter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(text: &str) -> String {
        fn go(n: &Node) -> String {
            match &n.kind {
                NodeKind::Number(v) => format!("{v}"),
                NodeKind::Duration(d) => format!("{d}s"),
                NodeKind::Str(s) => format!("{s:?}"),
                NodeKind::Bool(b) => format!("{b}"),
                NodeKind::Property(p) => p.clone(),
                NodeKind::Attr(a) => format!("attr.{}", a.text),
                NodeKind::Context(c) => format!("context.{}", c.text),
                NodeKind::Call(c) => format!("{c:?}").split('(').next().unwrap_or("").to_string(),
                NodeKind::Neg(x) => format!("(-{})", go(x)),
                NodeKind::Arith(op, a, b) => format!("({} {op:?} {})", go(a), go(b)),
                NodeKind::Compare(op, a, b) => format!("({} {} {})", go(a), op.symbol(), go(b)),
                NodeKind::InList {
                    value,
                    items,
                    negated,
                } => format!(
                    "({} {}in [{}])",
                    go(value),
                    if *negated { "not " } else { "" },
                    items.iter().map(go).collect::<Vec<_>>().join(",")
                ),
                NodeKind::InTop {
                    value,
                    list,
                    negated,
                } => format!(
                    "({} {}in {})",
                    go(value),
                    if *negated { "not " } else { "" },
                    go(list)
                ),
                NodeKind::Not(x) => format!("(not {})", go(x)),
                NodeKind::And(a, b) => format!("({} and {})", go(a), go(b)),
                NodeKind::Or(a, b) => format!("({} or {})", go(a), go(b)),
            }
        }
        go(&parse(text).unwrap())
    }

    #[test]
    fn precedence_is_or_and_not_compare_arith() {
        assert_eq!(
            shape("not attr.a == 1 or attr.b > 2 and attr.c + 1 * 2 < 3"),
            "((not (attr.a == 1)) or ((attr.b > 2) and ((attr.c Add (1 Mul 2)) < 3)))"
        );
        assert_eq!(
            shape("attr.country not in [\"NL\", \"BE\"]"),
            "(attr.country not in [\"NL\",\"BE\"])"
        );
        assert_eq!(shape("-attr.x >= -2"), "((-attr.x) >= (-2))");
    }

    #[test]
    fn parses_selectors_with_channel_and_filter() {
        let node =
            parse("count(purchase.amount on web where amount >= 100 and category == \"x\", 30d)")
                .unwrap();
        let NodeKind::Call(Call::Count(sel, window)) = node.kind else {
            panic!("not a count: {node:?}")
        };
        assert_eq!(sel.event.text, "purchase");
        assert_eq!(sel.property.unwrap().text, "amount");
        assert_eq!(sel.channel.unwrap().text, "web");
        assert!(sel.filter.is_some());
        assert_eq!(window, 30 * 86_400);
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        let err = parse("count(purchase, 30) > 1").unwrap_err();
        assert_eq!(
            (err.span.clone(), err.message.as_str()),
            (16..18, "a window needs a unit")
        );
        let err = parse("cnt(purchase, 30d)").unwrap_err();
        assert_eq!(err.span, 0..3);
        assert!(err.message.contains("unknown function `cnt`"));
        let err = parse("attr.a == 1 attr.b").unwrap_err();
        assert!(err.message.contains("after the end"));
        let err = parse("(attr.a == 1").unwrap_err();
        assert_eq!(err.message, "expected `)`, found the end of the rule");
    }
}
