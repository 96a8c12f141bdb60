//! The chart: target against achieved throughput, and latency percentiles, over time; as PNG
//! and SVG. Text is drawn with an embedded font (DejaVu Sans Mono, pure-Rust rasteriser), so
//! no system font library is needed.
//!
//! Rates are drawn over the whole seconds of the run only: the last second is usually partial,
//! and its count, drawn as a rate, would look like a collapse. The festival's phases are shaded
//! bands, named; the SLO of a step or festival run is a horizontal line on the latency chart.
//! Latency lines are the admitted requests'; refusals get their own p99 line and goodput its
//! own rate line when the switch refused anything.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::{Report, SecondReport};
use crate::run::Phase;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 800;

fn register_font() -> anyhow::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| anyhow!("the embedded font does not parse"));
    });
    result
}

/// Writes `chart.png` and `chart.svg` into `dir`.
pub fn draw(report: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let png = dir.join("chart.png");
    let svg = dir.join("chart.svg");
    {
        let root = BitMapBackend::new(&png, (WIDTH, HEIGHT)).into_drawing_area();
        draw_on(&root, report).map_err(|e| anyhow!("drawing {}: {e}", png.display()))?;
        root.present()
            .map_err(|e| anyhow!("writing {}: {e}", png.display()))?;
    }
    {
        let root = SVGBackend::new(&svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw_on(&root, report).map_err(|e| anyhow!("drawing {}: {e}", svg.display()))?;
        root.present()
            .map_err(|e| anyhow!("writing {}: {e}", svg.display()))?;
    }
    Ok(vec![png, svg])
}

/// A latency line: its name, colour, and which percentile of a second it draws.
type Line = (
    &'static str,
    RGBColor,
    fn(&crate::report::SecondReport) -> Option<f64>,
);

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A rate of each second at its middle, for the seconds the run covered whole. A run shorter
/// than a second has none: its partial seconds are scaled to a rate instead.
pub fn rate_points(
    series: &[SecondReport],
    rate: fn(&SecondReport) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let whole = series.iter().any(|s| s.covered_secs >= 1.0);
    series
        .iter()
        .filter(|s| s.covered_secs >= 1.0 || (!whole && s.covered_secs > 0.0))
        .filter_map(|s| {
            let per_second = rate(s)? / s.covered_secs.min(1.0);
            Some((s.second as f64 + 0.5, per_second))
        })
        .collect()
}

/// Shading of the phase bands, in turn.
const BANDS: [RGBColor; 2] = [RGBColor(225, 232, 245), RGBColor(245, 236, 220)];

/// Shades each phase of the run on `chart`, its name at the top.
fn draw_phases<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    phases: &[Phase],
    y_max: f64,
) -> DrawResult<DB> {
    for (i, p) in phases.iter().enumerate() {
        let color = BANDS[i % BANDS.len()];
        chart.draw_series(std::iter::once(Rectangle::new(
            [(p.start_secs, 0.0), (p.end_secs, y_max)],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            p.name.clone(),
            (p.start_secs, y_max * 0.97),
            ("sans-serif", 13),
        )))?;
    }
    Ok(())
}

fn draw_on<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &Report) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2);
    let series = &report.series;
    let seconds = (series.len() as f64).max(1.0);

    let achieved = rate_points(series, |s| Some(s.achieved_rate));
    let target = rate_points(series, |s| s.target_rate);
    let rate_max = achieved
        .iter()
        .chain(&target)
        .map(|&(_, r)| r)
        .fold(1.0, f64::max)
        * 1.1;
    let mut rates = ChartBuilder::on(&top)
        .caption(
            format!("{}: throughput (requests/s)", report.profile.profile),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..seconds, 0f64..rate_max)?;
    rates
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("requests/s")
        .label_style(("sans-serif", 14))
        .draw()?;
    let phases = &report.profile.phases;
    draw_phases(&mut rates, phases, rate_max)?;
    if !target.is_empty() {
        rates
            .draw_series(LineSeries::new(target, BLUE.stroke_width(2)))?
            .label("target")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    }
    rates
        .draw_series(LineSeries::new(achieved, GREEN.stroke_width(2)))?
        .label("achieved")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.stroke_width(2)));
    if series.iter().any(|s| s.refused > 0) {
        let goodput = rate_points(series, |s| Some(s.approved as f64));
        let color = RGBColor(0, 110, 60);
        rates
            .draw_series(DashedLineSeries::new(goodput, 6, 4, color.stroke_width(2)))?
            .label("goodput (approved)")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    rates
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;

    let slo = report.profile.slo_p99_ms;
    let latency_max = series
        .iter()
        .flat_map(|s| [s.admitted_p999_ms, s.refused_p99_ms])
        .flatten()
        .chain(slo)
        .fold(1.0, f64::max)
        * 1.1;
    let mut latency = ChartBuilder::on(&bottom)
        .caption(
            "latency of admitted requests from intended send time (ms)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..seconds, 0f64..latency_max)?;
    latency
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .label_style(("sans-serif", 14))
        .draw()?;
    draw_phases(&mut latency, phases, latency_max)?;
    if let Some(slo) = slo {
        let color = RGBColor(120, 40, 160);
        latency
            .draw_series(DashedLineSeries::new(
                [(0.0, slo), (seconds, slo)],
                8,
                6,
                color.stroke_width(2),
            ))?
            .label(format!("SLO p99 {slo} ms"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    // The admitted requests' latency (all of them when nothing was refused), and the
    // refusals' p99 apart when there were any: a quick refusal is not a quick payment.
    let refusals = series.iter().any(|s| s.refused > 0);
    let lines: [Line; 4] = [
        ("p50", GREEN, |s| s.admitted_p50_ms),
        ("p99", RGBColor(230, 140, 0), |s| s.admitted_p99_ms),
        ("p99.9", RED, |s| s.admitted_p999_ms),
        ("refused p99", RGBColor(120, 120, 120), |s| s.refused_p99_ms),
    ];
    for (name, color, get) in lines {
        if name.starts_with("refused") && !refusals {
            continue;
        }
        latency
            .draw_series(LineSeries::new(
                series
                    .iter()
                    .filter_map(|s| get(s).map(|v| (s.second as f64 + 0.5, v))),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    latency
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(second: u64, answered: f64, covered_secs: f64) -> SecondReport {
        SecondReport {
            second,
            target_rate: Some(100.0),
            achieved_rate: answered,
            covered_secs,
            errors: 0,
            p50_ms: Some(1.0),
            p99_ms: Some(2.0),
            p999_ms: Some(3.0),
            max_ms: Some(4.0),
            ..SecondReport::default()
        }
    }

    /// The last second of a run that ended 0.1 s into it answered 10 requests: drawn as a
    /// rate, that would be a fall from 100/s to 10/s that never happened.
    #[test]
    fn a_partial_last_second_is_not_drawn_as_a_fall() {
        let series = [
            second(0, 100.0, 1.0),
            second(1, 100.0, 1.0),
            second(2, 10.0, 0.1),
        ];
        let points = rate_points(&series, |s| Some(s.achieved_rate));
        assert_eq!(points, vec![(0.5, 100.0), (1.5, 100.0)]);
        // A run shorter than a second still has a point, scaled to a rate.
        let points = rate_points(&[second(0, 25.0, 0.5)], |s| Some(s.achieved_rate));
        assert_eq!(points, vec![(0.5, 50.0)]);
    }
}
