//! The stress run's plot, an SVG written by hand: keeper and server RSS over time with the
//! faults marked, the deaths the run saw by cause on the same time axis, and the histogram of
//! write→job-start latencies on a log scale.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::check::RssSample;

const W: f64 = 900.0;
const PANEL_H: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
/// The space above each panel, for its title, and below it, for its axis labels.
const GAP: f64 = 60.0;

/// One mark's colour per cause, in the causes' order; past the last they repeat.
const CAUSE_COLOURS: [&str; 8] = [
    "#e63946", "#457b9d", "#f4a261", "#2a9d8f", "#9d4edd", "#6d6875", "#e9c46a", "#264653",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A death the run saw: one crash report.
#[derive(Debug, Clone, PartialEq)]
pub struct Death {
    /// When its report was written, seconds since the run began.
    pub t_s: f64,
    /// Its cause, as `check::cause_label` gives it: `native_crash SIGSEGV`, `exited 3`.
    pub cause: String,
    /// Who died, for the mark's tooltip: the role and the pid.
    pub who: String,
}

/// The SVG document: `windows` are (start s, end s, label) of the faults, `deaths` the crash
/// reports with their times.
pub fn svg(
    keeper: &[RssSample],
    server: &[RssSample],
    windows: &[(f64, f64, String)],
    deaths: &[Death],
    latencies_ms: &[u64],
) -> String {
    let mut s = String::new();
    // Room under the last panel for its axis labels.
    let height = 3.0 * (PANEL_H + GAP);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    // One time axis for the panels over time, so that a death lines up with its fault.
    let t_max = keeper
        .iter()
        .chain(server)
        .map(|p| p.t_s)
        .chain(windows.iter().map(|w| w.1))
        .chain(deaths.iter().map(|d| d.t_s))
        .fold(1.0, f64::max);
    let top = 30.0;
    rss_panel(&mut s, keeper, server, windows, t_max, top);
    deaths_panel(&mut s, deaths, windows, t_max, top + PANEL_H + GAP);
    latency_panel(&mut s, latencies_ms, top + 2.0 * (PANEL_H + GAP));
    s.push_str("</svg>\n");
    s
}

fn axes(s: &mut String, top: f64, title: &str) {
    let bottom = top + PANEL_H;
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        top - 10.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<path d="M{LEFT},{top} V{bottom} H{}" fill="none" stroke="#333"/>"##,
        W - RIGHT
    );
}

fn rss_panel(
    s: &mut String,
    keeper: &[RssSample],
    server: &[RssSample],
    windows: &[(f64, f64, String)],
    t_max: f64,
    top: f64,
) {
    axes(s, top, "RSS over time (MiB); faults shaded");
    let r_max = keeper
        .iter()
        .chain(server)
        .map(|p| p.rss_kib as f64 / 1024.0)
        .fold(1.0, f64::max)
        * 1.1;
    let x = |t: f64| time_x(t, t_max);
    let y = |mib: f64| top + PANEL_H - (mib / r_max) * PANEL_H;
    for (i, (from, to, label)) in windows.iter().enumerate() {
        let (x0, x1) = (x(*from), x(to.max(from + t_max / 400.0)));
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{PANEL_H}" fill="#f4a261" opacity="0.35"><title>{}</title></rect>"##,
            x1 - x0,
            escape(label)
        );
        let _ = writeln!(
            s,
            r##"<text x="{x0:.1}" y="{:.1}" font-size="9" fill="#a0522d">{}</text>"##,
            top + 10.0 + 10.0 * (i % 6) as f64,
            escape(label)
        );
    }
    for tick in 0..=4 {
        let mib = r_max * f64::from(tick) / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{mib:.1}</text>"#,
            LEFT - 6.0,
            y(mib) + 4.0
        );
    }
    time_ticks(s, t_max, top);
    for (series, colour, name) in [(keeper, "#2a9d8f", "keeper"), (server, "#264653", "server")] {
        // A new pid starts a new line: a restarted process is not joined to the dead one.
        let mut d = String::new();
        let mut last_pid = None;
        for p in series {
            let op = if last_pid == Some(p.pid) { 'L' } else { 'M' };
            let _ = write!(
                d,
                "{op}{:.1},{:.1} ",
                x(p.t_s),
                y(p.rss_kib as f64 / 1024.0)
            );
            last_pid = Some(p.pid);
        }
        let _ = writeln!(
            s,
            r#"<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.5"><title>{name}</title></path>"#
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" fill="#264653">— server</text><text x="{}" y="{}" fill="#2a9d8f">— keeper</text>"##,
        W - 160.0,
        top - 10.0,
        W - 80.0,
        top - 10.0
    );
}

/// The x of time `t` (seconds) on the panels over time, which run to `t_max`.
fn time_x(t: f64, t_max: f64) -> f64 {
    LEFT + (t.clamp(0.0, t_max) / t_max) * (W - LEFT - RIGHT)
}

/// The time axis's labels under the panel at `top`.
fn time_ticks(s: &mut String, t_max: f64, top: f64) {
    for tick in 0..=4 {
        let t = t_max * f64::from(tick) / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.0} s</text>"#,
            time_x(t, t_max),
            top + PANEL_H + 16.0
        );
    }
}

/// The deaths by cause: causes in name order, each one's deaths in time order.
pub fn deaths_by_cause(deaths: &[Death]) -> Vec<(&str, Vec<&Death>)> {
    let mut by: BTreeMap<&str, Vec<&Death>> = BTreeMap::new();
    for d in deaths {
        by.entry(d.cause.as_str()).or_default().push(d);
    }
    by.into_iter()
        .map(|(cause, mut ds)| {
            ds.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
            (cause, ds)
        })
        .collect()
}

/// One row per cause, a dot per death at the time its report was written; the faults' windows
/// shaded behind, as in the RSS panel above.
fn deaths_panel(
    s: &mut String,
    deaths: &[Death],
    windows: &[(f64, f64, String)],
    t_max: f64,
    top: f64,
) {
    axes(
        s,
        top,
        &format!(
            "deaths reported over time, by cause ({} crash reports)",
            deaths.len()
        ),
    );
    for (from, to, label) in windows {
        let (x0, x1) = (
            time_x(*from, t_max),
            time_x(to.max(from + t_max / 400.0), t_max),
        );
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{PANEL_H}" fill="#f4a261" opacity="0.2"><title>{}</title></rect>"##,
            x1 - x0,
            escape(label)
        );
    }
    let rows = deaths_by_cause(deaths);
    if rows.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#666">no crash report</text>"##,
            time_x(t_max / 2.0, t_max),
            top + PANEL_H / 2.0
        );
    }
    let row_h = PANEL_H / rows.len().max(1) as f64;
    for (i, (cause, ds)) in rows.iter().enumerate() {
        let colour = CAUSE_COLOURS[i % CAUSE_COLOURS.len()];
        let y = top + row_h * (i as f64 + 0.5);
        let _ = writeln!(
            s,
            r##"<path d="M{LEFT},{y:.1} H{}" stroke="#ddd"/>"##,
            W - RIGHT
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" fill="{colour}">{} ({})</text>"#,
            LEFT + 4.0,
            y - 6.0,
            escape(cause),
            ds.len()
        );
        for d in ds {
            let _ = writeln!(
                s,
                r#"<circle class="death" cx="{:.1}" cy="{y:.1}" r="4" fill="{colour}" opacity="0.8"><title>{:.1} s: {}: {}</title></circle>"#,
                time_x(d.t_s, t_max),
                d.t_s,
                escape(cause),
                escape(&d.who)
            );
        }
    }
    time_ticks(s, t_max, top);
    let _ = writeln!(
        s,
        r##"<circle cx="{}" cy="{}" r="4" fill="#666"/><text x="{}" y="{}">one crash report, when written</text><rect x="{}" y="{}" width="10" height="10" fill="#f4a261" opacity="0.2"/><text x="{}" y="{}">fault</text>"##,
        W - 290.0,
        top - 14.0,
        W - 282.0,
        top - 10.0,
        W - 90.0,
        top - 19.0,
        W - 76.0,
        top - 10.0
    );
}

/// Bucket `i` holds latencies in `[2^(i-1), 2^i)` ms (bucket 0: under 1 ms).
pub fn buckets(latencies_ms: &[u64]) -> Vec<usize> {
    const BUCKETS: usize = 20;
    let mut counts = vec![0usize; BUCKETS];
    for &ms in latencies_ms {
        let i = (64 - ms.leading_zeros()) as usize;
        counts[i.min(BUCKETS - 1)] += 1;
    }
    counts
}

fn latency_panel(s: &mut String, latencies_ms: &[u64], top: f64) {
    axes(
        s,
        top,
        &format!(
            "write→job-start latency, {} jobs (log2 buckets, ms)",
            latencies_ms.len()
        ),
    );
    let counts = buckets(latencies_ms);
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bar_w = (W - LEFT - RIGHT) / counts.len() as f64;
    for (i, &n) in counts.iter().enumerate() {
        let h = n as f64 / max * (PANEL_H - 20.0);
        let x = LEFT + i as f64 * bar_w;
        let upper = 1u64 << i;
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#e76f51"><title>&lt; {upper} ms: {n}</title></rect>"##,
            x + 2.0,
            top + PANEL_H - h,
            bar_w - 4.0
        );
        if n > 0 {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{n}</text>"#,
                x + bar_w / 2.0,
                top + PANEL_H - h - 3.0
            );
        }
        let label = if upper >= 1000 {
            format!("{}s", upper / 1000)
        } else {
            format!("{upper}")
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">&lt;{label}</text>"#,
            x + bar_w / 2.0,
            top + PANEL_H + 14.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_power_of_two_buckets() {
        let counts = buckets(&[0, 1, 2, 3, 4, 1000, 1 << 40]);
        assert_eq!(&counts[..4], &[1, 1, 2, 1]);
        assert_eq!(counts[10], 1, "1000 ms is in [512, 1024)");
        assert_eq!(counts[19], 1, "the last bucket takes the rest");
    }

    fn rss(pid: u32, t_s: f64, rss_kib: u64) -> RssSample {
        RssSample {
            t_s,
            pid,
            rss_kib,
            hwm_kib: rss_kib,
        }
    }

    fn death(t_s: f64, cause: &str, who: &str) -> Death {
        Death {
            t_s,
            cause: cause.into(),
            who: who.into(),
        }
    }

    /// Whether `text` is one well-formed XML element: tags nest and close, attribute values are
    /// quoted, every `&` starts an entity, and no text lies outside the root.
    fn well_formed(text: &str) -> Result<(), String> {
        fn entities(s: &str) -> Result<(), String> {
            for (at, _) in s.match_indices('&') {
                let after = &s[at + 1..];
                if !["amp;", "lt;", "gt;", "quot;", "apos;", "#"]
                    .iter()
                    .any(|e| after.starts_with(e))
                {
                    return Err(format!("a bare & in {s:?}"));
                }
            }
            Ok(())
        }
        let mut open: Vec<&str> = Vec::new();
        let mut roots = 0;
        let mut rest = text.trim();
        while !rest.is_empty() {
            if let Some(tag) = rest.strip_prefix('<') {
                let end = tag.find('>').ok_or("a tag that does not end")?;
                let (tag, after) = (&tag[..end], &tag[end + 1..]);
                if tag.contains('<') || tag.matches('"').count() % 2 == 1 {
                    return Err(format!("a broken tag: <{tag}>"));
                }
                entities(tag)?;
                if let Some(name) = tag.strip_prefix('/') {
                    if open.pop() != Some(name.trim()) {
                        return Err(format!("</{name}> closes nothing open"));
                    }
                } else {
                    let name = tag
                        .split(|c: char| c.is_whitespace() || c == '/')
                        .next()
                        .unwrap_or("");
                    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
                        return Err(format!("not a tag: <{tag}>"));
                    }
                    if open.is_empty() {
                        roots += 1;
                    }
                    if !tag.ends_with('/') {
                        open.push(name);
                    }
                }
                rest = after;
            } else {
                let end = rest.find('<').unwrap_or(rest.len());
                if open.is_empty() && !rest[..end].trim().is_empty() {
                    return Err(format!("text outside the root: {:?}", &rest[..end]));
                }
                entities(&rest[..end])?;
                rest = &rest[end..];
            }
        }
        match (open.as_slice(), roots) {
            ([], 1) => Ok(()),
            ([], n) => Err(format!("{n} root elements")),
            (left, _) => Err(format!("left open: {left:?}")),
        }
    }

    #[test]
    fn the_checker_of_documents_finds_what_breaks_one() {
        assert_eq!(
            well_formed(r#"<svg a="1"><g><t>x &amp; y</t></g><r/></svg>"#),
            Ok(())
        );
        for broken in [
            "<svg><g></svg>",
            "<svg>a & b</svg>",
            "<svg>a < b</svg>",
            r#"<svg><t a="x>y</t></svg>"#,
            "<svg/><svg/>",
            "<svg></svg>tail",
        ] {
            assert!(well_formed(broken).is_err(), "{broken}");
        }
    }

    #[test]
    fn deaths_are_grouped_by_cause_each_in_time_order() {
        let deaths = [
            death(9.0, "killed_by_signal SIGKILL", "server pid 1"),
            death(2.0, "native_crash SIGSEGV", "job a"),
            death(1.0, "killed_by_signal SIGKILL", "server pid 2"),
        ];
        let rows = deaths_by_cause(&deaths);
        let shape: Vec<(&str, Vec<f64>)> = rows
            .iter()
            .map(|(cause, ds)| (*cause, ds.iter().map(|d| d.t_s).collect()))
            .collect();
        assert_eq!(
            shape,
            [
                ("killed_by_signal SIGKILL", vec![1.0, 9.0]),
                ("native_crash SIGSEGV", vec![2.0]),
            ]
        );
    }

    #[test]
    fn each_death_is_one_mark_on_its_causes_row_with_escaped_labels() {
        let deaths = [
            death(1.0, "killed_by_signal SIGKILL", "server pid 10"),
            death(4.0, "killed_by_signal SIGKILL", "server pid 11"),
            death(7.0, "killed_by_signal SIGKILL", "keeper pid 12"),
            death(
                3.0,
                "native_crash SIGSEGV",
                "worker stress#2 during tree/<a&b>.txt pid 20",
            ),
            // A cause label is a report's word: escaped like any other.
            death(5.0, r#"exited <3> & "so""#, "job exec on tree/x pid 30"),
        ];
        let text = svg(
            &[rss(1, 0.0, 3000), rss(1, 10.0, 3100)],
            &[rss(2, 0.0, 20_000)],
            &[(0.5, 0.7, "kill-server #1".into())],
            &deaths,
            &[5],
        );
        well_formed(&text).unwrap();
        let marks = |cause: &str| {
            text.lines()
                .filter(|l| l.contains(r#"class="death""#) && l.contains(&format!(": {cause}: ")))
                .count()
        };
        let odd = "exited &lt;3&gt; &amp; &quot;so&quot;";
        assert_eq!(marks("killed_by_signal SIGKILL"), 3);
        assert_eq!(marks("native_crash SIGSEGV"), 1);
        assert_eq!(marks(odd), 1);
        assert_eq!(text.matches(r#"class="death""#).count(), deaths.len());
        // Each row is labelled with its cause and count, in its mark's colour.
        assert!(text.contains(&format!(">{odd} (1)</text>")), "{text}");
        assert!(text.contains(">killed_by_signal SIGKILL (3)</text>"));
        assert!(text.contains("tree/&lt;a&amp;b&gt;.txt pid 20"));
        assert!(text.contains("deaths reported over time, by cause (5 crash reports)"));
        assert!(
            text.contains("one crash report, when written"),
            "the legend"
        );
    }

    #[test]
    fn a_death_after_the_last_sample_widens_the_time_axis() {
        let text = svg(
            &[rss(1, 0.0, 3000), rss(1, 10.0, 3000)],
            &[],
            &[],
            &[
                death(20.0, "hung", "job a pid 1"),
                death(-1.0, "hung", "job b pid 2"),
            ],
            &[],
        );
        let xs: Vec<f64> = text
            .lines()
            .filter(|l| l.contains(r#"class="death""#))
            .map(|l| {
                let at = l.find("cx=\"").unwrap() + 4;
                l[at..l[at..].find('"').unwrap() + at].parse().unwrap()
            })
            .collect();
        // Time order within the row: the one before the start is clamped to it.
        assert_eq!(xs, [LEFT, W - RIGHT]);
        assert!(
            text.contains(">20 s</text>"),
            "the axis runs to the last death"
        );
    }

    #[test]
    fn a_run_without_deaths_says_so() {
        let text = svg(&[rss(1, 0.0, 3000)], &[], &[], &[], &[]);
        well_formed(&text).unwrap();
        assert!(text.contains(">no crash report</text>"));
        assert!(!text.contains(r#"class="death""#));
    }

    #[test]
    fn the_plot_is_one_svg_document_with_escaped_labels() {
        let text = svg(
            &[rss(1, 0.0, 3000), rss(1, 1.0, 3100)],
            &[rss(2, 0.0, 20_000), rss(3, 1.0, 21_000)],
            &[(0.5, 0.7, "kill-server #1 <&>".into())],
            &[death(0.6, "killed_by_signal SIGKILL", "server pid 2")],
            &[5, 50, 500],
        );
        well_formed(&text).unwrap();
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
        assert!(text.contains("kill-server #1 &lt;&amp;&gt;"));
        assert_eq!(text.matches("<svg").count(), 1);
    }
}
