//! PNG figures for the experiment drivers (plotters, bitmap backend).
//!
//! Text needs a TrueType font: plotters' `ab_glyph` renderer is given DejaVu Sans from the
//! usual system locations (`COLLAB_FONT` overrides). Without a font the figures are skipped
//! with a message; the CSV tables are always written.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a font once; `false` (with a message) if none is found.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let candidates = std::env::var("COLLAB_FONT")
            .into_iter()
            .chain(FONT_PATHS.iter().map(|s| s.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        eprintln!(
            "no TrueType font found (tried {FONT_PATHS:?}; set COLLAB_FONT): skipping PNG figures"
        );
        false
    })
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) label: String,
    pub(crate) points: Vec<(f64, f64)>,
}

/// A line chart with markers; returns whether the PNG was written.
pub(crate) fn line_chart(
    path: &Path,
    title: &str,
    axes: (&str, &str),
    series: &[Series],
) -> Result<bool> {
    if !font_ready() {
        return Ok(false);
    }
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.clone()).collect();
    if all.is_empty() {
        return Ok(false);
    }
    let (mut x0, mut x1, mut y0, mut y1) = all.iter().fold(
        (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
        |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
    );
    let pad = |lo: &mut f64, hi: &mut f64| {
        let span = (*hi - *lo).abs().max(1e-9);
        *lo -= 0.05 * span;
        *hi += 0.05 * span;
    };
    pad(&mut x0, &mut x1);
    pad(&mut y0, &mut y1);
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}

/// A heatmap of `values[row][col]` (None: not reachable, drawn grey) with a blue-to-red scale
/// from `lo` to `hi`, each cell labelled with its value; returns whether the PNG was written.
pub(crate) fn heatmap(
    path: &Path,
    title: &str,
    labels: (&[String], &[String]),
    values: &[Vec<Option<f64>>],
    range: (f64, f64),
) -> Result<bool> {
    if !font_ready() {
        return Ok(false);
    }
    let (cols, rows) = labels;
    let root = BitMapBackend::new(
        path,
        (110 + 80 * cols.len() as u32, 90 + 36 * rows.len() as u32),
    )
    .into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0..cols.len(), 0..rows.len())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(cols.len())
        .y_labels(rows.len())
        .x_label_formatter(&|i| cols.get(*i).cloned().unwrap_or_default())
        .y_label_formatter(&|i| rows.get(*i).cloned().unwrap_or_default())
        .draw()
        .map_err(err)?;
    let (lo, hi) = range;
    for (r, row) in values.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            let color = match v {
                Some(v) => {
                    let t = ((v - lo) / (hi - lo).max(1e-12)).clamp(0.0, 1.0);
                    RGBColor(
                        (255.0 * t) as u8,
                        (90.0 * (1.0 - t)) as u8 + 60,
                        (255.0 * (1.0 - t)) as u8,
                    )
                }
                None => RGBColor(200, 200, 200),
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(c, r), (c + 1, r + 1)],
                    color.filled(),
                )))
                .map_err(err)?;
            let text = v.map_or("n/a".to_string(), |v| format!("{:.3}", v));
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (c, r + 1),
                    ("sans-serif", 13).into_font().color(&WHITE),
                )))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(true)
}

/// A chart on log-log axes: `scatter` series as markers (palette colour `i` for the `i`-th),
/// `lines` as curves in palette colour `line_colors[j]`; a series with an empty label has no
/// legend entry. Returns whether the PNG was written. Non-positive values are dropped.
pub(crate) fn log_log_chart(
    path: &Path,
    title: &str,
    axes: (&str, &str),
    lines: &[Series],
    line_colors: &[usize],
    scatter: &[Series],
) -> Result<bool> {
    if !font_ready() {
        return Ok(false);
    }
    let positive = |s: &Series| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .copied()
            .filter(|&(x, y)| x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite())
            .collect()
    };
    let all: Vec<(f64, f64)> = lines.iter().chain(scatter).flat_map(positive).collect();
    if all.is_empty() {
        return Ok(false);
    }
    let (x0, x1, y0, y1) = all.iter().fold(
        (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
        |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
    );
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0 / 1.3..x1 * 1.3).log_scale(),
            (y0 / 1.3..y1 * 1.3).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .x_label_formatter(&|v| format!("{v:.2e}"))
        .y_label_formatter(&|v| format!("{v:.1e}"))
        .draw()
        .map_err(err)?;
    for (i, s) in scatter.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let drawn = chart
            .draw_series(
                positive(s)
                    .into_iter()
                    .map(|p| Circle::new(p, 2, color.mix(0.5).filled())),
            )
            .map_err(err)?;
        if !s.label.is_empty() {
            drawn
                .label(s.label.clone())
                .legend(move |(x, y)| Circle::new((x + 8, y), 3, color.filled()));
        }
    }
    for (j, s) in lines.iter().enumerate() {
        let color = Palette99::pick(line_colors.get(j).copied().unwrap_or(j)).to_rgba();
        let drawn = chart
            .draw_series(LineSeries::new(positive(s), color.stroke_width(2)))
            .map_err(err)?;
        if !s.label.is_empty() {
            drawn
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}
