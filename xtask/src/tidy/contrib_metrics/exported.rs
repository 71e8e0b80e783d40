//! What ward exports to Prometheus, read from the file that registers it
//! (`crates/ward-server/src/metrics.rs`): each family's sample names and labels.
//!
//! A reading of the Rust text, not a compile (xtask links no ward code): it knows the shapes that
//! file uses, `Registry::with_prefix(PREFIX)`, `registry.register(NAME, HELP, m.FIELD.clone())`,
//! `register_with_unit(NAME, HELP, Unit::X, m.FIELD.clone())`, and fields typed
//! `Family<Labels, Counter | Gauge | Histogram>` or plain `Counter`, `Gauge<..>`, `Histogram`, whose
//! labels are the fields of `struct Labels`. What it cannot read it says, rather than guess.

use std::collections::BTreeMap;

/// One registered family of metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Family {
    /// The name its samples have: `ward_jobs_total`; a histogram's `_bucket`, `_sum` and
    /// `_count` names.
    pub(crate) names: Vec<String>,
    /// Its own labels, from its label set's fields (a histogram's `le` is not among them).
    pub(crate) labels: Vec<String>,
    /// Whether it is a histogram (its `_bucket` samples carry `le`).
    pub(crate) histogram: bool,
}

/// The families `source` registers.
///
/// # Errors
/// If it registers none, or a registration is not of a shape this reading knows: the text says
/// which, for whoever changed `metrics.rs` to update this reading.
pub(crate) fn read(source: &str) -> Result<Vec<Family>, String> {
    let tokens = tokens(source);
    let prefix = tokens
        .windows(3)
        .find_map(|w| match w {
            [Tok::Ident(f), Tok::Punct('('), Tok::Str(p)] if f == "with_prefix" => Some(p.clone()),
            _ => None,
        })
        .ok_or("no `Registry::with_prefix(\"...\")`")?;
    let structs = structs(&tokens);
    let mut families = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let Tok::Ident(call) = t else { continue };
        if !matches!(call.as_str(), "register" | "register_with_unit")
            || tokens.get(i + 1) != Some(&Tok::Punct('('))
        {
            continue;
        }
        let args = split_top_level(&tokens[i + 2..], ')');
        let name = match args.first() {
            Some([Tok::Str(name)]) => name.clone(),
            _ => {
                return Err(format!(
                    "a `{call}(` whose first argument is not a literal name"
                ));
            }
        };
        let unit = match call.as_str() {
            "register_with_unit" => Some(
                unit(args.get(2).copied().unwrap_or_default()).ok_or_else(|| {
                    format!("`{name}`: no `Unit::X` as register_with_unit's third argument")
                })?,
            ),
            _ => None,
        };
        // The metric handed over: `m.FIELD.clone()`, the field after the first dot.
        let field = args
            .last()
            .and_then(|a| {
                a.windows(2).find_map(|w| match w {
                    [Tok::Punct('.'), Tok::Ident(f)] => Some(f.clone()),
                    _ => None,
                })
            })
            .ok_or_else(|| format!("`{name}`: its metric is not `m.FIELD.clone()`"))?;
        let ty = structs
            .values()
            .find_map(|fields| fields.get(&field))
            .ok_or_else(|| format!("`{name}`: no struct declares its field `{field}`"))?;
        let (kind, label_set) = metric_type(ty)
            .ok_or_else(|| format!("`{name}`: field `{field}` is not a Counter, Gauge or Histogram (or a Family of one)"))?;
        let labels = match label_set {
            Some(set) => structs
                .get(&set)
                .ok_or_else(|| format!("`{name}`: its label set `{set}` is not a struct here"))?
                .keys()
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        let base = match &unit {
            Some(unit) => format!("{prefix}_{name}_{unit}"),
            None => format!("{prefix}_{name}"),
        };
        let names = match kind {
            "Counter" => vec![format!("{base}_total")],
            "Gauge" => vec![base],
            _ => ["bucket", "sum", "count"]
                .iter()
                .map(|s| format!("{base}_{s}"))
                .collect(),
        };
        families.push(Family {
            names,
            labels,
            histogram: kind == "Histogram",
        });
    }
    if families.is_empty() {
        return Err("no `registry.register(...)` found".into());
    }
    Ok(families)
}

/// The unit of `Unit::Bytes` in the tokens `arg`, as the exposition spells it: `bytes`.
fn unit(arg: &[Tok]) -> Option<String> {
    arg.windows(4).find_map(|w| match w {
        [
            Tok::Ident(u),
            Tok::Punct(':'),
            Tok::Punct(':'),
            Tok::Ident(v),
        ] if u == "Unit" => Some(v.to_lowercase()),
        _ => None,
    })
}

/// `Family<Labels, Kind, ..>` → (`Kind`, `Some(Labels)`); `Kind<..>` → (`Kind`, `None`).
fn metric_type(ty: &[Tok]) -> Option<(&'static str, Option<String>)> {
    let kind_of = |t: Option<&Tok>| match t {
        Some(Tok::Ident(k)) => ["Counter", "Gauge", "Histogram"]
            .into_iter()
            .find(|known| k == known),
        _ => None,
    };
    match ty {
        [Tok::Ident(f), Tok::Punct('<'), rest @ ..] if f == "Family" => {
            let args = split_top_level(rest, '>');
            let labels = match args.first() {
                Some([Tok::Ident(l)]) => l.clone(),
                _ => return None,
            };
            Some((kind_of(args.get(1)?.first())?, Some(labels)))
        }
        _ => Some((kind_of(ty.first())?, None)),
    }
}

/// Every `struct NAME { field: Type, .. }` in `tokens`: name → field → its type's tokens.
fn structs(tokens: &[Tok]) -> BTreeMap<String, BTreeMap<String, Vec<Tok>>> {
    let mut found = BTreeMap::new();
    for (i, w) in tokens.windows(3).enumerate() {
        let [Tok::Ident(s), Tok::Ident(name), Tok::Punct('{')] = w else {
            continue;
        };
        if s != "struct" {
            continue;
        }
        let mut fields = BTreeMap::new();
        for field in split_top_level(&tokens[i + 3..], '}') {
            // `name: Type`, after any attributes and visibility; a `::` is a path, not the colon.
            let colon = |j: usize| {
                field[j] == Tok::Punct(':')
                    && field.get(j + 1) != Some(&Tok::Punct(':'))
                    && (j == 0 || field[j - 1] != Tok::Punct(':'))
            };
            if let Some(at) = (1..field.len()).find(|&j| colon(j))
                && let Tok::Ident(f) = &field[at - 1]
            {
                fields.insert(f.clone(), field[at + 1..].to_vec());
            }
        }
        found.insert(name.clone(), fields);
    }
    found
}

/// `tokens` up to the `close` that ends them, split at the commas outside brackets.
fn split_top_level(tokens: &[Tok], close: char) -> Vec<&[Tok]> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Tok::Punct(c) if *c == close && depth == 0 => {
                if start < i {
                    parts.push(&tokens[start..i]);
                }
                return parts;
            }
            Tok::Punct('(' | '[' | '{' | '<') => depth += 1,
            Tok::Punct(')' | ']' | '}' | '>') => depth = depth.saturating_sub(1),
            Tok::Punct(',') if depth == 0 => {
                if start < i {
                    parts.push(&tokens[start..i]);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < tokens.len() {
        parts.push(&tokens[start..]);
    }
    parts
}

/// A token of Rust, as much as this reading needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// A string literal's content (escapes left as written).
    Str(String),
    Punct(char),
    /// `->`, kept whole so that its `>` closes no bracket.
    Arrow,
    /// A number, a char literal or a lifetime: nothing this reading looks at.
    Other,
}

/// `source` as tokens, without comments.
fn tokens(source: &str) -> Vec<Tok> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c == '"' || (c == 'r' && raw_string_at(&chars[i + 1..])) {
            // A plain or raw string: a raw one ends at `"` and as many `#` as it began with.
            let raw = c == 'r';
            if raw {
                i += 1;
            }
            let hashes = chars[i..].iter().take_while(|&&h| h == '#').count();
            i += hashes + 1;
            let start = i;
            loop {
                match chars.get(i) {
                    None => break,
                    Some('\\') if !raw => i += 2,
                    Some('"')
                        if chars[i + 1..].iter().take_while(|&&h| h == '#').count() >= hashes =>
                    {
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            out.push(Tok::Str(chars[start..i.min(chars.len())].iter().collect()));
            i += 1 + hashes;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            out.push(Tok::Other);
        } else if c == '\'' {
            // A char literal ('a', '\n') or a lifetime ('static).
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            out.push(Tok::Other);
        } else if c == '-' && next == Some('>') {
            out.push(Tok::Arrow);
            i += 2;
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

/// Whether `after_r`, what follows an `r`, opens a raw string (`"`, `#"`, `##"`...), not a raw
/// identifier (`r#type`).
fn raw_string_at(after_r: &[char]) -> bool {
    let hashes = after_r.iter().take_while(|&&h| h == '#').count();
    after_r.get(hashes) == Some(&'"')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = r##"
        #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct JobLabels {
            trigger: String,
            outcome: &'static str,
        }
        struct Metrics {
            registry: Registry,
            jobs: Family<JobLabels, Counter>,
            /// A doc comment with a `: colon`, "quotes" and a (paren.
            job_seconds: Family<TriggerLabel, Histogram, fn() -> Histogram>,
            seq: Gauge<u64, AtomicU64>,
            bytes: Gauge,
        }
        #[derive(EncodeLabelSet)]
        struct TriggerLabel { trigger: String }
        fn new() -> Metrics {
            let mut registry = Registry::with_prefix("ward");
            let m = Metrics { jobs: Family::default(), bytes: Gauge::default() };
            // registry.register("commented_out", "", m.jobs.clone());
            registry.register("jobs", "Jobs (by trigger, outcome), see http://x", m.jobs.clone());
            registry.register(
                "job_duration_seconds",
                "Time",
                m.job_seconds.clone(),
            );
            let r#type = 'x';
            registry.register("seq", r#"A 'quoted' "word""#, m.seq.clone());
            registry.register_with_unit("memory", "Mem", prometheus_client::registry::Unit::Bytes, m.bytes.clone());
        }
    "##;

    #[test]
    fn each_kind_of_registration_gives_its_sample_names_and_labels() {
        let families = read(SOURCE).unwrap();
        let names: Vec<_> = families.iter().map(|f| f.names.join(" ")).collect();
        assert_eq!(
            names,
            [
                "ward_jobs_total",
                "ward_job_duration_seconds_bucket ward_job_duration_seconds_sum ward_job_duration_seconds_count",
                "ward_seq",
                "ward_memory_bytes",
            ]
        );
        assert_eq!(families[0].labels, ["outcome", "trigger"]);
        assert!(!families[0].histogram);
        assert_eq!(families[1].labels, ["trigger"]);
        assert!(families[1].histogram);
        assert!(families[2].labels.is_empty());
    }

    #[test]
    fn a_registration_it_cannot_read_is_said_not_skipped() {
        assert_eq!(
            read("fn f() {}").unwrap_err(),
            "no `Registry::with_prefix(\"...\")`"
        );
        assert_eq!(
            read("Registry::with_prefix(\"w\");").unwrap_err(),
            "no `registry.register(...)` found"
        );
        let dynamic = "Registry::with_prefix(\"w\"); registry.register(NAME, \"h\", m.x.clone());";
        assert!(read(dynamic).unwrap_err().contains("not a literal name"));
        let untyped = "Registry::with_prefix(\"w\"); struct M { x: Vec<u8> } registry.register(\"x\", \"h\", m.x.clone());";
        assert!(read(untyped).unwrap_err().contains("not a Counter"));
    }

    #[test]
    fn wards_own_metrics_are_read() {
        let path = crate::workspace_root().join("crates/ward-server/src/metrics.rs");
        let families = read(&std::fs::read_to_string(path).unwrap()).unwrap();
        let names: Vec<&str> = families
            .iter()
            .flat_map(|f| f.names.iter().map(String::as_str))
            .collect();
        for expected in [
            "ward_jobs_total",
            "ward_job_duration_seconds_bucket",
            "ward_process_deaths_total",
            "ward_queue_depth",
            "ward_resident_memory_bytes",
            "ward_service_state",
        ] {
            assert!(names.contains(&expected), "{expected} not in {names:?}");
        }
    }
}
