//! The stress run's plot, an SVG written by hand: keeper and server RSS over time with the
//! faults marked, and the histogram of write→job-start latencies on a log scale.

use std::fmt::Write as _;

use super::check::RssSample;

const W: f64 = 900.0;
const PANEL_H: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document: `windows` are (start s, end s, label) of the faults.
pub fn svg(
    keeper: &[RssSample],
    server: &[RssSample],
    windows: &[(f64, f64, String)],
    latencies_ms: &[u64],
) -> String {
    let mut s = String::new();
    let height = 2.0 * PANEL_H + 100.0;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    rss_panel(&mut s, keeper, server, windows, 30.0);
    latency_panel(&mut s, latencies_ms, 30.0 + PANEL_H + 60.0);
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
    top: f64,
) {
    axes(s, top, "RSS over time (MiB); faults shaded");
    let t_max = keeper
        .iter()
        .chain(server)
        .map(|p| p.t_s)
        .fold(1.0, f64::max);
    let r_max = keeper
        .iter()
        .chain(server)
        .map(|p| p.rss_kib as f64 / 1024.0)
        .fold(1.0, f64::max)
        * 1.1;
    let x = |t: f64| LEFT + (t / t_max) * (W - LEFT - RIGHT);
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
        let t = t_max * f64::from(tick) / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.0} s</text>"#,
            x(t),
            top + PANEL_H + 16.0
        );
    }
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

    #[test]
    fn the_plot_is_one_svg_document_with_escaped_labels() {
        let rss = |pid, t_s, rss_kib| RssSample {
            t_s,
            pid,
            rss_kib,
            hwm_kib: rss_kib,
        };
        let text = svg(
            &[rss(1, 0.0, 3000), rss(1, 1.0, 3100)],
            &[rss(2, 0.0, 20_000), rss(3, 1.0, 21_000)],
            &[(0.5, 0.7, "kill-server #1 <&>".into())],
            &[5, 50, 500],
        );
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
        assert!(text.contains("kill-server #1 &lt;&amp;&gt;"));
        assert_eq!(text.matches("<svg").count(), 1);
    }
}
