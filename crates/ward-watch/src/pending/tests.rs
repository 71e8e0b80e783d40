//! Unit tests of the coalescing rules, the quiet window, the maximum wait and the cap, on a fake clock.

use super::*;

const QUIET: Duration = Duration::from_millis(50);
const MAX_WAIT: Duration = Duration::from_secs(1);

fn pending(cap: usize) -> (Pending, Instant) {
    (
        Pending::new(QUIET, MAX_WAIT, cap, vec![PathBuf::from("/r")]),
        Instant::now(),
    )
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn changes(items: &[Item]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|i| match i {
            Item::Change(c) => match &c.kind {
                ChangeKind::Renamed { from } => (
                    format!("renamed {}", from.display()),
                    c.path.display().to_string(),
                ),
                k => (k.name().to_string(), c.path.display().to_string()),
            },
            Item::Rescan(r) => (
                format!("rescan {}", r.reason.name()),
                r.path.display().to_string(),
            ),
            Item::Error(e) => ("error".to_string(), e.to_string()),
        })
        .collect()
}

fn expect(items: &[Item], want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(changes(items), want);
}

enum Ev {
    C(&'static str),
    Cd(&'static str),
    M(&'static str),
    R(&'static str),
    Rd(&'static str),
    Mv(&'static str, &'static str),
    Mvd(&'static str, &'static str),
    /// A file moved in from an ignored path.
    Rp(&'static str),
}

fn run(events: &[Ev]) -> Vec<Item> {
    let (mut p, t0) = pending(1000);
    for (i, ev) in events.iter().enumerate() {
        let now = t0 + ms(i as u64);
        match *ev {
            Ev::C(x) => p.record(Path::new(x), Op::Create, false, now),
            Ev::Cd(x) => p.record(Path::new(x), Op::Create, true, now),
            Ev::M(x) => p.record(Path::new(x), Op::Modify, false, now),
            Ev::R(x) => p.record(Path::new(x), Op::Remove, false, now),
            Ev::Rd(x) => p.record(Path::new(x), Op::Remove, true, now),
            Ev::Mv(a, b) => p.record_rename(Path::new(a), Path::new(b), false, now),
            Ev::Mvd(a, b) => p.record_rename(Path::new(a), Path::new(b), true, now),
            Ev::Rp(x) => p.record(Path::new(x), Op::Replace, false, now),
        }
    }
    let items = p.take_due(t0 + ms(10_000), usize::MAX);
    assert_eq!(p.len(), 0, "everything is due after the maximum wait");
    items
}

/// A rule's name, its events, and the changes it must come out as.
type Case = (&'static str, Vec<Ev>, Vec<(&'static str, &'static str)>);

#[test]
fn coalescing_rules() {
    use Ev::*;
    let cases: Vec<Case> = vec![
        (
            "create+modify is created",
            vec![C("/r/a"), M("/r/a"), M("/r/a")],
            vec![("created", "/r/a")],
        ),
        (
            "create+remove is nothing",
            vec![C("/r/a"), M("/r/a"), R("/r/a")],
            vec![],
        ),
        (
            "modify+remove is removed",
            vec![M("/r/a"), R("/r/a")],
            vec![("removed", "/r/a")],
        ),
        (
            "remove+create is modified",
            vec![R("/r/a"), C("/r/a"), M("/r/a")],
            vec![("modified", "/r/a")],
        ),
        (
            "a rename",
            vec![Mv("/r/a", "/r/b")],
            vec![("renamed /r/a", "/r/b")],
        ),
        (
            "rename chain collapses",
            vec![Mv("/r/a", "/r/b"), Mv("/r/b", "/r/c")],
            vec![("renamed /r/a", "/r/c")],
        ),
        (
            "rename there and back is modified",
            vec![Mv("/r/a", "/r/b"), Mv("/r/b", "/r/a")],
            vec![("modified", "/r/a")],
        ),
        (
            "modify then rename",
            vec![M("/r/a"), Mv("/r/a", "/r/b")],
            vec![("renamed /r/a", "/r/b"), ("modified", "/r/b")],
        ),
        (
            "rename then modify",
            vec![Mv("/r/a", "/r/b"), M("/r/b")],
            vec![("renamed /r/a", "/r/b"), ("modified", "/r/b")],
        ),
        (
            "rename then remove is removed origin",
            vec![Mv("/r/a", "/r/b"), R("/r/b")],
            vec![("removed", "/r/a")],
        ),
        (
            "a new file renamed onto an untouched path is modified",
            vec![C("/r/a"), Mv("/r/a", "/r/b")],
            vec![("modified", "/r/b")],
        ),
        (
            "atomic save is a modification",
            vec![C("/r/.a.swp"), M("/r/.a.swp"), Mv("/r/.a.swp", "/r/a")],
            vec![("modified", "/r/a")],
        ),
        (
            "an atomic save through an ignored temporary file is a modification",
            vec![Rp("/r/a")],
            vec![("modified", "/r/a")],
        ),
        (
            "a new file then an atomic save over it is created",
            vec![C("/r/a"), Rp("/r/a")],
            vec![("created", "/r/a")],
        ),
        (
            "an atomic save over a renamed file removes its origin",
            vec![Mv("/r/a", "/r/b"), Rp("/r/b")],
            vec![("removed", "/r/a"), ("modified", "/r/b")],
        ),
        (
            "backup-style save (rename away, write new, delete backup) is a modification",
            vec![Mv("/r/a", "/r/a~"), C("/r/a"), M("/r/a"), R("/r/a~")],
            vec![("modified", "/r/a")],
        ),
        (
            "rename then recreate the origin keeps the order",
            vec![Mv("/r/a", "/r/b"), C("/r/a")],
            vec![("renamed /r/a", "/r/b"), ("created", "/r/a")],
        ),
        (
            "removing a directory cancels its children",
            vec![
                M("/r/d/x"),
                C("/r/d/y"),
                Cd("/r/d/e"),
                C("/r/d/e/z"),
                Rd("/r/d"),
            ],
            vec![("removed", "/r/d")],
        ),
        (
            "create then remove a directory with content is nothing",
            vec![Cd("/r/d"), C("/r/d/x"), Rd("/r/d")],
            vec![],
        ),
        (
            "a directory removed and created again",
            vec![Rd("/r/d"), Cd("/r/d"), C("/r/d/x")],
            vec![
                ("removed", "/r/d"),
                ("created", "/r/d"),
                ("created", "/r/d/x"),
            ],
        ),
        (
            "renamed directory takes its pending children along, after it",
            vec![C("/r/d/x"), Mv("/r/d/y", "/r/d/z"), Mvd("/r/d", "/r/e")],
            vec![
                ("renamed /r/d", "/r/e"),
                ("created", "/r/e/x"),
                ("renamed /r/e/y", "/r/e/z"),
            ],
        ),
        (
            "moved into a directory that is then removed: the origin is removed",
            vec![Mv("/r/a", "/r/d/a"), Rd("/r/d")],
            vec![("removed", "/r/d"), ("removed", "/r/a")],
        ),
        (
            "rename over a renamed file removes the first origin",
            vec![Mv("/r/a", "/r/c"), Mv("/r/b", "/r/c")],
            vec![("removed", "/r/a"), ("renamed /r/b", "/r/c")],
        ),
    ];
    for (name, events, want) in cases {
        let items = run(&events);
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let mut got = changes(&items);
        // Independent paths may come in either order; the rules are about what comes out.
        if !name.contains("order") && !name.contains("after") && !name.contains("again") {
            got.sort();
            let mut want = want.clone();
            want.sort();
            assert_eq!(got, want, "{name}");
        } else {
            assert_eq!(got, want, "{name}");
        }
    }
}

#[test]
fn a_path_is_due_after_its_quiet_window() {
    let (mut p, t0) = pending(100);
    p.record(Path::new("/r/a"), Op::Create, false, t0);
    assert_eq!(p.next_due(), Some(t0 + QUIET));
    assert!(p.take_due(t0 + QUIET - ms(1), usize::MAX).is_empty());
    p.record(Path::new("/r/a"), Op::Modify, false, t0 + ms(30));
    assert!(
        p.take_due(t0 + QUIET, usize::MAX).is_empty(),
        "a new event restarts the quiet window"
    );
    expect(
        &p.take_due(t0 + ms(30) + QUIET, usize::MAX),
        &[("created", "/r/a")],
    );
    assert_eq!(p.next_due(), None);
}

#[test]
fn a_path_that_never_goes_quiet_is_emitted_after_the_maximum_wait() {
    let (mut p, t0) = pending(100);
    let mut emitted = Vec::new();
    // Written every 10 ms for 3 s: never quiet, so only the maximum wait lets it out.
    for i in 0..300u64 {
        let now = t0 + ms(10 * i);
        emitted.extend(p.take_due(now, usize::MAX).into_iter().map(|_| now));
        p.record(Path::new("/r/log"), Op::Modify, false, now);
    }
    assert!(emitted.len() >= 2, "emitted {} times in 3 s", emitted.len());
    for pair in emitted.windows(2) {
        assert!(
            pair[1] - pair[0] <= MAX_WAIT + ms(10),
            "gap {:?}",
            pair[1] - pair[0]
        );
    }
    assert!(emitted[0] - t0 <= MAX_WAIT + ms(10));
}

#[test]
fn an_earlier_entry_goes_out_with_a_later_due_one() {
    let (mut p, t0) = pending(100);
    p.record(Path::new("/r/d"), Op::Create, true, t0);
    p.record(Path::new("/r/d/x"), Op::Create, false, t0 + ms(1));
    // The directory keeps changing, but its child is quiet: the child may not overtake it.
    p.record(Path::new("/r/d"), Op::Modify, true, t0 + ms(40));
    expect(
        &p.take_due(t0 + ms(52), usize::MAX),
        &[("created", "/r/d"), ("created", "/r/d/x")],
    );
}

#[test]
fn a_batch_takes_at_most_its_maximum_and_the_rest_follow_in_order() {
    let (mut p, t0) = pending(100);
    p.record(Path::new("/r/d"), Op::Create, true, t0);
    for name in ["/r/d/a", "/r/d/b", "/r/d/c"] {
        p.record(Path::new(name), Op::Create, false, t0 + ms(1));
    }
    p.record(Path::new("/r/e"), Op::Create, false, t0 + ms(2));
    // All five are due: they go out two at a time, in the order they came.
    let now = t0 + ms(2) + QUIET;
    expect(
        &p.take_due(now, 2),
        &[("created", "/r/d"), ("created", "/r/d/a")],
    );
    assert!(p.has_due(now), "what is left of the due ones stays due");
    expect(
        &p.take_due(now, 2),
        &[("created", "/r/d/b"), ("created", "/r/d/c")],
    );
    expect(&p.take_due(now, 0), &[("created", "/r/e")]);
    assert_eq!(p.len(), 0);
    assert!(!p.has_due(now));
}

#[test]
fn the_cap_collapses_the_busiest_subtree_into_a_rescan() {
    let (mut p, t0) = pending(100);
    p.record(Path::new("/r/quiet"), Op::Modify, false, t0);
    for i in 0..1000 {
        p.record(
            &PathBuf::from(format!("/r/busy/sub/f{i}")),
            Op::Create,
            false,
            t0 + ms(1),
        );
        assert!(p.len() <= 100, "pending set over the cap: {}", p.len());
    }
    p.record(Path::new("/r/busy/sub/late"), Op::Modify, false, t0 + ms(2));
    let items = p.take_due(t0 + ms(10_000), usize::MAX);
    expect(
        &items,
        &[
            ("modified", "/r/quiet"),
            ("rescan pending-cap", "/r/busy/sub"),
        ],
    );
    assert!(p.collapses() >= 1);
}

#[test]
fn a_rescan_absorbs_later_events_in_its_subtree_and_covers_its_root() {
    let (mut p, t0) = pending(100);
    p.record(Path::new("/r/d/x"), Op::Create, false, t0);
    p.record(Path::new("/r/d"), Op::Create, true, t0);
    p.record(Path::new("/r/other"), Op::Create, false, t0);
    p.rescan(Path::new("/r/d"), RescanReason::KernelOverflow, t0 + ms(1));
    p.record(Path::new("/r/d/y"), Op::Create, false, t0 + ms(2));
    p.rescan(Path::new("/r/d/sub"), RescanReason::PendingCap, t0 + ms(2));
    p.record_rename(Path::new("/r/a"), Path::new("/r/d/a"), false, t0 + ms(3));
    expect(
        &p.take_due(t0 + ms(10_000), usize::MAX),
        &[
            ("created", "/r/other"),
            ("rescan kernel-overflow", "/r/d"),
            ("removed", "/r/a"),
        ],
    );
}

#[test]
fn a_rescan_of_a_parent_replaces_pending_rescans_inside_it() {
    let (mut p, t0) = pending(100);
    p.rescan(Path::new("/r/a/b"), RescanReason::PendingCap, t0);
    p.rescan(Path::new("/r/a"), RescanReason::KernelOverflow, t0);
    expect(
        &p.take_due(t0 + ms(10_000), usize::MAX),
        &[("rescan kernel-overflow", "/r/a")],
    );
}
