//! The metrics rule of `cargo xtask tidy`: contrib's Grafana dashboard and Prometheus alert rules
//! name only metrics and labels ward exports, as `crates/ward-server/src/metrics.rs` registers
//! them ([`exported`]), so that a renamed metric fails tidy instead of leaving an empty panel or
//! an alert that never fires; and every family ward exports has a panel. Where `promtool` is
//! installed, each of the dashboard's expressions must parse and the alert rules must pass
//! `promtool check rules` and their own `promtool test rules`.
//!
//! Not here: how the panels look, or whether Grafana imports the file (no Grafana is at hand).

mod exported;
mod promql;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::Problem;
use exported::Family;

pub(crate) const DASHBOARD: &str = "contrib/grafana/ward.json";
pub(crate) const ALERTS: &str = "contrib/prometheus/ward-alerts.yml";
pub(crate) const ALERT_TESTS: &str = "contrib/prometheus/ward-alerts.test.yml";
const METRICS_SOURCE: &str = "crates/ward-server/src/metrics.rs";

pub(crate) const UNKNOWN_METRIC: &str =
    "names a metric ward does not export (crates/ward-server/src/metrics.rs registers them)";
pub(crate) const UNKNOWN_LABEL: &str = "names a label ward's metric does not have";
pub(crate) const UNSHOWN_METRIC: &str = "a metric ward exports has no panel on the dashboard";
pub(crate) const UNREADABLE: &str = "cannot be read for the metrics it names or registers";
pub(crate) const PROMTOOL_REJECTS: &str = "promtool rejects it";
pub(crate) const NO_PROMTOOL: &str = "promtool is not installed (Debian: apt-get install prometheus), and WARD_TEST_REQUIRE_TOOLS asks for it";

/// Labels every scraped series has, and the name's own.
const SCRAPE_LABELS: [&str; 3] = ["job", "instance", "__name__"];

/// Runs the rule on the workspace at `root`; a workspace without the dashboard and the alert
/// rules has nothing to check.
///
/// # Errors
/// If a file that exists cannot be read, or promtool cannot be run though it is installed.
pub(crate) fn check(root: &Path, problems: &mut Vec<Problem>) -> Result<()> {
    let has = |file: &str| root.join(file).is_file();
    if !has(DASHBOARD) && !has(ALERTS) {
        return Ok(());
    }
    let registered = read(root, METRICS_SOURCE)?;
    let families = match exported::read(&registered) {
        Ok(families) => families,
        Err(why) => {
            problems.push(problem(METRICS_SOURCE, None, UNREADABLE, why));
            return Ok(());
        }
    };
    let known = Known::new(&families);
    let mut panel_exprs = Vec::new();
    if has(DASHBOARD) {
        let text = read(root, DASHBOARD)?;
        match serde_json::from_str::<Value>(&text) {
            Ok(dashboard) => {
                let mut found = Found::default();
                found.collect(&dashboard);
                check_dashboard(&found, &known, &text, problems);
                panel_exprs = found.exprs();
            }
            Err(e) => problems.push(problem(
                DASHBOARD,
                Some(e.line()),
                UNREADABLE,
                e.to_string(),
            )),
        }
    }
    if has(ALERTS) {
        let text = read(root, ALERTS)?;
        let mut said =
            |rule, detail: String, line| problems.push(problem(ALERTS, line, rule, detail));
        for (line, expr) in alert_exprs(&text) {
            known.check(&promql::uses(&expr), &[], &mut |rule, detail, _| {
                said(rule, detail, Some(line))
            });
        }
        for label in promql::template_labels(&text) {
            if !known.any_label(&label) {
                said(
                    UNKNOWN_LABEL,
                    format!("$labels.{label}"),
                    line_of(&text, &label),
                );
            }
        }
    }
    promtool(root, &panel_exprs, problems)
}

/// What the dashboard's JSON holds that names metrics and labels.
#[derive(Debug, Default)]
struct Found {
    /// The panels' queries (`expr`) and their legends (`legendFormat`).
    targets: Vec<(String, String)>,
    /// The variables' `label_values(...)` queries.
    variables: Vec<String>,
}

impl Found {
    fn collect(&mut self, v: &Value) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(expr)) = map.get("expr") {
                    let legend = map.get("legendFormat").and_then(Value::as_str);
                    self.targets
                        .push((expr.clone(), legend.unwrap_or_default().to_owned()));
                    return;
                }
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("definition" | "query", Value::String(s))
                            if s.trim_start().starts_with("label_values(") =>
                        {
                            self.variables.push(s.clone());
                        }
                        _ => self.collect(v),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.collect(v)),
            _ => {}
        }
    }

    fn exprs(&self) -> Vec<String> {
        self.targets.iter().map(|(e, _)| e.clone()).collect()
    }
}

fn check_dashboard(found: &Found, known: &Known<'_>, text: &str, problems: &mut Vec<Problem>) {
    // Each problem once, at the first line naming what is wrong.
    let mut seen = BTreeSet::new();
    let mut said = |rule, detail: String, needle: &str| {
        if seen.insert((rule, detail.clone())) {
            problems.push(problem(DASHBOARD, line_of(text, needle), rule, detail));
        }
    };
    if found.targets.is_empty() {
        said(UNREADABLE, "no panel has an `expr`".into(), "\"panels\"");
    }
    let mut shown = BTreeSet::new();
    for (expr, legend) in &found.targets {
        let uses = promql::uses(expr);
        shown.extend(uses.metrics.iter().cloned());
        known.check(&uses, &promql::template_labels(legend), &mut said);
    }
    for query in &found.variables {
        // `label_values(SELECTOR, LABEL)`, or `label_values(LABEL)`.
        let inside = query
            .trim()
            .trim_start_matches("label_values(")
            .trim_end_matches(')');
        let (selector, label) = inside.rsplit_once(',').unwrap_or(("", inside));
        let mut uses = promql::uses(selector);
        let metric = uses.metrics.first().cloned();
        uses.matched.push((metric, label.trim().to_owned()));
        known.check(&uses, &[], &mut said);
    }
    for family in known.families {
        if !family.names.iter().any(|n| shown.contains(n)) {
            said(UNSHOWN_METRIC, family.names.join(", "), "\"panels\"");
        }
    }
}

/// The metrics ward exports, by sample name, and their labels.
struct Known<'a> {
    families: &'a [Family],
    by_name: BTreeMap<&'a str, &'a Family>,
}

impl<'a> Known<'a> {
    fn new(families: &'a [Family]) -> Known<'a> {
        let by_name = families
            .iter()
            .flat_map(|f| f.names.iter().map(move |n| (n.as_str(), f)))
            .collect();
        Known { families, by_name }
    }

    /// Whether some series of ward's may carry `label`.
    fn any_label(&self, label: &str) -> bool {
        SCRAPE_LABELS.contains(&label)
            || label == "le"
            || self
                .families
                .iter()
                .any(|f| f.labels.iter().any(|l| l == label))
    }

    /// Whether the series named `metric` may carry `label`.
    fn has_label(&self, metric: &str, label: &str) -> bool {
        let Some(family) = self.by_name.get(metric) else {
            // Its name is reported already.
            return true;
        };
        SCRAPE_LABELS.contains(&label)
            || family.labels.iter().any(|l| l == label)
            || (family.histogram && metric.ends_with("_bucket") && label == "le")
    }

    /// The labels the series of `metrics` may carry; `None` if none of them is ward's.
    fn labels_of(&self, metrics: &[String]) -> Option<BTreeSet<&str>> {
        let mut labels: BTreeSet<&str> = SCRAPE_LABELS.into();
        let mut any = false;
        for metric in metrics {
            if let Some(family) = self.by_name.get(metric.as_str()) {
                any = true;
                labels.extend(family.labels.iter().map(String::as_str));
                if family.histogram && metric.ends_with("_bucket") {
                    labels.insert("le");
                }
            }
        }
        any.then_some(labels)
    }

    /// Says, through `said(rule, detail, needle)`, each metric and label of `uses` (and of the
    /// `legend` shown for it) that ward does not export. A metric outside ward's names is one
    /// too: only Prometheus's own per target (`up`, `scrape_*`) may be shown beside them. A
    /// label grouped by or shown must be one of the expression's metrics.
    fn check(
        &self,
        uses: &promql::Uses,
        legend: &[String],
        said: &mut impl FnMut(&'static str, String, &str),
    ) {
        for metric in &uses.metrics {
            let prometheus_own = metric == "up" || metric.starts_with("scrape_");
            if !self.by_name.contains_key(metric.as_str()) && !prometheus_own {
                said(UNKNOWN_METRIC, metric.clone(), metric);
            }
        }
        for (metric, label) in &uses.matched {
            let ok = match metric {
                Some(m) => self.has_label(m, label),
                None => self.any_label(label),
            };
            if !ok {
                let detail = format!("{}{{{label}}}", metric.as_deref().unwrap_or(""));
                said(UNKNOWN_LABEL, detail, label);
            }
        }
        let Some(labels) = self.labels_of(&uses.metrics) else {
            // No metric of ward's: each is reported already.
            return;
        };
        let metrics = uses.metrics.join(", ");
        for label in &uses.grouped {
            if !labels.contains(label.as_str()) {
                said(
                    UNKNOWN_LABEL,
                    format!("by/on ({label}) of {metrics}"),
                    label,
                );
            }
        }
        for label in legend {
            if !labels.contains(label.as_str()) {
                let shown = format!("{{{{{label}}}}}");
                said(
                    UNKNOWN_LABEL,
                    format!("legend {shown} of {metrics}"),
                    &shown,
                );
            }
        }
    }
}

/// The alert rules' expressions, each with its line: `expr: TEXT`, quoted or not, or a block
/// (`expr: |`) of the lines indented deeper than `expr:`.
fn alert_exprs(yaml: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let value = value.trim();
        let expr = if value.starts_with('|') || value.starts_with('>') {
            lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            value.trim_matches(|c| c == '"' || c == '\'').to_owned()
        };
        found.push((i + 1, expr));
    }
    found
}

/// `promtool check rules` and `test rules` on the alert rules, and `check rules` on the
/// dashboard's `exprs` made recording rules; without promtool, a note (or, with
/// `WARD_TEST_REQUIRE_TOOLS` set, as in CI, a problem).
fn promtool(root: &Path, exprs: &[String], problems: &mut Vec<Problem>) -> Result<()> {
    let installed = Command::new("promtool").arg("--version").output().is_ok();
    if !installed {
        if std::env::var_os("WARD_TEST_REQUIRE_TOOLS").is_some() {
            problems.push(problem(ALERTS, None, NO_PROMTOOL, String::new()));
        } else {
            eprintln!(
                "tidy: promtool is not installed (Debian: apt-get install prometheus): \
                 the dashboard's expressions and the alert rules are not parsed"
            );
        }
        return Ok(());
    }
    let run = |args: &[&str]| -> Result<Option<String>> {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(root)
            .output()
            .with_context(|| format!("running promtool {}", args.join(" ")))?;
        Ok((!out.status.success()).then(|| {
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            said.trim().to_owned()
        }))
    };
    for (file, check) in [(ALERTS, "check"), (ALERT_TESTS, "test")] {
        if root.join(file).is_file()
            && let Some(said) = run(&[check, "rules", file])?
        {
            problems.push(problem(file, None, PROMTOOL_REJECTS, said));
        }
    }
    if exprs.is_empty() {
        return Ok(());
    }
    // The panels' queries as recording rules, each named after its place in the dashboard.
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| json!({ "record": format!("dashboard:expr_{}", i + 1), "expr": without_variables(e) }))
        .collect();
    let file = scratch_file();
    fs::write(
        &file,
        serde_json::to_vec(&json!({ "groups": [{ "name": DASHBOARD, "rules": rules }] }))?,
    )
    .with_context(|| format!("writing {}", file.display()))?;
    let said = run(&["check", "rules", &file.to_string_lossy()]);
    let _ = fs::remove_file(&file);
    if let Some(said) = said? {
        problems.push(problem(
            DASHBOARD,
            None,
            PROMTOOL_REJECTS,
            format!("its expressions in order, as dashboard:expr_N: {said}"),
        ));
    }
    Ok(())
}

/// A file of its own for each call, in the temporary directory: tests run tidy side by side.
fn scratch_file() -> PathBuf {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "ward-tidy-dashboard-{}-{}.json",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ))
}

/// `expr` with Grafana's variables put in as PromQL: a range for `$__rate_interval`,
/// `$__interval`, `$__range`; a number for their `_ms` and `_s` forms; `.*` for the dashboard's
/// own (they stand in regular expressions).
fn without_variables(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').unwrap_or(braced.len());
                let name = braced[..end].split(':').next().unwrap_or("");
                (name, end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        out.push_str(match name {
            "__rate_interval" | "__interval" | "__range" => "5m",
            n if n.starts_with("__") && (n.ends_with("_ms") || n.ends_with("_s")) => "300",
            _ => ".*",
        });
        rest = &after[len.min(after.len())..];
    }
    out.push_str(rest);
    out
}

fn read(root: &Path, file: &str) -> Result<String> {
    fs::read_to_string(root.join(file)).with_context(|| format!("reading {file}"))
}

/// The first line of `text` that contains `needle`, counted from 1.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

fn problem(path: &str, line: Option<usize>, rule: &'static str, detail: String) -> Problem {
    Problem {
        path: PathBuf::from(path),
        line,
        rule,
        detail: (!detail.is_empty()).then_some(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"
        struct JobLabels { trigger: String, outcome: &'static str }
        struct TriggerLabel { trigger: String }
        struct Metrics {
            jobs: Family<JobLabels, Counter>,
            seconds: Family<TriggerLabel, Histogram, fn() -> Histogram>,
            depth: Gauge,
        }
        fn new() {
            let mut registry = Registry::with_prefix("ward");
            registry.register("jobs", "Jobs", m.jobs.clone());
            registry.register("job_duration_seconds", "Time", m.seconds.clone());
            registry.register("queue_depth", "Waiting", m.depth.clone());
        }
    "#;

    /// A workspace with `METRICS` as ward's metrics.rs, and `dashboard` and `alerts` (when not
    /// empty) as contrib's.
    fn workspace(dashboard: &Value, alerts: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &[u8]| {
            let path = dir.path().join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        write(METRICS_SOURCE, METRICS.as_bytes());
        write(DASHBOARD, &serde_json::to_vec_pretty(dashboard).unwrap());
        if !alerts.is_empty() {
            write(ALERTS, alerts.as_bytes());
        }
        dir
    }

    fn panels(exprs: &[(&str, &str)]) -> Value {
        json!({
            "templating": { "list": [{ "type": "query", "name": "instance",
                "definition": "label_values(ward_queue_depth{job=~\"$job\"}, instance)" }] },
            "panels": exprs.iter().map(|(expr, legend)| json!({
                "type": "timeseries", "targets": [{ "expr": expr, "legendFormat": legend }],
            })).collect::<Vec<_>>(),
        })
    }

    const GOOD: [(&str, &str); 3] = [
        (
            "sum by (outcome) (rate(ward_jobs_total{job=~\"$job\", trigger=~\"$trigger\"}[$__rate_interval]))",
            "{{outcome}}",
        ),
        (
            "histogram_quantile(0.99, sum by (le, trigger) (rate(ward_job_duration_seconds_bucket[$__rate_interval])))",
            "p99 {{trigger}}",
        ),
        ("ward_queue_depth{instance=~\"$instance\"}", "{{instance}}"),
    ];

    /// The rule's findings, with promtool's left out: they depend on whether it is installed.
    fn findings(root: &Path) -> Vec<(&'static str, Option<String>)> {
        let mut problems = Vec::new();
        check(root, &mut problems).unwrap();
        problems
            .into_iter()
            .filter(|p| p.rule != PROMTOOL_REJECTS && p.rule != NO_PROMTOOL)
            .map(|p| (p.rule, p.detail))
            .collect()
    }

    #[test]
    fn a_dashboard_of_exported_metrics_and_labels_passes() {
        let dir = workspace(&panels(&GOOD), "");
        assert_eq!(findings(dir.path()), []);
    }

    #[test]
    fn a_renamed_metric_is_reported_at_its_line() {
        let mut exprs = GOOD.to_vec();
        exprs[2].0 = "ward_queue_length";
        let dir = workspace(&panels(&exprs), "");
        let mut problems = Vec::new();
        check(dir.path(), &mut problems).unwrap();
        let renamed = problems.iter().find(|p| p.rule == UNKNOWN_METRIC).unwrap();
        assert_eq!(renamed.detail.as_deref(), Some("ward_queue_length"));
        let text = fs::read_to_string(dir.path().join(DASHBOARD)).unwrap();
        let line = renamed.line.unwrap();
        assert!(
            text.lines()
                .nth(line - 1)
                .unwrap()
                .contains("ward_queue_length")
        );
        // ward_queue_depth is still named by the variable, but no panel shows it.
        assert_eq!(
            findings(dir.path()),
            [
                (UNKNOWN_METRIC, Some("ward_queue_length".into())),
                (UNSHOWN_METRIC, Some("ward_queue_depth".into())),
            ]
        );
    }

    #[test]
    fn a_label_the_metric_lacks_is_reported_wherever_it_is_named() {
        let exprs = [
            GOOD[0],
            GOOD[1],
            // `trigger` and `outcome` are labels of ward's, but not of the queue's depth.
            (
                "sum by (trigger) (ward_queue_depth{trigger=\"x\"})",
                "{{outcome}}",
            ),
        ];
        let dir = workspace(&panels(&exprs), "");
        assert_eq!(
            findings(dir.path()),
            [
                (UNKNOWN_LABEL, Some("ward_queue_depth{trigger}".into())),
                (
                    UNKNOWN_LABEL,
                    Some("by/on (trigger) of ward_queue_depth".into())
                ),
                (
                    UNKNOWN_LABEL,
                    Some("legend {{outcome}} of ward_queue_depth".into())
                ),
            ]
        );
    }

    #[test]
    fn alert_rules_are_held_to_the_same_names() {
        let alerts = "groups:\n  - name: ward\n    rules:\n      - alert: A\n        expr: ward_jobs_total{outcome=\"gave_up\"} > 0\n\
                      \x20       annotations:\n          summary: \"{{ $labels.trigger }} {{ $labels.service }}\"\n\
                      \x20     - alert: B\n        expr: |\n          sum by (le) (\n            ward_job_duration_seconds_bucket\n          ) > 0\n\
                      \x20       for: 5m\n";
        let dir = workspace(&panels(&GOOD), alerts);
        let mut problems = Vec::new();
        check(dir.path(), &mut problems).unwrap();
        let found: Vec<_> = problems
            .iter()
            .filter(|p| p.rule != PROMTOOL_REJECTS && p.rule != NO_PROMTOOL)
            .map(|p| (p.rule, p.detail.clone().unwrap(), p.line))
            .collect();
        assert_eq!(found, [(UNKNOWN_LABEL, "$labels.service".into(), Some(7))]);
        assert_eq!(
            alert_exprs(alerts),
            [
                (5, "ward_jobs_total{outcome=\"gave_up\"} > 0".into()),
                (9, "          sum by (le) (\n            ward_job_duration_seconds_bucket\n          ) > 0".into()),
            ]
        );
    }

    #[test]
    fn a_metrics_file_it_cannot_read_is_a_problem_not_a_pass() {
        let dir = workspace(&panels(&GOOD), "");
        fs::write(
            dir.path().join(METRICS_SOURCE),
            "fn nothing_registered() {}\n",
        )
        .unwrap();
        assert_eq!(
            findings(dir.path()),
            [(
                UNREADABLE,
                Some("no `Registry::with_prefix(\"...\")`".into())
            )]
        );
    }

    #[test]
    fn grafana_variables_become_promql() {
        assert_eq!(
            without_variables(
                "rate(x{a=~\"$job\", b=~\"${trigger:regex}\"}[$__rate_interval]) / $__range_s"
            ),
            "rate(x{a=~\".*\", b=~\".*\"}[5m]) / 300"
        );
    }

    /// promtool parses each panel's expression: a broken one is named by its place.
    #[test]
    fn an_expression_promtool_cannot_parse_is_reported() {
        if Command::new("promtool").arg("--version").output().is_err() {
            eprintln!("promtool is not installed (Debian: apt-get install prometheus): skipped");
            assert!(std::env::var_os("WARD_TEST_REQUIRE_TOOLS").is_none());
            return;
        }
        let mut exprs = GOOD.to_vec();
        exprs[2].0 = "sum(ward_queue_depth";
        let dir = workspace(&panels(&exprs), "");
        let mut problems = Vec::new();
        check(dir.path(), &mut problems).unwrap();
        let rejected: Vec<_> = problems
            .iter()
            .filter(|p| p.rule == PROMTOOL_REJECTS)
            .collect();
        assert_eq!(rejected.len(), 1, "{problems:?}");
        let said = rejected[0].detail.as_deref().unwrap();
        assert!(said.contains("dashboard:expr_3"), "{said}");
        assert_eq!(rejected[0].path, PathBuf::from(DASHBOARD));
    }
}
