//! The chart: target against achieved throughput, and latency percentiles, over time; as PNG
//! and SVG. Text is drawn with an embedded font (DejaVu Sans Mono, pure-Rust rasteriser), so
//! no system font library is needed.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::Report;

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

fn draw_on<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &Report) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2);
    let series = &report.series;
    let seconds = (series.len() as f64).max(1.0);

    let rate_max = series
        .iter()
        .map(|s| s.achieved_rate.max(s.target_rate.unwrap_or(0.0)))
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
    if series.iter().any(|s| s.target_rate.is_some()) {
        rates
            .draw_series(LineSeries::new(
                series
                    .iter()
                    .filter_map(|s| s.target_rate.map(|t| (s.second as f64 + 0.5, t))),
                BLUE.stroke_width(2),
            ))?
            .label("target")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    }
    rates
        .draw_series(LineSeries::new(
            series
                .iter()
                .map(|s| (s.second as f64 + 0.5, s.achieved_rate)),
            GREEN.stroke_width(2),
        ))?
        .label("achieved")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.stroke_width(2)));
    rates
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;

    let latency_max = series.iter().filter_map(|s| s.p999_ms).fold(1.0, f64::max) * 1.1;
    let mut latency = ChartBuilder::on(&bottom)
        .caption("latency from intended send time (ms)", ("sans-serif", 20))
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
    let lines: [Line; 3] = [
        ("p50", GREEN, |s| s.p50_ms),
        ("p99", RGBColor(230, 140, 0), |s| s.p99_ms),
        ("p99.9", RED, |s| s.p999_ms),
    ];
    for (name, color, get) in lines {
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
