//! SVG plots of a comparison (plotters): profile loss by cause per strategy (as % of the samples
//! due, so scenarios of any size compare), pinned bytes over time and stall windows per
//! scenario, and an `index.html` that shows them all with captions.

use std::path::Path;

use plotters::prelude::*;
use spe_policy_sim::{LossCause, Metrics};

/// One colour per loss cause: charged causes warm, baseline causes grey-blue.
const CAUSE_COLORS: [RGBColor; 9] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(158, 218, 229),
    RGBColor(174, 199, 232),
    RGBColor(188, 189, 34),
];

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn names(metrics: &[Metrics], key: impl Fn(&Metrics) -> &str) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for m in metrics {
        if !v.iter().any(|x| x == key(m)) {
            v.push(key(m).to_string());
        }
    }
    v
}

/// Draws the legend and writes the file.
fn finish<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    root: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
) -> std::io::Result<()> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(io)?;
    root.present().map_err(io)
}

/// Writes every plot into `dir`.
pub fn write_all(dir: &Path, metrics: &[Metrics]) -> std::io::Result<()> {
    let strategies = names(metrics, |m| &m.strategy);
    let scenarios = names(metrics, |m| &m.scenario);
    for s in &strategies {
        let runs: Vec<&Metrics> = metrics.iter().filter(|m| &m.strategy == s).collect();
        lost_by_cause(&dir.join(format!("lost-{s}.svg")), s, &runs)?;
    }
    for sc in &scenarios {
        let runs: Vec<&Metrics> = metrics.iter().filter(|m| &m.scenario == sc).collect();
        pinned_over_time(&dir.join(format!("pinned-{sc}.svg")), sc, &runs)?;
        stalls(&dir.join(format!("stalls-{sc}.svg")), sc, &runs)?;
    }
    index(dir, &strategies, &scenarios)
}

/// `index.html`: every plot with a caption that says what it shows.
fn index(dir: &Path, strategies: &[String], scenarios: &[String]) -> std::io::Result<()> {
    let mut h = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>spe-policy compare</title>\n<style>body{font-family:sans-serif;max-width:960px;margin:auto} figure{margin:2em 0} img{max-width:100%}</style></head><body>\n<h1>spe-policy compare</h1>\n<p>Figures are in <code>metrics.json</code> (runs, verdicts, recommendation). Profile loss is charged against bare metal: what the same guest would lose on bare hardware is the baseline, drawn in cool colours after the strategy's own (warm) causes.</p>\n",
    );
    h.push_str("<h2>Profile loss by cause</h2>\n");
    for s in strategies {
        h.push_str(&format!(
            "<figure><img src=\"lost-{s}.svg\" alt=\"{s}: loss by cause\"><figcaption>{s}: samples lost per scenario, as a percentage of the samples due, by cause (charged causes first, then the bare-metal baseline).</figcaption></figure>\n"
        ));
    }
    h.push_str("<h2>Per scenario</h2>\n");
    for sc in scenarios {
        h.push_str(&format!(
            "<figure><img src=\"pinned-{sc}.svg\" alt=\"{sc}: pinned bytes\"><figcaption>{sc}: bytes each strategy pinned over the session.</figcaption></figure>\n<figure><img src=\"stalls-{sc}.svg\" alt=\"{sc}: stalls\"><figcaption>{sc}: each time a vCPU was kept out of the guest (the first 256 stalls of each strategy): when it started and how long it lasted.</figcaption></figure>\n"
        ));
    }
    h.push_str("</body></html>\n");
    std::fs::write(dir.join("index.html"), h)
}

/// The share of a run's samples due lost to `cause`, %.
fn share(m: &Metrics, cause: LossCause) -> f64 {
    100.0 * m.lost_to(cause) as f64 / m.samples_due.max(1) as f64
}

/// Stacked bars per scenario: samples lost by cause, % of the samples due.
fn lost_by_cause(path: &Path, strategy: &str, runs: &[&Metrics]) -> std::io::Result<()> {
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(io)?;
    let total = |m: &Metrics| LossCause::ALL.iter().map(|c| share(m, *c)).sum::<f64>();
    let top = runs.iter().map(|m| total(m)).fold(0.0, f64::max).max(0.01) * 1.15;
    let n = runs.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{strategy}: samples lost by cause (% of samples due)"),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(170)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..top)
        .map_err(io)?;
    let labels: Vec<String> = runs.iter().map(|m| m.scenario.clone()).collect();
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            labels
                .get(x.round().max(0.0) as usize)
                .filter(|_| (x - x.round()).abs() < 1e-9)
                .cloned()
                .unwrap_or_default()
        })
        .x_label_style(
            ("sans-serif", 11)
                .into_font()
                .transform(FontTransform::Rotate90),
        )
        .y_desc("% of samples due")
        .draw()
        .map_err(io)?;
    for (ci, cause) in LossCause::ALL.iter().enumerate() {
        let color = CAUSE_COLORS[ci % CAUSE_COLORS.len()];
        let name = if cause.is_baseline() {
            format!("{} (baseline)", cause.name())
        } else {
            cause.name().to_string()
        };
        chart
            .draw_series(runs.iter().enumerate().map(|(i, m)| {
                let below: f64 = LossCause::ALL[..ci].iter().map(|c| share(m, *c)).sum();
                let (y0, y1) = (below, below + share(m, *cause));
                Rectangle::new(
                    [(i as f64 - 0.35, y0), (i as f64 + 0.35, y1)],
                    color.filled(),
                )
            }))
            .map_err(io)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    finish(&mut chart, &root)
}

/// One line per strategy: MiB pinned over virtual time.
fn pinned_over_time(path: &Path, scenario: &str, runs: &[&Metrics]) -> std::io::Result<()> {
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(io)?;
    let mib = |b: f64| b / f64::from(1u32 << 20);
    let end = runs
        .iter()
        .flat_map(|m| m.pinned_timeline.last())
        .map(|p| p[0])
        .fold(0.0, f64::max)
        .max(1e-3);
    let top = runs
        .iter()
        .flat_map(|m| m.pinned_timeline.iter())
        .map(|p| mib(p[1]))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{scenario}: pinned memory"), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..top)
        .map_err(io)?;
    chart
        .configure_mesh()
        .x_desc("virtual time (ms)")
        .y_desc("MiB pinned")
        .draw()
        .map_err(io)?;
    for (i, m) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                m.pinned_timeline.iter().map(|p| (p[0], mib(p[1]))),
                color.stroke_width(2),
            ))
            .map_err(io)?
            .label(m.strategy.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color.stroke_width(2)));
    }
    finish(&mut chart, &root)
}

/// Each stall as a point: when it started and how long it lasted.
fn stalls(path: &Path, scenario: &str, runs: &[&Metrics]) -> std::io::Result<()> {
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(io)?;
    let points = || runs.iter().flat_map(|m| m.stall_windows.iter());
    let end = points().map(|p| p[0]).fold(0.0, f64::max).max(1e-3) * 1.05;
    let top = points().map(|p| p[1]).fold(1.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{scenario}: vCPU stalls"), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, (0.1f64..top).log_scale())
        .map_err(io)?;
    chart
        .configure_mesh()
        .x_desc("start (ms of the session)")
        .y_desc("length (µs)")
        .draw()
        .map_err(io)?;
    for (i, m) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(
                m.stall_windows
                    .iter()
                    .map(|p| Circle::new((p[0], p[1].max(0.1)), 3, color.filled())),
            )
            .map_err(io)?
            .label(m.strategy.clone())
            .legend(move |(x, y)| Circle::new((x + 5, y), 3, color.filled()));
    }
    finish(&mut chart, &root)
}
