//! `nicebill bench --sweep C,C,…`: the single run at each concurrency, and `--csv`: results
//! appended to a CSV file for `bench plot`.
//!
//! Each point runs as a `nicebill bench --json` process of its own, with its own simulator
//! and a fresh database, exactly as a single run: CPU time and peak RSS are then that point's
//! alone. (Resetting the peak in one process between points is not enough: the allocator
//! keeps what a large C allocated, and the next point's RSS starts from there.)

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

use super::{BenchArgs, Result_, fail};
use crate::cli::CliError;
use crate::cli::admin::{align_right, table};

/// The CSV file's columns, in order.
pub(super) const HEADER: [&str; 10] = [
    "backend",
    "n",
    "c",
    "l_ms",
    "wall_s",
    "ideal_s",
    "efficiency",
    "charges_per_s",
    "cpu_us_per_charge",
    "peak_rss_mb",
];

/// One row of the CSV file: one run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(super) struct Row {
    pub backend: String,
    pub n: i64,
    pub c: usize,
    pub l_ms: u64,
    pub wall_s: f64,
    pub ideal_s: f64,
    pub efficiency: f64,
    pub charges_per_s: f64,
    pub cpu_us_per_charge: f64,
    pub peak_rss_mb: f64,
}

impl From<&Result_> for Row {
    fn from(r: &Result_) -> Row {
        Row {
            backend: r.backend.clone(),
            n: r.due,
            c: r.concurrency,
            l_ms: r.latency_ms,
            wall_s: r.wall_s,
            ideal_s: r.ideal_s,
            efficiency: r.efficiency,
            charges_per_s: r.charges_per_s,
            cpu_us_per_charge: r.cpu_us_per_charge,
            peak_rss_mb: r.peak_rss_mb,
        }
    }
}

/// Reads every row of a CSV file written by `--csv`.
pub(super) fn read_rows(path: &Path) -> Result<Vec<Row>, CliError> {
    let mut reader = csv::Reader::from_path(path)
        .map_err(|e| CliError::Usage(format!("bench: {}: {e}", path.display())))?;
    check_header(path, &mut reader)?;
    reader
        .deserialize()
        .map(|row| row.map_err(|e| CliError::Usage(format!("bench: {}: {e}", path.display()))))
        .collect()
}

fn check_header<R: std::io::Read>(
    path: &Path,
    reader: &mut csv::Reader<R>,
) -> Result<(), CliError> {
    let found = reader
        .headers()
        .map_err(|e| CliError::Usage(format!("bench: {}: {e}", path.display())))?;
    if found.iter().ne(HEADER) {
        return Err(CliError::Usage(format!(
            "bench: {}: its columns are {:?}, expected {}",
            path.display(),
            found.iter().collect::<Vec<_>>().join(","),
            HEADER.join(",")
        )));
    }
    Ok(())
}

/// The `--csv` file: new, empty, or one with [`HEADER`].
pub(super) struct Csv {
    path: PathBuf,
}

impl Csv {
    /// Checks the file before anything runs: a file with other columns is refused.
    pub(super) fn open(path: &Path) -> Result<Csv, CliError> {
        let empty = std::fs::metadata(path)
            .map(|m| m.len() == 0)
            .unwrap_or(true);
        if !empty {
            let mut reader = csv::Reader::from_path(path)
                .map_err(|e| CliError::Usage(format!("bench: --csv {}: {e}", path.display())))?;
            check_header(path, &mut reader)?;
        }
        Ok(Csv {
            path: path.to_owned(),
        })
    }

    /// Appends one row (after the header, when the file is empty).
    pub(super) fn append(&self, r: &Result_) -> Result<(), CliError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let header = file.metadata()?.len() == 0;
        let mut writer = csv::WriterBuilder::new()
            .has_headers(header)
            .from_writer(file);
        writer.serialize(Row::from(r)).map_err(|e| fail("csv", e))?;
        writer.flush()?;
        Ok(())
    }
}

pub(super) async fn run(args: &BenchArgs, points: &[usize]) -> Result<(), CliError> {
    if points.is_empty() || points.contains(&0) {
        return Err(CliError::Usage(
            "bench: --sweep takes concurrencies of at least 1, e.g. --sweep 16,64,256,1024".into(),
        ));
    }
    let csv = args.csv.as_deref().map(Csv::open).transpose()?;
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    for &c in points {
        eprintln!("nicebill bench: sweep, C = {c}");
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(["bench", "--json", "--due", &args.due.to_string()])
            .args(["--concurrency", &c.to_string()])
            .args(["--latency-ms", &args.latency_ms.to_string()]);
        if let Some(total) = args.total {
            cmd.args(["--total", &total.to_string()]);
        }
        if let Some(batch) = args.batch {
            cmd.args(["--batch", &batch.to_string()]);
        }
        if let Some(url) = &args.database_url {
            cmd.args(["--database-url", url]);
        }
        let out = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output()
            .await?;
        if !out.status.success() {
            return Err(CliError::Failed(format!(
                "bench: the run at C = {c} failed ({})",
                out.status
            )));
        }
        let r: Result_ =
            serde_json::from_slice(&out.stdout).map_err(|e| fail("sweep: a point's JSON", e))?;
        if let Some(csv) = &csv {
            csv.append(&r)?;
        }
        results.push(r);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).map_err(std::io::Error::other)?
        );
        return Ok(());
    }
    let Some(first) = results.first() else {
        return Ok(());
    };
    println!(
        "nicebill bench --sweep: {}, N = {} due of {}, L = {} ms{}",
        first.backend,
        first.due,
        first.total_subscriptions,
        first.latency_ms,
        args.csv
            .as_deref()
            .map(|p| format!(", appended to {}", p.display()))
            .unwrap_or_default()
    );
    let mut t = table(&[
        "C",
        "wall s",
        "ideal s",
        "efficiency",
        "charges/s",
        "CPU µs/charge",
        "peak RSS MB",
    ]);
    for r in &results {
        t.add_row(vec![
            r.concurrency.to_string(),
            format!("{:.3}", r.wall_s),
            format!("{:.3}", r.ideal_s),
            format!("{:.3}", r.efficiency),
            format!("{:.0}", r.charges_per_s),
            format!("{:.0}", r.cpu_us_per_charge),
            format!("{:.1}", r.peak_rss_mb),
        ]);
    }
    align_right(&mut t, &[0, 1, 2, 3, 4, 5, 6]);
    println!("{t}");
    Ok(())
}
