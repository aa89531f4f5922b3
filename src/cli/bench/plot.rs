//! `nicebill bench plot`: CSV files written by `bench --csv` as one SVG, two panels —
//! efficiency and charges per second against C (log scale) — one line per backend.
//!
//! plotters draws with its SVG backend only: text goes into the file as `<text>` elements
//! and the viewer picks the font, so no font library (fontconfig, FreeType) is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use plotters::prelude::*;

use super::sweep::{Row, read_rows};
use crate::cli::CliError;

#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// CSV files written by `nicebill bench --csv` (one backend or several, any runs).
    #[arg(required = true, value_name = "CSV")]
    pub csv: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(long, value_name = "FILE.svg")]
    pub out: PathBuf,
}

/// One line of the plot: a backend (at one N and L), the mean of its runs at each C.
#[derive(Debug)]
struct Series {
    label: String,
    backend: String,
    /// (C, efficiency, charges per second), by C.
    points: Vec<(f64, f64, f64)>,
}

fn series(rows: &[Row]) -> Vec<Series> {
    // Lines are told apart by N and L only when the files hold more than one of them.
    let settings: BTreeSet<(i64, u64)> = rows.iter().map(|r| (r.n, r.l_ms)).collect();
    let mut lines: BTreeMap<(String, i64, u64), BTreeMap<usize, Vec<&Row>>> = BTreeMap::new();
    for r in rows {
        lines
            .entry((r.backend.clone(), r.n, r.l_ms))
            .or_default()
            .entry(r.c)
            .or_default()
            .push(r);
    }
    lines
        .into_iter()
        .map(|((backend, n, l_ms), by_c)| Series {
            label: if settings.len() > 1 {
                format!("{backend} (N = {n}, L = {l_ms} ms)")
            } else {
                backend.clone()
            },
            backend,
            points: by_c
                .into_iter()
                .map(|(c, runs)| {
                    let mean = |f: fn(&Row) -> f64| {
                        runs.iter().map(|r| f(r)).sum::<f64>() / runs.len() as f64
                    };
                    (c as f64, mean(|r| r.efficiency), mean(|r| r.charges_per_s))
                })
                .collect(),
        })
        .collect()
}

fn colour(backend: &str, i: usize) -> RGBColor {
    match backend {
        "sqlite" => RGBColor(31, 119, 180),
        "postgres" => RGBColor(214, 39, 40),
        _ => {
            let c = Palette99::pick(i + 2).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The SVG text of the two panels.
fn draw(lines: &[Series], title: &str) -> DrawResult<String> {
    let cs: Vec<f64> = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0 as u64))
        .collect::<BTreeSet<u64>>()
        .into_iter()
        .map(|c| c as f64)
        .collect();
    let (c_min, c_max) = (
        cs.first().copied().unwrap_or(1.0),
        cs.last().copied().unwrap_or(1.0),
    );
    let (x_lo, x_hi) = (c_min / 1.5, c_max * 1.5);
    let all = || lines.iter().flat_map(|s| s.points.iter());
    let eff_max = all().map(|p| p.1).fold(1.0, f64::max) * 1.05;
    let cps_max = all().map(|p| p.2).fold(1.0, f64::max) * 1.15;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 22))?;
        let panels = root.split_evenly((1, 2));

        let x = || (x_lo..x_hi).log_scale().with_key_points(cs.clone());
        let label_c = |c: &f64| format!("{c:.0}");

        let mut eff = ChartBuilder::on(&panels[0])
            .caption("efficiency = ideal / wall", ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d(x(), 0.0..eff_max)?;
        eff.configure_mesh()
            .x_desc("concurrency C (log scale)")
            .y_desc("efficiency")
            .axis_desc_style(("sans-serif", 15))
            .max_light_lines(1)
            .x_label_formatter(&label_c)
            .y_label_formatter(&|y| format!("{y:.1}"))
            .draw()?;
        let grey = RGBColor(120, 120, 120);
        eff.draw_series(LineSeries::new([(x_lo, 0.9), (x_hi, 0.9)], grey))?
            .label("target 0.90")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey));

        let mut cps = ChartBuilder::on(&panels[1])
            .caption("charges per second", ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x(), 0.0..cps_max)?;
        cps.configure_mesh()
            .x_desc("concurrency C (log scale)")
            .y_desc("charges/s")
            .axis_desc_style(("sans-serif", 15))
            .max_light_lines(1)
            .x_label_formatter(&label_c)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;

        for (i, line) in lines.iter().enumerate() {
            let c = colour(&line.backend, i);
            let style = c.stroke_width(2);
            let eff_points: Vec<(f64, f64)> = line.points.iter().map(|p| (p.0, p.1)).collect();
            let cps_points: Vec<(f64, f64)> = line.points.iter().map(|p| (p.0, p.2)).collect();
            eff.draw_series(LineSeries::new(eff_points.clone(), style))?
                .label(line.label.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
            eff.draw_series(
                eff_points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, c.filled())),
            )?;
            cps.draw_series(LineSeries::new(cps_points.clone(), style))?
                .label(line.label.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
            cps.draw_series(
                cps_points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, c.filled())),
            )?;
        }
        for (chart, position) in [
            (&mut eff, SeriesLabelPosition::LowerLeft),
            (&mut cps, SeriesLabelPosition::UpperLeft),
        ] {
            chart
                .configure_series_labels()
                .position(position)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()?;
        }
        root.present()?;
    }
    Ok(svg)
}

pub(super) fn run(args: &PlotArgs) -> Result<(), CliError> {
    let mut rows = Vec::new();
    for path in &args.csv {
        rows.extend(read_rows(path)?);
    }
    if rows.is_empty() {
        return Err(CliError::Usage(
            "bench plot: the CSV files hold no rows".into(),
        ));
    }
    let settings: BTreeSet<(i64, u64)> = rows.iter().map(|r| (r.n, r.l_ms)).collect();
    let title = match settings.iter().next() {
        Some((n, l_ms)) if settings.len() == 1 => {
            format!("nicebill bench: N = {n} due, L = {l_ms} ms per call")
        }
        _ => "nicebill bench".to_owned(),
    };
    let svg =
        draw(&series(&rows), &title).map_err(|e| CliError::Failed(format!("bench plot: {e}")))?;
    std::fs::write(&args.out, svg)?;
    println!(
        "wrote {} ({} runs from {} file(s))",
        args.out.display(),
        rows.len(),
        args.csv.len()
    );
    Ok(())
}
