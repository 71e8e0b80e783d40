//! The metric names and label names a PromQL expression uses, as far as the names go: not a
//! parser (promtool is, where installed), a scan that skips strings and knows which brackets
//! hold labels: a selector's `{label="..."}`, and the lists after `by`, `without`, `on`,
//! `ignoring`, `group_left` and `group_right`. Grafana's `$variables` are skipped.

/// What one expression names.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Uses {
    /// Every metric name (an identifier that is neither a function nor a keyword), in order.
    pub(crate) metrics: Vec<String>,
    /// A selector's labels: (the metric before the selector, if any, the label).
    pub(crate) matched: Vec<(Option<String>, String)>,
    /// The labels in grouping and matching lists.
    pub(crate) grouped: Vec<String>,
}

/// Words followed by a list of labels in parentheses.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Operators and modifiers spelled as words, and the aggregations (`sum by (x) (..)` puts a
/// word between one and its parenthesis): never metric names.
const KEYWORDS: [&str; 22] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// What `expr` names.
pub(crate) fn uses(expr: &str) -> Uses {
    let tokens = tokens(expr);
    let mut uses = Uses::default();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Tok::Word(w)
                if LABEL_LISTS.contains(&w.as_str())
                    && tokens.get(i + 1) == Some(&Tok::Open('(')) =>
            {
                i += 2;
                while let Some(t) = tokens.get(i) {
                    i += 1;
                    match t {
                        Tok::Word(label) => uses.grouped.push(label.clone()),
                        Tok::Close(')') => break,
                        _ => {}
                    }
                }
                continue;
            }
            Tok::Open('{') => {
                let metric = match i.checked_sub(1).map(|p| &tokens[p]) {
                    Some(Tok::Word(m)) => Some(m.clone()),
                    _ => None,
                };
                i += 1;
                // `label op "value"`, separated by commas: the word before each operator.
                while let Some(t) = tokens.get(i) {
                    i += 1;
                    match t {
                        Tok::Word(label) => uses.matched.push((metric.clone(), label.clone())),
                        Tok::Close('}') => break,
                        _ => {}
                    }
                }
                continue;
            }
            Tok::Word(w) => {
                let called = tokens.get(i + 1) == Some(&Tok::Open('('));
                let lower = w.to_lowercase();
                let keyword =
                    KEYWORDS.contains(&lower.as_str()) || LABEL_LISTS.contains(&lower.as_str());
                if !called && !keyword {
                    uses.metrics.push(w.clone());
                }
            }
            _ => {}
        }
        i += 1;
    }
    uses
}

/// The `{{label}}`s of a Grafana legend, or `{{ $labels.label }}`s of an alert's annotation.
pub(crate) fn template_labels(text: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        let inside = rest[start + 2..start + len].trim();
        // A legend's `{{label}}`; in an alert's template, every `$labels.label` in the action.
        if is_name(inside) {
            labels.push(inside.to_owned());
        }
        for (at, _) in inside.match_indices("$labels.") {
            let name: String = inside[at + "$labels.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            labels.push(name);
        }
        rest = &rest[start + len + 2..];
    }
    labels
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An identifier: a metric, label, function or keyword.
    Word(String),
    Open(char),
    Close(char),
    /// A string, a number, a duration, an operator or a `$variable`.
    Other,
}

fn tokens(expr: &str) -> Vec<Tok> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Other);
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            // `$name` or `${name}`, `${name:format}`.
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && word(chars[i]) {
                    i += 1;
                }
            }
            out.push(Tok::Other);
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (`5m`, `1e3`, `0x1f`).
            while i < chars.len() && (word(chars[i]) || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Other);
        } else if word(c) {
            let start = i;
            while i < chars.len() && word(chars[i]) {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else if matches!(c, '(' | '{' | '[') {
            out.push(Tok::Open(c));
            i += 1;
        } else if matches!(c, ')' | '}' | ']') {
            out.push(Tok::Close(c));
            i += 1;
        } else {
            if !c.is_whitespace() {
                out.push(Tok::Other);
            }
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn metrics_are_the_words_that_are_not_functions_or_keywords() {
        let u = uses(
            "histogram_quantile(0.99, sum by (le, trigger) (rate(ward_job_duration_seconds_bucket[$__rate_interval]))) \
             + max without (x) (up) + sum(ward_x) by (y) \
             / on (instance) group_left ward_queue_depth offset 5m or vector(0) and bool 1e3",
        );
        assert_eq!(
            u.metrics,
            owned(&[
                "ward_job_duration_seconds_bucket",
                "up",
                "ward_x",
                "ward_queue_depth"
            ])
        );
        assert_eq!(u.grouped, owned(&["le", "trigger", "x", "y", "instance"]));
    }

    #[test]
    fn selector_labels_belong_to_the_metric_before_them_and_strings_are_skipped() {
        let u = uses(
            r#"sum without (role) (ward_jobs_total{job=~"$job", outcome!="by (x) {y}", trigger=~"${trigger:regex}"}) + {__name__="up"}"#,
        );
        assert_eq!(u.metrics, owned(&["ward_jobs_total"]));
        let m = |metric: Option<&str>, label: &str| (metric.map(str::to_owned), label.to_owned());
        assert_eq!(
            u.matched,
            [
                m(Some("ward_jobs_total"), "job"),
                m(Some("ward_jobs_total"), "outcome"),
                m(Some("ward_jobs_total"), "trigger"),
                m(None, "__name__"),
            ]
        );
        assert_eq!(u.grouped, owned(&["role"]));
    }

    #[test]
    fn legends_and_annotations_name_their_labels() {
        assert_eq!(
            template_labels("p99 {{trigger}} on {{ instance }}"),
            owned(&["trigger", "instance"])
        );
        assert_eq!(
            template_labels(
                r#"{{ $value | printf "%.0f" }} {{ $labels.role }} ({{$labels.cause}})"#
            ),
            owned(&["role", "cause"])
        );
        assert!(template_labels("no labels {{").is_empty());
    }
}
