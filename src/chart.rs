//! The "% of sites restored over time" chart, as SVG (plotters, no system fonts needed).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

/// One line of the chart.
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (hours since the restore started, % of sites restored), increasing in hours.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0, 82, 204),
    RGBColor(222, 53, 11),
    RGBColor(0, 135, 90),
    RGBColor(255, 139, 0),
    RGBColor(101, 84, 192),
    RGBColor(66, 82, 110),
];

/// Writes a line chart of `series` to `path`.
pub fn restored_over_time(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    let max_h = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0f64, f64::max);
    let (unit, div) = if max_h > 72.0 { ("days", 24.0) } else { ("hours", 1.0) };
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_h / div, 0.0..100.0)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(format!("time since the restore started ({unit})"))
        .y_desc("sites restored (%)")
        .light_line_style(RGBColor(235, 236, 240))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let style = ShapeStyle { color: color.to_rgba(), filled: false, stroke_width: 2 };
        chart
            .draw_series(LineSeries::new(s.points.iter().map(|&(h, p)| (h / div, p)), style))
            .map_err(|e| err(&e))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
