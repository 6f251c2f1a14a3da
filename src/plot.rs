//! Training curves: loss and accuracy per epoch, train and validation, side by side in one
//! SVG drawn with plotters.

use std::path::Path;

use plotters::prelude::*;

use crate::checkpoint::write_atomic;
use crate::fit::EpochLog;
use crate::{Error, Result};

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 420;
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);

/// The curves of `history` as an SVG document titled `title`.
pub fn curves_svg(history: &[EpochLog], title: &str) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, history, title).map_err(|e| Error::shape("plot", e.to_string()))?;
        root.present()
            .map_err(|e| Error::shape("plot", e.to_string()))?;
    }
    Ok(svg)
}

/// Write the curves of `history` to `path` (SVG), atomically.
pub fn write_curves(path: &Path, history: &[EpochLog], title: &str) -> Result<()> {
    write_atomic(path, curves_svg(history, title)?.as_bytes())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw(root: &Area<'_>, history: &[EpochLog], title: &str) -> DrawResult {
    root.fill(&WHITE)?;
    // Shrink long titles to fit (a sans-serif character is about 0.55 em wide).
    let size = (0.9 * WIDTH as f64 / (0.55 * title.chars().count().max(1) as f64)).min(20.0);
    let root = root.titled(title, ("sans-serif", size))?;
    let (left, right) = root.split_horizontally(WIDTH / 2);
    let series = |f: fn(&EpochLog) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|e| Some((e.epoch as f64, f(e)?)))
            .filter(|(_, y)| y.is_finite())
            .collect()
    };
    let loss = [
        ("train loss", series(|e| Some(e.loss))),
        ("val loss", series(|e| e.val_loss)),
    ];
    let acc = [
        ("train accuracy", series(|e| Some(e.accuracy))),
        ("val accuracy", series(|e| e.val_accuracy)),
    ];
    panel(&left, "loss", &loss)?;
    panel(&right, "accuracy", &acc)?;
    Ok(())
}

fn panel(area: &Area<'_>, name: &str, lines: &[(&str, Vec<(f64, f64)>); 2]) -> DrawResult {
    let points = lines.iter().flat_map(|(_, p)| p.iter());
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        (x1, y0, y1) = (x1.max(x), y0.min(y), y1.max(y));
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(name, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.5..x1 + 0.5, (y0 - pad)..(y1 + pad))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(name)
        .max_light_lines(2)
        .x_labels((x1 as usize).clamp(2, 12))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.3}"))
        .draw()?;
    for ((label, pts), color) in lines.iter().zip([TRAIN, VAL]) {
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .position(if name == "loss" {
            SeriesLabelPosition::UpperRight
        } else {
            SeriesLabelPosition::LowerRight
        })
        .draw()?;
    Ok(())
}
