//! PNG charts with plotters: training curves and confusion matrices.

use crate::error::{Error, Result};
use crate::history::Epoch;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Reads one value of an epoch record.
type Getter = fn(&Epoch) -> f64;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Register a system TrueType font for plot text once; Err when none is installed.
fn font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let path = std::env::var("TLEARN_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|s| s.to_string()))
            .find(|p| Path::new(p).is_file());
        let path = path.ok_or_else(|| {
            format!("no TrueType font found for plots (tried {}); set TLEARN_FONT", FONT_PATHS.join(", "))
        })?;
        let bytes: &'static [u8] =
            Box::leak(std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path}: not a usable font"))
    })
    .clone()
    .map_err(Error::Other)
}

fn err<E: std::fmt::Display>(e: E) -> Error {
    Error::Other(format!("plot: {e}"))
}

/// What a chart is drawn on.
type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// A `size` PNG at `path`: `draw` paints a white area, drawn to a temporary sibling renamed into
/// place.
fn png(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    font()?;
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::Io { path: path.into(), err: e })
}

/// The series' names in a box, as the training curves show them.
fn legend<'a, CT: plotters::coord::CoordTranslate>(chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>) -> Result<()> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)
}

/// Two panels side by side: loss and accuracy per epoch, train vs validation (Keras' `plot(history)`).
pub fn history(path: &Path, title: &str, h: &[Epoch]) -> Result<()> {
    png(path, (1200, 480), |root| {
        let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
        let panels = root.split_evenly((1, 2));
        let n = h.len().max(2) as f64;
        let series: [(&str, Getter, Getter); 2] =
            [("loss", |e| e.loss, |e| e.val_loss), ("accuracy", |e| e.accuracy, |e| e.val_accuracy)];
        for (panel, (name, tr, va)) in panels.iter().zip(series) {
            let vals: Vec<f64> = h.iter().flat_map(|e| [tr(e), va(e)]).filter(|v| v.is_finite()).collect();
            let (lo, hi) = vals.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let pad = ((hi - lo) * 0.08).max(1e-3);
            let mut chart = ChartBuilder::on(panel)
                .caption(name, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(1f64..n, (lo - pad)..(hi + pad))
                .map_err(err)?;
            chart.configure_mesh().x_desc("epoch").y_desc(name).label_style(("sans-serif", 13)).draw().map_err(err)?;
            chart
                .draw_series(LineSeries::new(h.iter().map(|e| (e.epoch as f64, tr(e))), BLUE.stroke_width(2)))
                .map_err(err)?
                .label(format!("training {name}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
            chart.draw_series(h.iter().map(|e| Circle::new((e.epoch as f64, tr(e)), 3, BLUE.filled()))).map_err(err)?;
            chart
                .draw_series(LineSeries::new(
                    h.iter().filter(|e| va(e).is_finite()).map(|e| (e.epoch as f64, va(e))),
                    RED.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("validation {name}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
            legend(&mut chart)?;
        }
        Ok(())
    })
}

/// A learning-rate sweep as `lr_find` draws it: per step the rate, the batch loss and the smoothed
/// loss, and named suggestions (name, rate, smoothed loss there).
pub struct LrPlot<'a> {
    pub lrs: &'a [f64],
    pub losses: &'a [f64],
    pub smoothed: &'a [f64],
    pub marks: &'a [(&'a str, f64, f64)],
}

/// The smoothed loss against the learning rate on a log axis, without the last five steps
/// (fastai's `plot_lr_find`: where the loss shoots up, it would flatten the rest), the batch
/// losses as faint points within its range, each suggestion a labelled dot.
pub fn lr_find(path: &Path, title: &str, c: &LrPlot) -> Result<()> {
    let shown = if c.lrs.len() > 10 { c.lrs.len() - 5 } else { c.lrs.len() };
    let finite: Vec<f64> = c.smoothed[..shown].iter().copied().filter(|v| v.is_finite()).collect();
    let (lo, hi) = finite.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    if finite.is_empty() || shown < 2 {
        return Err(err("fewer than two steps to draw"));
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let (y0, y1) = (lo - pad, hi + pad);
    let (x0, x1) = (c.lrs[0], c.lrs[shown - 1]);
    let c = LrPlot { lrs: &c.lrs[..shown], losses: &c.losses[..shown], smoothed: &c.smoothed[..shown], marks: c.marks };
    png(path, (800, 520), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("learning rate")
            .y_desc("loss")
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        let inside = |v: f64| v.is_finite() && (y0..=y1).contains(&v);
        let raw = c.lrs.iter().zip(c.losses).filter(|(_, l)| inside(**l));
        chart.draw_series(raw.map(|(&x, &y)| Circle::new((x, y), 2, BLUE.mix(0.25).filled()))).map_err(err)?;
        let smooth = c.lrs.iter().zip(c.smoothed).filter(|(_, l)| l.is_finite()).map(|(&x, &y)| (x, y));
        chart
            .draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))
            .map_err(err)?
            .label("smoothed loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
        for (i, &(name, lr, loss)) in c.marks.iter().enumerate() {
            let color = Palette99::pick(i + 1).to_rgba();
            chart
                .draw_series(std::iter::once(Circle::new((lr, loss), 6, color.filled())))
                .map_err(err)?
                .label(format!("{name} {lr:.2e}"))
                .legend(move |(x, y)| Circle::new((x + 9, y), 5, color.filled()));
        }
        legend(&mut chart)?;
        Ok(())
    })
}

/// A confusion matrix as a heat map shaded by each true class's share (rows: true class, columns:
/// predicted), each cell its count and share, so a rare class's recall shows as plainly as a
/// common one's.
pub fn confusion(path: &Path, classes: &[String], m: &[Vec<usize>]) -> Result<()> {
    let k = classes.len();
    let side = 140 + 110 * k as u32;
    let shares = crate::metrics::normalized_rows(m);
    png(path, (side + 60, side), |root| {
        // Cells occupy [0, k)²; the margins left of and below them hold the class names.
        let mut chart = ChartBuilder::on(root)
            .caption("confusion matrix (rows: true, columns: predicted; % of the row)", ("sans-serif", 16))
            .margin(10)
            .build_cartesian_2d(-1.4f64..k as f64, -0.6f64..k as f64)
            .map_err(err)?;
        let label =
            |t: &str, x: f64, y: f64| Text::new(t.to_string(), (x, y), ("sans-serif", 15).into_font().color(&BLACK));
        for (i, c) in classes.iter().enumerate() {
            chart.draw_series(std::iter::once(label(c, -1.35, (k - 1 - i) as f64 + 0.6))).map_err(err)?;
            chart.draw_series(std::iter::once(label(c, i as f64 + 0.2, -0.2))).map_err(err)?;
        }
        for (i, row) in m.iter().enumerate() {
            for (j, &c) in row.iter().enumerate() {
                let y = (k - 1 - i) as f64;
                let share = shares[i][j];
                let shade = 1.0 - 0.8 * share;
                let color = RGBColor((255.0 * shade) as u8, (255.0 * shade) as u8, 255);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(j as f64, y), (j as f64 + 1.0, y + 1.0)],
                        color.filled(),
                    )))
                    .map_err(err)?;
                let text_color = if shade < 0.5 { WHITE } else { BLACK };
                chart
                    .draw_series(std::iter::once(Text::new(
                        c.to_string(),
                        (j as f64 + 0.38, y + 0.62),
                        ("sans-serif", 20).into_font().color(&text_color),
                    )))
                    .map_err(err)?;
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("{:.0} %", 100.0 * share),
                        (j as f64 + 0.36, y + 0.36),
                        ("sans-serif", 14).into_font().color(&text_color),
                    )))
                    .map_err(err)?;
            }
        }
        Ok(())
    })
}

/// Horizontal bars, one per (label, value in [0, 1]), top to bottom, the value written at the bar's end.
pub fn bars(path: &Path, title: &str, bars: &[(String, f64)]) -> Result<()> {
    let n = bars.len().max(1);
    png(path, (900, 90 + 34 * n as u32), |root| {
        let lo = bars.iter().map(|b| b.1).fold(1.0f64, f64::min);
        let lo = ((lo - 0.05).max(0.0) * 20.0).floor() / 20.0;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(250)
            .build_cartesian_2d(lo..1.0f64, (0..n).into_segmented())
            .map_err(err)?;
        // Row i (from the top) sits in segment n−1−i.
        let label = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(k) if *k < n => bars.get(n - 1 - k).map(|b| b.0.clone()).unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&label)
            .y_label_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        for (i, (_, v)) in bars.iter().enumerate() {
            let k = n - 1 - i;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(lo, SegmentValue::Exact(k)), (*v, SegmentValue::Exact(k + 1))],
                    BLUE.mix(0.6).filled(),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(lo, SegmentValue::Exact(k)), (*v, SegmentValue::Exact(k + 1))],
                    WHITE.stroke_width(3),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!(" {v:.4}"),
                    (*v, SegmentValue::CenterOf(k)),
                    ("sans-serif", 14),
                )))
                .map_err(err)?;
        }
        Ok(())
    })
}

/// ROC curves (false-positive rate → true-positive rate), one per (label, points), with the chance
/// diagonal.
pub fn roc(path: &Path, curves: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    png(path, (560, 520), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("ROC curve", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1.0001f64)
            .map_err(err)?;
        chart.configure_mesh().x_desc("false-positive rate").y_desc("true-positive rate").draw().map_err(err)?;
        chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3))).map_err(err)?;
        for (i, (label, pts)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(err)?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        Ok(())
    })
}
