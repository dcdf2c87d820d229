//! The rule language's lexer: rule text to tokens, each with its byte span.
//!
//! Numbers directly followed by a unit letter are durations (`30m`, `1.5h`), so that
//! `since(add_to_cart) > 30m` needs no quoting. Strings use double quotes with `\"` and
//! `\\` escapes. Keywords are lexed as identifiers and recognised by the parser, which
//! keeps the lexer free of context.

use super::RuleError;
use crate::config::diagnostic::Span;
use crate::config::duration::parse_duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    Ident(String),
    Number(f64),
    /// A duration, in seconds.
    Duration(u64),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Plus,
    Minus,
    Star,
    Slash,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Token {
    /// How the token is named in "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match self {
            Token::Ident(name) => format!("`{name}`"),
            Token::Number(n) => format!("number `{n}`"),
            Token::Duration(_) => "a duration".to_string(),
            Token::Str(s) => format!("string \"{s}\""),
            Token::LParen => "`(`".into(),
            Token::RParen => "`)`".into(),
            Token::LBracket => "`[`".into(),
            Token::RBracket => "`]`".into(),
            Token::Comma => "`,`".into(),
            Token::Dot => "`.`".into(),
            Token::Plus => "`+`".into(),
            Token::Minus => "`-`".into(),
            Token::Star => "`*`".into(),
            Token::Slash => "`/`".into(),
            Token::Eq => "`==`".into(),
            Token::Ne => "`!=`".into(),
            Token::Lt => "`<`".into(),
            Token::Le => "`<=`".into(),
            Token::Gt => "`>`".into(),
            Token::Ge => "`>=`".into(),
        }
    }
}

/// Splits `text` into tokens.
pub fn lex(text: &str) -> Result<Vec<(Token, Span)>, RuleError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let single = match c {
            b'(' => Some(Token::LParen),
            b')' => Some(Token::RParen),
            b'[' => Some(Token::LBracket),
            b']' => Some(Token::RBracket),
            b',' => Some(Token::Comma),
            b'.' if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => Some(Token::Dot),
            b'+' => Some(Token::Plus),
            b'-' => Some(Token::Minus),
            b'*' => Some(Token::Star),
            b'/' => Some(Token::Slash),
            _ => None,
        };
        if let Some(token) = single {
            tokens.push((token, start..start + 1));
            i += 1;
            continue;
        }
        let next = bytes.get(i + 1).copied();
        let comparison = match (c, next) {
            (b'=', Some(b'=')) => Some((Token::Eq, 2)),
            (b'!', Some(b'=')) => Some((Token::Ne, 2)),
            (b'<', Some(b'=')) => Some((Token::Le, 2)),
            (b'>', Some(b'=')) => Some((Token::Ge, 2)),
            (b'<', _) => Some((Token::Lt, 1)),
            (b'>', _) => Some((Token::Gt, 1)),
            (b'=', _) => {
                return Err(RuleError::new(
                    start..start + 1,
                    "`=` is not an operator in rules",
                    Some("compare with `==`"),
                ))
            }
            _ => None,
        };
        if let Some((token, len)) = comparison {
            tokens.push((token, start..start + len));
            i += len;
            continue;
        }
        if c == b'"' {
            i += 1;
            let mut value = String::new();
            loop {
                match bytes.get(i) {
                    None => {
                        return Err(RuleError::new(
                            start..text.len(),
                            "unterminated string",
                            Some("close the string with `\"`"),
                        ))
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        match bytes.get(i + 1) {
                            Some(b'"') => value.push('"'),
                            Some(b'\\') => value.push('\\'),
                            _ => {
                                return Err(RuleError::new(
                                    i..i + 2,
                                    "unknown escape in string",
                                    Some("only `\\\"` and `\\\\` are escapes"),
                                ))
                            }
                        }
                        i += 2;
                    }
                    Some(_) => {
                        let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            tokens.push((Token::Str(value), start..i));
            continue;
        }
        if c.is_ascii_digit() || c == b'.' {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            let number_end = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let literal = &text[start..i];
            if i > number_end {
                let seconds =
                    parse_duration(literal).map_err(|e| RuleError::new(start..i, e, None))?;
                tokens.push((Token::Duration(seconds), start..i));
            } else {
                let value: f64 = literal.parse().map_err(|_| {
                    RuleError::new(start..i, format!("`{literal}` is not a number"), None)
                })?;
                tokens.push((Token::Number(value), start..i));
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            tokens.push((Token::Ident(text[start..i].to_string()), start..i));
            continue;
        }
        let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
        let help = (ch == '\'').then_some("strings in rules use double quotes: `\"NL\"`");
        return Err(RuleError::new(
            start..start + ch.len_utf8(),
            format!("unexpected character `{ch}`"),
            help,
        ));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexes_durations_numbers_strings_and_operators() {
        let tokens: Vec<Token> = lex("count(purchase where amount >= 100.5, 30d) != \"N\\\"L\"")
            .unwrap()
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(
            tokens,
            vec![
                Token::Ident("count".into()),
                Token::LParen,
                Token::Ident("purchase".into()),
                Token::Ident("where".into()),
                Token::Ident("amount".into()),
                Token::Ge,
                Token::Number(100.5),
                Token::Comma,
                Token::Duration(2_592_000),
                Token::RParen,
                Token::Ne,
                Token::Str("N\"L".into()),
            ]
        );
    }

    #[test]
    fn single_equals_is_an_error_with_a_hint() {
        let err = lex("attr.country = \"NL\"").unwrap_err();
        assert_eq!(err.span, 13..14);
        assert!(err.help.unwrap().contains("=="));
    }

    #[test]
    fn unterminated_string_is_reported() {
        assert_eq!(
            lex("x == \"abc").unwrap_err().message,
            "unterminated string"
        );
    }
}
