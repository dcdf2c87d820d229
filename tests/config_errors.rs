//! Broken configs and the errors they produce.
//!
//! Each test writes a small config with one thing wrong and checks the whole error:
//! the exact message, the line and column it points at, and the text the caret line
//! underlines. Rule errors must point inside the rule string, at the offending word.

use omnia::config::{Config, Diagnostic, Source};

/// A small valid config. Tests append the part under test with [`with`] or
/// [`segment`], or replace a piece of it.
const BASE: &str = r#"channels = ["web", "app"]

[identity]
namespaces = ["user", "anon"]

[attributes]
country = "string"
birth_year = "number"

[events.page_view]
properties = { url = "string" }

[events.purchase]
properties = { amount = "number", sku = "string" }
"#;

/// The line on which the text appended by [`with`] starts.
const EXTRA: usize = 16;

/// The line of the rule written by [`segment`]. Its first character is in column 9,
/// right after `rule = "`.
const RULE_LINE: usize = EXTRA + 1;

/// [`BASE`] followed by a blank line and `extra`.
fn with(extra: &str) -> String {
    format!("{BASE}\n{extra}")
}

/// [`BASE`] plus a segment `probe` whose rule is `rule`, as a basic string.
fn segment(rule: &str) -> String {
    with(&format!("[segments.probe]\nrule = \"{rule}\"\n"))
}

/// Every error the config produces; panics if it is valid.
fn diagnostics(text: &str) -> Vec<Diagnostic> {
    match Config::from_source(&Source::new("bad.toml", text)) {
        Ok(_) => panic!("config was accepted, but it is broken:\n{text}"),
        Err(e) => e.diagnostics,
    }
}

/// What the caret line underlines.
fn underlined(d: &Diagnostic) -> String {
    d.source_line
        .chars()
        .skip(d.column - 1)
        .take(d.width)
        .collect()
}

/// Checks that `text` fails with exactly one error, with this message, at this line
/// and column, underlining exactly `under`. Returns it for further checks.
#[track_caller]
fn assert_error(text: &str, message: &str, line: usize, column: usize, under: &str) -> Diagnostic {
    let all = diagnostics(text);
    let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(
        all.len(),
        1,
        "expected one error, got:\n{}",
        shown.join("\n\n")
    );
    let d = all.into_iter().next().unwrap();
    assert_eq!(d.message, message, "\n{d}");
    assert_eq!((d.line, d.column), (line, column), "position of:\n{d}");
    assert_eq!(underlined(&d), under, "underlined text of:\n{d}");
    assert_eq!(d.file, "bad.toml");
    d
}

// ---------------------------------------------------------------------------------
// The TOML layer: unknown keys and wrong types, reported by serde with their span.

#[test]
fn unknown_top_level_field() {
    let text = format!("chanels = [\"web\"]\n{BASE}");
    let d = assert_error(
        &text,
        "unknown field `chanels`, expected one of `channels`, `engine`, `identity`, \
         `attributes`, `events`, `segments`, `scores`, `storage`, `privacy`, `security`, `decisions`, `offers`, `experiments`, `goals`, `triggers`",
        1,
        1,
        "chanels",
    );
    assert_eq!(
        d.to_string(),
        "\
error: unknown field `chanels`, expected one of `channels`, `engine`, `identity`, `attributes`, `events`, `segments`, `scores`, `storage`, `privacy`, `security`, `decisions`, `offers`, `experiments`, `goals`, `triggers`
 --> bad.toml:1:1
  |
1 | chanels = [\"web\"]
  | ^^^^^^^"
    );
}

#[test]
fn misspelt_field_in_a_segment() {
    assert_error(
        &with("[segments.buyers]\nrul = \"ever(purchase)\"\n"),
        "unknown field `rul`, expected `description` or `rule`",
        EXTRA + 1,
        1,
        "rul",
    );
}

#[test]
fn misspelt_table_name() {
    assert_error(
        &with("[segment.buyers]\nrule = \"ever(purchase)\"\n"),
        "unknown field `segment`, expected one of `channels`, `engine`, `identity`, \
         `attributes`, `events`, `segments`, `scores`, `storage`, `privacy`, `security`, `decisions`, `offers`, `experiments`, `goals`, `triggers`",
        EXTRA,
        2,
        "segment",
    );
}

#[test]
fn unknown_property_type() {
    let text = BASE.replace("amount = \"number\"", "amount = \"int\"");
    assert_error(
        &text,
        "unknown variant `int`, expected one of `number`, `string`, `bool`",
        14,
        25,
        "\"int\"",
    );
}

#[test]
fn unknown_score_kind() {
    assert_error(
        &with("[scores.engagement]\nkind = \"linear\"\n"),
        "unknown variant `linear`, expected `decayed` or `logistic`",
        EXTRA + 1,
        8,
        "\"linear\"",
    );
}

#[test]
fn segment_declared_twice() {
    assert_error(
        &with(
            "[segments.buyers]\nrule = \"ever(purchase)\"\n\n\
             [segments.buyers]\nrule = \"ever(page_view)\"\n",
        ),
        "duplicate key",
        EXTRA + 3,
        11,
        "buyers",
    );
}

// ---------------------------------------------------------------------------------
// Engine settings, names and declarations.

#[test]
fn bad_duration_for_max_future_skew() {
    assert_error(
        &with("[engine]\nmax_future_skew = \"5min\"\n"),
        "bad duration for engine.max_future_skew: unknown duration unit `min` in `5min`: \
         expected s, m, h, d or w",
        EXTRA + 1,
        19,
        "\"5min\"",
    );
}

#[test]
fn shards_not_a_power_of_two() {
    let d = assert_error(
        &with("[engine]\nshards = 12\n"),
        "engine.shards is 12, but it must be a power of two from 1 to 256",
        EXTRA + 1,
        10,
        "12",
    );
    assert_eq!(
        d.help.as_deref(),
        Some("for example 16 (several shards per core keep lock contention low)")
    );
}

#[test]
fn duplicate_channel() {
    let text = BASE.replace(r#"["web", "app"]"#, r#"["web", "app", "web"]"#);
    assert_error(&text, "channel `web` is declared twice", 1, 27, "\"web\"");
}

#[test]
fn reserved_keyword_as_segment_name() {
    let d = assert_error(
        &with("[segments.and]\nrule = \"ever(purchase)\"\n"),
        "`and` is a keyword of the rule language and cannot name a segment",
        EXTRA,
        11,
        "and",
    );
    assert_eq!(
        d.help.as_deref(),
        Some("the keywords are: and, or, not, in, on, where, true, false, attr, context, any, first_seen")
    );
}

#[test]
fn segment_name_with_capitals() {
    assert_error(
        &with("[segments.BigSpenders]\nrule = \"ever(purchase)\"\n"),
        "`BigSpenders` is not a valid segment name",
        EXTRA,
        11,
        "BigSpenders",
    );
}

#[test]
fn decayed_score_without_half_life() {
    let d = assert_error(
        &with("[scores.engagement]\nkind = \"decayed\"\nweights = { purchase = 20 }\n"),
        "decayed score `engagement` needs a `half_life`",
        EXTRA,
        9,
        "engagement",
    );
    assert_eq!(d.help.as_deref(), Some("for example `half_life = \"7d\"`"));
}

#[test]
fn unknown_event_in_score_weights() {
    let d = assert_error(
        &with(
            "[scores.engagement]\nkind = \"decayed\"\nhalf_life = \"7d\"\n\
             weights = { purchase = 20, pageview = 1 }\n",
        ),
        "unknown event type `pageview` in the weights of score `engagement`",
        EXTRA + 3,
        28,
        "pageview",
    );
    assert_eq!(
        d.help.as_deref(),
        Some("declared event types: page_view, purchase")
    );
}

// ---------------------------------------------------------------------------------
// Rules: the caret points inside the rule string, at the offending word.

#[test]
fn unknown_event_type_in_a_rule() {
    let d = assert_error(
        &segment("count(purchse, 30d) > 0"),
        "unknown event type `purchse`",
        RULE_LINE,
        15,
        "purchse",
    );
    assert_eq!(
        d.to_string(),
        "\
error: unknown event type `purchse`
  --> bad.toml:17:15
   |
17 | rule = \"count(purchse, 30d) > 0\"
   |               ^^^^^^^
   = help: declared event types: page_view, purchase"
    );
}

#[test]
fn unknown_channel_after_on() {
    let d = assert_error(
        &segment("count(purchase on store, 30d) > 0"),
        "unknown channel `store`",
        RULE_LINE,
        27,
        "store",
    );
    assert_eq!(d.help.as_deref(), Some("declared channels: web, app"));
}

#[test]
fn unknown_property_in_a_where_filter() {
    let d = assert_error(
        &segment("count(purchase where price > 10, 30d) > 0"),
        "event type `purchase` has no property `price`",
        RULE_LINE,
        30,
        "price",
    );
    assert_eq!(d.help.as_deref(), Some("its properties are: amount, sku"));
}

#[test]
fn sum_over_a_string_property() {
    assert_error(
        &segment("sum(purchase.sku, 30d) > 100"),
        "property `sku` of `purchase` is not a number, so it cannot be summed",
        RULE_LINE,
        22,
        "sku",
    );
}

#[test]
fn string_attribute_compared_with_less_than() {
    // A literal (single-quoted) TOML string holds the rule's own double quotes
    // without escapes, so positions map exactly.
    assert_error(
        &with("[segments.probe]\nrule = 'attr.country < \"NL\"'\n"),
        "strings can only be compared with `==` and `!=`, not `<`",
        RULE_LINE,
        9,
        "attr.country < \"NL\"",
    );
}

#[test]
fn string_attribute_compared_with_a_number() {
    assert_error(
        &segment("attr.country > 5"),
        "cannot compare a string with a number",
        RULE_LINE,
        9,
        "attr.country > 5",
    );
}

#[test]
fn window_without_a_unit() {
    let d = assert_error(
        &segment("count(purchase, 30) > 0"),
        "a window needs a unit",
        RULE_LINE,
        25,
        "30",
    );
    assert_eq!(
        d.help.as_deref(),
        Some("write for example `30d`, `12h` or `1h`")
    );
}

#[test]
fn window_that_does_not_split_into_whole_second_buckets() {
    // 15m is 900s, and 900 is not a multiple of the default 8 buckets.
    assert_error(
        &segment("count(purchase, 15m) > 0"),
        "a window of 15m cannot be split into 8 buckets of whole seconds",
        RULE_LINE,
        9,
        "count(purchase, 15m)",
    );
}

#[test]
fn unknown_function() {
    let d = assert_error(
        &segment("cnt(purchase, 30d) > 0"),
        "unknown function `cnt`",
        RULE_LINE,
        9,
        "cnt",
    );
    assert_eq!(
        d.help.as_deref(),
        Some("the functions are count, sum, since, ever, first, last, top, active_channels, score, in, has_key, min, max")
    );
}

#[test]
fn single_equals_instead_of_double() {
    let d = assert_error(
        &segment("attr.birth_year = 1990"),
        "`=` is not an operator in rules",
        RULE_LINE,
        25,
        "=",
    );
    assert_eq!(d.help.as_deref(), Some("compare with `==`"));
}

#[test]
fn rule_that_is_a_number_not_a_condition() {
    assert_error(
        &segment("42"),
        "this rule is a number, but a segment rule must be a condition",
        RULE_LINE,
        9,
        "42",
    );
}

#[test]
fn empty_rule() {
    // Nothing to underline: the caret sits on the closing quote.
    assert_error(&segment(""), "the rule is empty", RULE_LINE, 9, "\"");
}

#[test]
fn two_conditions_without_and() {
    let d = assert_error(
        &segment("ever(purchase) ever(page_view)"),
        "unexpected `ever` after the end of the expression",
        RULE_LINE,
        24,
        "ever",
    );
    assert_eq!(
        d.help.as_deref(),
        Some("join conditions with `and` or `or`")
    );
}

#[test]
fn bare_attribute_name_suggests_attr_prefix() {
    let d = assert_error(
        &with("[segments.probe]\nrule = 'country == \"NL\"'\n"),
        "unknown name `country`",
        RULE_LINE,
        9,
        "country",
    );
    assert_eq!(
        d.help.as_deref(),
        Some("for the profile attribute write `attr.country`")
    );
}

#[test]
fn segment_cycle_through_in() {
    let d = assert_error(
        &with("[segments.a]\nrule = \"in(b)\"\n\n[segments.b]\nrule = \"in(a)\"\n"),
        "a cycle of dependencies: segment `a` -> segment `b` -> segment `a`",
        EXTRA + 1,
        8,
        "\"in(b)\"",
    );
    assert_eq!(
        d.help.as_deref(),
        Some("nothing can depend on itself through `in(...)` or `score(...)`; break the cycle")
    );
}

#[test]
fn score_feature_that_is_not_a_number() {
    assert_error(
        &with(
            "[scores.propensity]\nkind = \"logistic\"\nintercept = -3.0\nfeatures = [\n  \
             { expr = \"min(count(purchase, 30d), 10)\", weight = 0.5 },\n  \
             { expr = \"attr.country\", weight = 1.0 },\n]\n",
        ),
        "expected a number here, found a string",
        EXTRA + 5,
        13,
        "attr.country",
    );
}

// ---------------------------------------------------------------------------------
// Rule positions in other string forms.

#[test]
fn rule_in_a_multi_line_triple_quoted_string() {
    // The newline right after `"""` is not part of the value; positions still map.
    let text = with(
        "[segments.probe]\nrule = \"\"\"\ncount(purchase, 30d) > 0\n  and count(page_veiw, 1d) > 2\n\"\"\"\n",
    );
    let d = assert_error(
        &text,
        "unknown event type `page_veiw`",
        EXTRA + 3,
        13,
        "page_veiw",
    );
    assert_eq!(
        d.to_string(),
        "\
error: unknown event type `page_veiw`
  --> bad.toml:19:13
   |
19 |   and count(page_veiw, 1d) > 2
   |             ^^^^^^^^^
   = help: declared event types: page_view, purchase"
    );
}

#[test]
fn rule_in_a_multi_line_literal_string() {
    let text =
        with("[segments.probe]\nrule = '''\nattr.country == \"NL\"\n  and ever(purchse)'''\n");
    assert_error(
        &text,
        "unknown event type `purchse`",
        EXTRA + 3,
        12,
        "purchse",
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    // `é` is two bytes but one column.
    let text = with("[segments.probe]\nrule = 'attr.country == \"é\" and ever(purchse)'\n");
    assert_error(
        &text,
        "unknown event type `purchse`",
        RULE_LINE,
        38,
        "purchse",
    );
}

#[test]
fn rule_with_escapes_points_at_the_whole_string() {
    // With `\"` escapes the rule text is not a slice of the file, so the error falls
    // back to underlining the whole TOML string.
    assert_error(
        &segment(r#"attr.country == \"NL\" and ever(purchse)"#),
        "unknown event type `purchse`",
        RULE_LINE,
        8,
        r#""attr.country == \"NL\" and ever(purchse)""#,
    );
}

#[test]
fn rule_in_a_multi_line_string_with_crlf_line_endings() {
    let text = with(
        "[segments.probe]\nrule = \"\"\"\ncount(purchase, 30d) > 0\n  and count(page_veiw, 1d) > 2\n\"\"\"\n",
    )
    .replace('\n', "\r\n");
    assert_error(
        &text,
        "unknown event type `page_veiw`",
        EXTRA + 3,
        13,
        "page_veiw",
    );
}

// ---------------------------------------------------------------------------------
// All errors at once.

#[test]
fn independent_errors_are_all_reported_in_file_order() {
    // The engine table comes last in the file but is validated first: the report must
    // still be in file order.
    let text = r#"channels = ["web", "app", "web"]

[identity]
namespaces = ["user", "anon"]

[events.page_view]
properties = { url = "string" }

[events.purchase]
properties = { amount = "number", sku = "string", in = "number" }

[segments.buyers]
rule = "count(purchse, 30d) > 0"

[segments.on]
rule = "sum(purchase.sku, 30d) > 100"

[scores.engagement]
kind = "decayed"
weights = { page_view = 1, purchase = 20 }

[engine]
shards = 12
max_future_skew = "5min"
"#;
    let found: Vec<(String, usize, usize, String)> = diagnostics(text)
        .iter()
        .map(|d| (d.message.clone(), d.line, d.column, underlined(d)))
        .collect();
    let expected = [
        ("channel `web` is declared twice", 1, 27, "\"web\""),
        (
            "`in` is a keyword of the rule language and cannot name a property",
            10,
            51,
            "in",
        ),
        ("unknown event type `purchse`", 13, 15, "purchse"),
        (
            "`on` is a keyword of the rule language and cannot name a segment",
            15,
            11,
            "on",
        ),
        (
            "property `sku` of `purchase` is not a number, so it cannot be summed",
            16,
            22,
            "sku",
        ),
        (
            "decayed score `engagement` needs a `half_life`",
            18,
            9,
            "engagement",
        ),
        (
            "engine.shards is 12, but it must be a power of two from 1 to 256",
            23,
            10,
            "12",
        ),
        (
            "bad duration for engine.max_future_skew: unknown duration unit `min` in `5min`: \
             expected s, m, h, d or w",
            24,
            19,
            "\"5min\"",
        ),
    ]
    .map(|(m, l, c, u)| (m.to_string(), l, c, u.to_string()));
    assert_eq!(found, expected);

    let shown = Config::from_source(&Source::new("bad.toml", text))
        .unwrap_err()
        .to_string();
    assert!(shown.ends_with("\n\n8 errors"), "{shown}");
    assert!(
        shown.starts_with("error: channel `web` is declared twice\n --> bad.toml:1:27\n"),
        "{shown}"
    );
}

#[test]
fn cycle_among_scores_points_at_the_score() {
    let text = with(
        "[segments.probe]\nrule = \"count(purchase, 30d) > 0\"\n\n[scores.p]\nkind = \"logistic\"\nintercept = 0.0\nfeatures = [{ expr = \"score(q)\", weight = 1.0 }]\n\n[scores.q]\nkind = \"logistic\"\nintercept = 0.0\nfeatures = [{ expr = \"score(p)\", weight = 1.0 }]\n",
    );
    assert_error(
        &text,
        "a cycle of dependencies: score `p` -> score `q` -> score `p`",
        EXTRA + 3,
        9,
        "p",
    );
}

#[test]
fn a_cycle_is_reported_together_with_other_errors() {
    // Cycles are found among the rules that compile, so the other error is elsewhere.
    let text = with(
        "[segments.a]\nrule = \"in(b)\"\n\n[segments.b]\nrule = \"in(a)\"\n\n[segments.c]\nrule = \"count(purchse, 1d) > 0\"\n",
    );
    let all = diagnostics(&text);
    let found: Vec<(&str, usize)> = all.iter().map(|d| (d.message.as_str(), d.line)).collect();
    assert_eq!(
        found,
        vec![
            (
                "a cycle of dependencies: segment `a` -> segment `b` -> segment `a`",
                EXTRA + 1
            ),
            ("unknown event type `purchse`", EXTRA + 7),
        ]
    );
}

#[test]
fn keyword_names_use_the_right_article() {
    assert_error(
        &BASE.replace("[events.page_view]", "[events.and]"),
        "`and` is a keyword of the rule language and cannot name an event type",
        10,
        9,
        "and",
    );
}

#[test]
fn duration_with_a_space_before_its_unit() {
    assert_error(
        &with("[engine]\nmax_future_skew = \"5 m\"\n"),
        "bad duration for engine.max_future_skew: `5 m` has a space before its unit: write it without one, as in `5m`",
        EXTRA + 1,
        19,
        "\"5 m\"",
    );
}

#[test]
fn comparing_two_string_constants() {
    let d = assert_error(
        &with("[segments.probe]\nrule = '\"a\" == \"b\"'\n"),
        "both sides are string constants, so this comparison never changes",
        RULE_LINE,
        9,
        "\"a\" == \"b\"",
    );
    assert!(d.help.unwrap().contains("attr.NAME"));
}

#[test]
fn single_quotes_in_a_rule_get_a_hint() {
    let d = assert_error(
        &segment("attr.country == 'NL'"),
        "unexpected character `'`",
        RULE_LINE,
        25,
        "'",
    );
    assert_eq!(
        d.help.as_deref(),
        Some("strings in rules use double quotes: `\"NL\"`")
    );
}

#[test]
fn attributes_inside_a_where_filter_are_rejected() {
    let d = assert_error(
        &with("[segments.probe]\nrule = 'count(purchase where attr.country == \"NL\", 30d) > 0'\n"),
        "a `where` filter can only test the event's own properties, not the profile attribute `country`",
        RULE_LINE,
        30,
        "attr.country",
    );
    assert_eq!(
        d.help.as_deref(),
        Some("move the attribute test out of the filter and join it with `and`")
    );
}

#[test]
fn comparing_an_event_property_with_another_string() {
    assert_error(
        &segment("count(purchase where sku == sku, 30d) > 0"),
        "an event property can only be compared with a string constant",
        RULE_LINE,
        30,
        "sku == sku",
    );
}

// Offers, experiments and decision settings.

#[test]
fn offer_rule_naming_an_unknown_segment() {
    let text = with("[offers.promo]\nrule = \"in(vips)\"\n");
    let d = assert_error(&text, "unknown segment `vips`", EXTRA + 1, 12, "vips");
    assert_eq!(d.help.as_deref(), Some("declared segments: (none)"));
}

#[test]
fn context_fields_are_only_for_offer_rules() {
    let text = with(
        "[decisions]\ncontext = { page = \"string\" }\n\n[segments.probe]\nrule = 'context.page == \"x\"'\n",
    );
    assert_error(
        &text,
        "`context.page` is only known to offer rules",
        EXTRA + 4,
        9,
        "context.page",
    );
}

#[test]
fn an_undeclared_context_field_in_an_offer_rule() {
    let text = with("[offers.promo]\nrule = 'context.store == \"x\"'\n");
    let d = assert_error(
        &text,
        "unknown context field `store`",
        EXTRA + 1,
        17,
        "store",
    );
    assert!(d.help.is_some());
}

#[test]
fn value_and_weight_are_only_known_in_rank() {
    let text = with("[offers.promo]\nrule = \"value > 3\"\n");
    let d = assert_error(&text, "unknown name `value`", EXTRA + 1, 9, "value");
    assert!(
        d.help
            .as_deref()
            .is_some_and(|h| h.contains("only known in `rank`")),
        "{d}"
    );
    let ok =
        with("[offers.promo]\nvalue = 4\nweight = 2\nrank = \"value * weight + propensity\"\n");
    assert!(Config::from_source(&Source::new("ok.toml", ok)).is_ok());
}

#[test]
fn offer_on_an_unknown_channel() {
    let text = with("[offers.promo]\nchannels = [\"web\", \"tv\"]\n");
    assert_error(
        &text,
        "unknown channel `tv` in offers.promo.channels",
        EXTRA + 1,
        20,
        "\"tv\"",
    );
}

#[test]
fn a_budget_must_count_one_thing() {
    let text = with("[offers.promo]\nbudget = { accepts = 5, impressions = 9 }\n");
    let d = assert_error(
        &text,
        "the budget of offer `promo` must count exactly one of `accepts` or `impressions`",
        EXTRA + 1,
        10,
        "{ accepts = 5, impressions = 9 }",
    );
    assert!(d.help.is_some());
}

#[test]
fn a_cap_needs_a_positive_window_and_a_sane_count() {
    let text = with("[offers.promo]\ncaps = [{ impressions = 0, per = \"1d\" }]\n");
    assert_error(
        &text,
        "a cap allows from 1 to 255 impressions, not 0",
        EXTRA + 1,
        25,
        "0",
    );
}

#[test]
fn an_unknown_propensity_score() {
    let text = with("[offers.promo]\npropensity = \"affinity\"\n");
    assert_error(
        &text,
        "unknown score `affinity` in offers.promo.propensity",
        EXTRA + 1,
        14,
        "\"affinity\"",
    );
}

#[test]
fn the_fallback_must_be_a_declared_offer() {
    let text = with("[decisions]\nfallback = \"nothing\"\n\n[offers.promo]\nvalue = 1\n");
    let d = assert_error(
        &text,
        "unknown offer `nothing` in decisions.fallback",
        EXTRA + 1,
        12,
        "\"nothing\"",
    );
    assert_eq!(d.help.as_deref(), Some("declared offers: promo"));
}

#[test]
fn feedback_events_must_be_declared_event_types_of_known_kinds() {
    let text =
        with("[decisions]\nfeedback_events = { impression = \"seen\", like = \"page_view\" }\n");
    let all = diagnostics(&text);
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "unknown event type `seen` for impression feedback",
            "`like` is not a kind of feedback"
        ]
    );
}

#[test]
fn experiment_arms_must_name_declared_offers_and_carry_weight() {
    let text = with(
        "[offers.promo]\nvalue = 1\n\n[experiments.test]\narms = [{ name = \"a\", weight = 0 }, { name = \"b\", weight = 0, offers = [\"promo\", \"ghost\"] }]\n",
    );
    let all = diagnostics(&text);
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "experiment `test` needs at least one arm with a weight above 0",
            "unknown offer `ghost` in an experiment arm"
        ]
    );
}

#[test]
fn a_coupon_prefix_is_plain() {
    let text = with("[offers.promo]\ncoupon = { prefix = \"cart 10\", valid = \"14d\" }\n");
    assert_error(
        &text,
        "coupon prefix `cart 10` must be 1 to 16 characters of A-Z, 0-9 and `_`",
        EXTRA + 1,
        21,
        "\"cart 10\"",
    );
}

#[test]
fn a_coupon_code_length_and_its_channels_are_checked() {
    let text = with(
        "[offers.promo]\ncoupon = { prefix = \"P\", valid = \"14d\", length = 20, channels = [\"web\", \"till\"] }\n",
    );
    let all = diagnostics(&text);
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "a coupon code's `length` must be 8 to 12 characters, not 20",
            "unknown channel `till` in offers.promo.coupon.channels"
        ]
    );
    assert_eq!(
        (all[0].line, underlined(&all[0]).as_str()),
        (EXTRA + 1, "20")
    );
    let empty =
        with("[offers.promo]\ncoupon = { prefix = \"P\", valid = \"14d\", channels = [] }\n");
    assert_error(
        &empty,
        "the coupon of offer `promo` lists no channels",
        EXTRA + 1,
        52,
        "[]",
    );
}

#[test]
fn a_redemption_event_carries_the_code_as_a_string_and_the_order_value_as_a_number() {
    let text = with(
        "[events.used]\nproperties = { coupon = \"number\", order_value = \"string\" }\n\n[decisions]\nfeedback_events = { redeem = \"used\" }\n",
    );
    let all = diagnostics(&text);
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "event type `used` declares `coupon` as number, but feedback events carry the coupon code as a string",
            "event type `used` declares `order_value` as string, but feedback events carry a redemption's order value as a number"
        ]
    );
}

#[test]
fn more_than_255_experiments() {
    let experiments: String = (0..256)
        .map(|i| format!("[experiments.e{i}]\narms = [{{ name = \"a\", weight = 1 }}]\n"))
        .collect();
    let text = with(&format!("[offers.promo]\nvalue = 1\n\n{experiments}"));
    // The 256th experiment's name, on its own table header.
    let line = EXTRA + 3 + 255 * 2;
    assert_error(
        &text,
        "256 experiments: at most 255; end experiments that have answered their question",
        line,
        14,
        "e255",
    );
}

// ---------------------------------------------------------------------------------
// Aliases: other names trackers send event types and properties by.

#[test]
fn an_event_alias_that_names_another_event_type_is_an_error() {
    // BASE's purchase is on lines 13-14; the alias is on the line after `[events.cart]`.
    assert_error(
        &with("[events.cart]\naliases = [\"Product Added\", \"purchase\"]\n"),
        "alias `purchase` of event type `cart` already names event type `purchase`",
        EXTRA + 1,
        29,
        "\"purchase\"",
    );
    assert_error(
        &with("[events.cart]\naliases = [\"Product Added\"]\n[events.basket]\naliases = [\"Product Added\"]\n"),
        "alias `Product Added` of event type `basket` already names event type `cart`",
        EXTRA + 3,
        12,
        "\"Product Added\"",
    );
    assert_error(
        &with("[events.cart]\naliases = [\" \"]\n"),
        "alias ` ` of event type `cart` is empty",
        EXTRA + 1,
        12,
        "\" \"",
    );
}

#[test]
fn a_property_alias_must_be_of_a_declared_property_and_name_one_property() {
    let text = BASE.replace(
        "properties = { amount = \"number\", sku = \"string\" }",
        "properties = { amount = \"number\", sku = \"string\" }\nproperty_aliases = { amont = [\"revenue\"] }",
    );
    let d = assert_error(
        &text,
        "property_aliases of event type `purchase` names `amont`, which is not one of its properties",
        15,
        22,
        "amont",
    );
    assert_eq!(d.help.as_deref(), Some("its properties are: amount, sku"));
    let text = BASE.replace(
        "properties = { amount = \"number\", sku = \"string\" }",
        "properties = { amount = \"number\", sku = \"string\" }\nproperty_aliases = { amount = [\"revenue\", \"sku\"] }",
    );
    assert_error(
        &text,
        "alias `sku` of property `amount` of event type `purchase` already names property `sku`",
        15,
        43,
        "\"sku\"",
    );
}

// ---------------------------------------------------------------------------------
// Triggers.

/// [`BASE`] with a segment `buyers` and a trigger `thanks` whose table is `body`; the
/// trigger's first key is on line `EXTRA + 4`.
fn trigger(body: &str) -> String {
    with(&format!(
        "[segments.buyers]\nrule = \"ever(purchase)\"\n\n[triggers.thanks]\n{body}"
    ))
}

#[test]
fn a_trigger_on_an_unknown_segment() {
    assert_error(
        &trigger("on = \"enter byers\"\nchannel = \"app\"\nwebhook = { url = \"http://127.0.0.1:9/x\" }\n"),
        "triggers.thanks.on names `byers`, which is not a segment",
        EXTRA + 4,
        6,
        "\"enter byers\"",
    );
}

#[test]
fn a_trigger_on_neither_enter_nor_exit() {
    assert_error(
        &trigger("on = \"join buyers\"\nchannel = \"app\"\nwebhook = { url = \"http://127.0.0.1:9/x\" }\n"),
        "triggers.thanks.on is `join buyers`: expected `enter SEGMENT` or `exit SEGMENT`",
        EXTRA + 4,
        6,
        "\"join buyers\"",
    );
}

#[test]
fn a_misspelt_key_in_a_trigger() {
    let all = diagnostics(&trigger(
        "on = \"enter buyers\"\nchanel = \"app\"\nwebhook = { url = \"http://127.0.0.1:9/x\" }\n",
    ));
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(
        all[0]
            .message
            .starts_with("unknown field `chanel`, expected one of"),
        "{}",
        all[0]
    );
    assert_eq!(all[0].line, EXTRA + 5);
}

#[test]
fn every_error_of_a_trigger_is_reported_at_once_in_file_order() {
    let all = diagnostics(&trigger(
        "on = \"enter buyers\"\n\
         channel = \"email\"\n\
         rule = \"attr.contry == true\"\n\
         quiet_hours = \"21:00-25:00\"\n\
         max_attempts = 0\n\
         webhook = { url = \"http://mailer.example.com/x\", ca = \"ca.pem\", headers = { \"Content-Type\" = \"text/plain\" } }\n",
    ));
    let shown: Vec<(usize, &str)> = all.iter().map(|d| (d.line, d.message.as_str())).collect();
    let line = |n: usize| EXTRA + 4 + n;
    assert_eq!(
        shown,
        [
            (line(1), "triggers.thanks.channel is `email`, which is not a declared channel"),
            (line(2), "unknown attribute `contry`"),
            (line(3), "triggers.thanks.quiet_hours: `21:00-25:00` is not a span of hours: write `HH:MM-HH:MM` in 24-hour time, for example `21:00-08:00`"),
            (line(4), "triggers.thanks.max_attempts is 0: it must be 1 to 100"),
            (line(5), "triggers.thanks.webhook.ca is set, but triggers.thanks.webhook.url is not https"),
            (line(5), "header `Content-Type` in triggers.thanks.webhook.headers is set by omnia"),
        ],
        "{all:#?}"
    );
}

#[test]
fn an_https_webhooks_ca_that_cannot_be_read_is_an_error_naming_the_file() {
    let all = diagnostics(&trigger(
        "on = \"enter buyers\"\nchannel = \"app\"\nwebhook = { url = \"https://127.0.0.1:9/x\", ca = \"no-such-ca.pem\" }\n",
    ));
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(
        all[0].message.starts_with("triggers.thanks.webhook.ca: ")
            && all[0].message.contains("no-such-ca.pem"),
        "{}",
        all[0]
    );
    assert_eq!(underlined(&all[0]), "\"no-such-ca.pem\"");
}

#[test]
fn a_goal_names_a_declared_event_and_a_number_value() {
    let d = diagnostics(&with(
        "[goals.revenue]\nevent = \"purchase\"\nwindow = \"7d\"\nvalue = \"sku\"\n\n[goals.visit]\nevent = \"visit\"\nwindow = \"1d\"\n",
    ));
    let shown: Vec<String> = d.iter().map(|d| d.message.clone()).collect();
    assert_eq!(
        shown,
        [
            "the value of goal `revenue` must be a number property; `sku` of `purchase` is not",
            "goal `visit` counts the event type `visit`, which is not declared",
        ],
        "{shown:?}"
    );
}

#[test]
fn an_experiment_names_declared_goals_and_the_holdout_is_a_percentage() {
    let d = diagnostics(&with(
        "[decisions]\nholdout = 100\n\n[offers.o]\n\n[experiments.e]\narms = [{ name = \"a\", weight = 1 }]\ngoals = [\"bought\"]\n",
    ));
    let shown: Vec<String> = d.iter().map(|d| d.message.clone()).collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown[0].starts_with("decisions.holdout is 100"),
        "{shown:?}"
    );
    assert_eq!(
        shown[1],
        "experiment `e` is measured on goal `bought`, which is not declared"
    );
}
