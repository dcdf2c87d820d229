//! Offer content filled for one customer: each field's template (`config::Template`)
//! rendered against the customer's profile at the decision, so every channel shows the
//! same words: "Nieuw binnen in {first(purchase.color)}" becomes "Nieuw binnen in zwart".
//!
//! A number is written without a fraction when it is whole, else with up to two
//! decimals; a value not set yet (a NaN number, an empty string) is written as nothing;
//! `{coupon}` is the customer's open coupon code for the offer, or the one the decision
//! issues, or nothing.

use crate::config::{Config, ContentDef, Piece, Template};
use crate::engine::eval::Eval;
use crate::model::decision::Content;

/// `def` filled for the customer `eval` reads, with `coupon` for `{coupon}`.
pub(super) fn render(
    config: &Config,
    def: &ContentDef,
    eval: &Eval<'_>,
    coupon: Option<&str>,
) -> Content {
    let field = |t: &Option<Template>| t.as_ref().map(|t| fill(config, t, eval, coupon));
    Content {
        title: field(&def.title),
        text: field(&def.text),
        url: field(&def.url),
        image: field(&def.image),
    }
}

fn fill(config: &Config, template: &Template, eval: &Eval<'_>, coupon: Option<&str>) -> String {
    let mut out = String::new();
    for piece in &template.pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Number(e) => out.push_str(&number(eval.number(e))),
            Piece::String(e) => {
                let code = eval.string(e);
                if code != 0 {
                    if let Some(s) = config.interner.resolve(code) {
                        out.push_str(&s);
                    }
                }
            }
            Piece::Coupon => out.push_str(coupon.unwrap_or("")),
        }
    }
    out
}

/// A number as content shows it: `3`, `12.5`, `0.33`; nothing when not a number.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return String::new();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn numbers_show_as_people_write_them() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(12.5), "12.5");
        assert_eq!(number(1.0 / 3.0), "0.33");
        assert_eq!(number(-2.0), "-2");
        assert_eq!(number(f64::NAN), "");
        assert_eq!(number(f64::INFINITY), "");
    }
}
