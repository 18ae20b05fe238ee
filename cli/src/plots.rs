//! SVG plots of a comparison (plotters): lost records by cause per strategy, pinned bytes over
//! time and blackout windows per scenario.

use std::path::Path;

use plotters::prelude::*;
use spe_policy_sim::Metrics;

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
        blackouts(&dir.join(format!("blackouts-{sc}.svg")), sc, &runs)?;
    }
    Ok(())
}

/// Stacked bars per scenario: records lost to blackouts, recovery and fatal events.
fn lost_by_cause(path: &Path, strategy: &str, runs: &[&Metrics]) -> std::io::Result<()> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(io)?;
    let top = runs.iter().map(|m| m.lost()).max().unwrap_or(0).max(1) as f64 * 1.1;
    let n = runs.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{strategy}: records lost by cause"),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(90)
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
        .y_desc("records")
        .draw()
        .map_err(io)?;
    type Cause = (&'static str, fn(&Metrics) -> u64);
    let causes: [Cause; 3] = [
        ("blackout", |m| m.lost_blackout),
        ("recovery", |m| m.lost_recovery),
        ("fatal", |m| m.lost_fatal),
    ];
    for (ci, (name, value)) in causes.iter().enumerate() {
        let color = COLORS[ci];
        chart
            .draw_series(runs.iter().enumerate().map(|(i, m)| {
                let below: u64 = causes[..ci].iter().map(|(_, f)| f(m)).sum();
                let (y0, y1) = (below as f64, (below + value(m)) as f64);
                Rectangle::new(
                    [(i as f64 - 0.35, y0), (i as f64 + 0.35, y1)],
                    color.filled(),
                )
            }))
            .map_err(io)?
            .label(*name)
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

/// Each blackout window as a point: when it started and how long it lasted.
fn blackouts(path: &Path, scenario: &str, runs: &[&Metrics]) -> std::io::Result<()> {
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(io)?;
    let points = || runs.iter().flat_map(|m| m.blackout_windows.iter());
    let end = points().map(|p| p[0]).fold(0.0, f64::max).max(1e-3) * 1.05;
    let top = points().map(|p| p[1]).fold(1.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{scenario}: blackout windows"), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, (0.1f64..top).log_scale())
        .map_err(io)?;
    chart
        .configure_mesh()
        .x_desc("start (ms of virtual time)")
        .y_desc("length (µs)")
        .draw()
        .map_err(io)?;
    for (i, m) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(
                m.blackout_windows
                    .iter()
                    .map(|p| Circle::new((p[0], p[1].max(0.1)), 3, color.filled())),
            )
            .map_err(io)?
            .label(m.strategy.clone())
            .legend(move |(x, y)| Circle::new((x + 5, y), 3, color.filled()));
    }
    finish(&mut chart, &root)
}
