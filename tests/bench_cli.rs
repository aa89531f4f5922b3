//! `nicebill bench` beyond the single run, small enough for every `cargo test`: a sweep on
//! SQLite into a CSV file, `bench plot` drawing it, `--instances` on PostgreSQL (when
//! `NICEBILL_TEST_POSTGRES_URL` is set) and refused on SQLite. Timings are never asserted;
//! the measured figures are in `bench/RESULTS.md`.

mod support;

use std::process::Output;
use std::time::Duration;

use support::process::output_within;

const HEADER: &str =
    "backend,n,c,l_ms,wall_s,ideal_s,efficiency,charges_per_s,cpu_us_per_charge,peak_rss_mb";

fn bench(args: &[&str]) -> Output {
    let mut cmd = support::nicebill(Some("warn"));
    cmd.arg("bench").args(args);
    output_within(cmd, Duration::from_secs(60))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_sweep_on_sqlite_writes_a_csv_that_plot_draws() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("sweep.csv");
    let out = bench(&[
        "--due",
        "60",
        "--sweep",
        "4,16",
        "--latency-ms",
        "5",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    let content = std::fs::read_to_string(&csv).unwrap();
    let mut lines = content.lines();
    assert_eq!(lines.next(), Some(HEADER));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "{content}");
    for (row, c) in rows.iter().zip(["4", "16"]) {
        assert_eq!(row.len(), 10, "{row:?}");
        assert_eq!(row[0], "sqlite");
        assert_eq!((row[1], row[2], row[3]), ("60", c, "5"));
        for (name, value) in HEADER.split(',').zip(row).skip(1) {
            let v: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("{name} = {value:?}: {e}"));
            // CPU time is counted in 10 ms ticks: a small run may show none.
            if name == "cpu_us_per_charge" {
                assert!(v >= 0.0, "{name} = {v}");
            } else {
                assert!(v > 0.0, "{name} = {v}");
            }
        }
    }

    let svg = dir.path().join("sweep.svg");
    let out = bench(&[
        "plot",
        csv.to_str().unwrap(),
        "--out",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.trim_end().ends_with("</svg>"));
    for label in [
        "concurrency C (log scale)",
        "efficiency",
        "charges/s",
        "sqlite",
        "target 0.90",
    ] {
        assert!(svg.contains(label), "the SVG has no {label:?}");
    }
    // Balanced text elements: each label is text, not a path drawn from a font.
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());

    // Appending to a file with other columns is refused before anything runs.
    let other = dir.path().join("other.csv");
    std::fs::write(&other, "a,b\n1,2\n").unwrap();
    let out = bench(&["--due", "1", "--csv", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("expected backend,n,c"),
        "{}",
        text(&out)
    );
}

#[test]
fn instances_are_refused_on_sqlite() {
    let out = bench(&["--instances", "2", "--due", "10"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--instances"), "{err}");
    assert!(err.contains("postgres://"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn two_instances_on_postgres_charge_each_cycle_once() {
    let Some(url) = support::postgres_url("two_instances_on_postgres_charge_each_cycle_once")
    else {
        return;
    };
    let out = bench(&[
        "--instances",
        "2",
        "--due",
        "200",
        "--concurrency",
        "8",
        "--latency-ms",
        "5",
        "--database-url",
        &url,
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["instances"], 2);
    assert_eq!(r["no_double"], true, "{r:#}");
    assert_eq!(r["ledger_approvals"], 200);
    assert_eq!(r["ledger_double_cycles"], 0);
    assert_eq!(r["db_approved"], 200);
    assert_eq!(r["db_doubles"], 0);
    let per_instance = r["per_instance"].as_array().unwrap();
    assert_eq!(per_instance.len(), 2, "{r:#}");
    let charged: u64 = per_instance
        .iter()
        .map(|i| i["charged"].as_u64().unwrap())
        .sum();
    assert_eq!(charged, 200, "{r:#}");
    for key in ["wall_s", "ideal_s", "efficiency", "charges_per_s"] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {r:#}");
    }
}
