//! The one table `cargo xtask bench` prints and the JSON it writes: one row per figure, ward's
//! value beside its anchor's from the same run, the ratio, and the target when it has one.

use serde_json::{Value, json};

/// One figure of ward and, when there is one, the same figure of its anchor.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub part: &'static str,
    pub measure: String,
    pub unit: &'static str,
    /// One value, or p50/p95/p99; the ratio is taken on the first.
    pub ward: Vec<f64>,
    pub anchor: Option<(String, Vec<f64>)>,
    /// What the issue asks, and whether this run met it.
    pub target: Option<(String, bool)>,
}

impl Row {
    pub(crate) fn new(part: &'static str, measure: impl Into<String>, unit: &'static str) -> Row {
        Row {
            part,
            measure: measure.into(),
            unit,
            ward: Vec::new(),
            anchor: None,
            target: None,
        }
    }

    pub(crate) fn ward(mut self, values: Vec<f64>) -> Row {
        self.ward = values;
        self
    }

    pub(crate) fn anchor(mut self, name: impl Into<String>, values: Vec<f64>) -> Row {
        self.anchor = Some((name.into(), values));
        self
    }

    pub(crate) fn target(mut self, text: impl Into<String>, met: bool) -> Row {
        self.target = Some((text.into(), met));
        self
    }

    fn ratio(&self) -> Option<f64> {
        let (_, anchor) = self.anchor.as_ref()?;
        let (w, a) = (*self.ward.first()?, *anchor.first()?);
        (a > 0.0 && w.is_finite() && a.is_finite()).then(|| w / a)
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "part": self.part,
            "measure": self.measure,
            "unit": self.unit,
            "ward": self.ward,
            "anchor": self.anchor.as_ref().map(|(n, _)| n),
            "anchor_values": self.anchor.as_ref().map(|(_, v)| v),
            "ratio": self.ratio(),
            "target": self.target.as_ref().map(|(t, _)| t),
            "met": self.target.as_ref().map(|(_, m)| m),
        })
    }
}

/// Numbers with a precision that suits their size; several joined by `/`.
pub(crate) fn figures(values: &[f64], unit: &str) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let one = |v: f64| {
        if !v.is_finite() {
            "n/a".to_string()
        } else if v == 0.0 || v.abs() >= 100.0 {
            format!("{v:.0}")
        } else if v.abs() >= 10.0 {
            format!("{v:.1}")
        } else if v.abs() >= 0.1 {
            format!("{v:.2}")
        } else {
            format!("{v:.3}")
        }
    };
    let joined: Vec<String> = values.iter().map(|&v| one(v)).collect();
    format!("{} {unit}", joined.join("/"))
        .trim_end()
        .to_string()
}

/// The table, as printed.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| part | measure | ward | anchor | anchor value | ward/anchor | target |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for row in rows {
        let (anchor, value) = match &row.anchor {
            Some((name, values)) => (name.clone(), figures(values, row.unit)),
            None => ("-".into(), "-".into()),
        };
        let ratio = row.ratio().map_or("-".into(), |r| format!("{r:.2}×"));
        let target = match &row.target {
            Some((text, met)) => format!("{text}: {}", if *met { "met" } else { "**NOT met**" }),
            None => "-".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            row.part,
            row.measure,
            figures(&row.ward, row.unit),
            anchor,
            value,
            ratio,
            target
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_ratio_to_the_anchor_and_the_verdict() {
        let rows = [Row::new("dispatch", "exec job", "ms")
            .ward(vec![1.2])
            .anchor("plain spawn", vec![1.0])
            .target("≤ 1.2×", true)];
        let t = table(&rows);
        assert!(
            t.contains(
                "| dispatch | exec job | 1.20 ms | plain spawn | 1.00 ms | 1.20× | ≤ 1.2×: met |"
            ),
            "{t}"
        );
        assert_eq!(rows[0].to_json()["ratio"], json!(1.2));
    }

    #[test]
    fn figures_join_percentiles() {
        assert_eq!(figures(&[51.234, 53.0, 120.0], "ms"), "51.2/53.0/120 ms");
        assert_eq!(figures(&[f64::NAN], "%"), "n/a %");
        assert_eq!(figures(&[], "ms"), "-");
    }
}
