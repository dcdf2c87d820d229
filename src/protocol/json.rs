//! Bounds on JSON documents from outside, checked before any parser recurses.
//!
//! JSON parsers that build a tree (simd-json's `BorrowedValue`, serde_json's `Value`)
//! recurse once per nesting level, both to build the tree and to drop it: a 9 KB body of
//! `[` characters overflows a worker thread's stack and aborts the whole process. A
//! tokenizer's own depth limit does not help, because the tree is built and dropped by
//! recursive code after it. So every JSON body omnia reads from a client goes through
//! [`check_nesting`] first: one linear pass over the bytes that tracks string state and
//! depth, allocates nothing and never recurses. A document deeper than
//! [`MAX_JSON_DEPTH`] is refused with the byte offset, line and column where the limit
//! was crossed.
//!
//! Invariant: a document that passes has at most `max_depth` open arrays and objects at
//! any point, so a recursive parser or drop uses at most `max_depth` stack frames.
//! Malformed JSON may pass (unbalanced brackets, bad escapes): finding those is the
//! parser's job; this pass only bounds how deep the parser can go.

/// Deepest nesting of arrays and objects omnia accepts in a JSON document. A Segment
/// batch is 4 levels deep (`{"batch": [{"properties": {...}}]}`) and real trackers send
/// at most a dozen; 64 is far above any real event and far below what overflows a
/// stack (thousands of levels).
pub const MAX_JSON_DEPTH: usize = 64;

/// Where a JSON document crossed the nesting limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JSON nested deeper than {max} levels at byte {offset} (line {line}, column {column}); events are at most {max} arrays or objects deep")]
pub struct TooDeep {
    pub max: usize,
    /// Byte offset of the bracket that opened level `max + 1`.
    pub offset: usize,
    /// 1-based line of that bracket.
    pub line: usize,
    /// 1-based column, in bytes, of that bracket.
    pub column: usize,
}

/// Checks that `json` never has more than `max_depth` arrays and objects open at once.
pub fn check_nesting(json: &[u8], max_depth: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, &b) in json.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    let before = &json[..offset];
                    let line = before.iter().filter(|&&c| c == b'\n').count() + 1;
                    let line_start = before
                        .iter()
                        .rposition(|&c| c == b'\n')
                        .map_or(0, |p| p + 1);
                    return Err(TooDeep {
                        max: max_depth,
                        offset,
                        line,
                        column: offset - line_start + 1,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_events_pass_and_the_limit_is_exact() {
        let event = br#"{"batch":[{"type":"track","properties":{"items":[{"sku":"a"}]}}]}"#;
        assert_eq!(check_nesting(event, MAX_JSON_DEPTH), Ok(()));
        assert_eq!(check_nesting(event, 6), Ok(()));
        let err = check_nesting(event, 5).unwrap_err();
        assert_eq!((err.offset, err.line, err.column), (49, 1, 50));
        assert_eq!(&event[err.offset..err.offset + 1], b"{");
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let doc = br#"{"a":"[[[[[[\"{{{{{{{","b":["\\",["x"]]}"#;
        assert_eq!(check_nesting(doc, 3), Ok(()));
        assert!(check_nesting(doc, 2).is_err());
    }

    #[test]
    fn deep_documents_are_refused_with_their_line_and_column() {
        let mut doc = b"{\"type\":\"track\"}\n".to_vec();
        doc.extend(std::iter::repeat(b'[').take(100_000));
        doc.extend(std::iter::repeat(b']').take(100_000));
        let err = check_nesting(&doc, MAX_JSON_DEPTH).unwrap_err();
        assert_eq!((err.line, err.column), (2, 65));
        assert_eq!(
            err.to_string(),
            "JSON nested deeper than 64 levels at byte 81 (line 2, column 65); events are at most 64 arrays or objects deep"
        );
    }
}
