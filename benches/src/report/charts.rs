//! SVG charts drawn with plotters' SVG backend: grouped bars and lines.
//!
//! Text is written as SVG `<text>` elements (plotters' font-less build
//! estimates text sizes for layout), so nothing here needs a font library.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Chart size in pixels.
const SIZE: (u32, u32) = (960, 540);

/// Series colours, in order.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

const FONT: &str = "sans-serif";

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Bars: for each category on the x axis, one bar per group (legend).
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    /// Chart title.
    pub title: String,
    /// Y axis description (with its unit).
    pub y_desc: String,
    /// X axis categories.
    pub categories: Vec<String>,
    /// Legend entries: one bar per category each.
    pub groups: Vec<String>,
    /// `values[group][category]`; `None` leaves a gap.
    pub values: Vec<Vec<Option<f64>>>,
    /// Logarithmic y axis (for values spanning orders of magnitude).
    pub log_y: bool,
    /// Whether to draw the legend (the group names).
    pub legend: bool,
}

/// Lines through points, one per series.
#[derive(Debug, Clone, PartialEq)]
pub struct Lines {
    /// Chart title.
    pub title: String,
    /// X axis description.
    pub x_desc: String,
    /// Y axis description.
    pub y_desc: String,
    /// `(name, points)`, points as `(x, y)`.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Byte sizes on the x axis, logarithmic (base 2).
    pub log_x_bytes: bool,
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A short number for labels: up to three significant digits, trailing
/// zeros dropped, k/M/G suffixes for large values.
pub fn short(v: f64) -> String {
    let a = v.abs();
    let (x, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let ax = x.abs();
    let decimals = if ax >= 100.0 || ax == 0.0 {
        0
    } else if ax >= 10.0 {
        1
    } else if ax >= 1.0 {
        2
    } else {
        3
    };
    let mut s = format!("{x:.decimals$}");
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    s + suffix
}

/// A byte size as people write it (`256 B`, `1 KiB`, `2 MiB`, `1.4 KiB`).
pub fn bytes_label(v: f64) -> String {
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, scale) in units {
        let s = scale as f64;
        if v >= s {
            let x = v / s;
            return if (x - x.round()).abs() < 0.05 {
                format!("{:.0} {name}", x.round())
            } else {
                format!("{x:.1} {name}")
            };
        }
    }
    format!("{v:.0} B")
}

/// Draws `bars` into an SVG file at `path`.
pub fn draw_bars(bars: &Bars, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    draw_bars_on(bars, &root)?;
    root.present().map_err(err)
}

fn draw_bars_on(bars: &Bars, root: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let n_cat = bars.categories.len().max(1);
    let n_grp = bars.groups.len().max(1);
    let present: Vec<f64> = bars
        .values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .filter(|v| v.is_finite() && (*v > 0.0 || !bars.log_y))
        .collect();
    let max = present.iter().copied().fold(0.0f64, f64::max);
    let min_pos = present
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let x_range = -0.5..(n_cat as f64 - 0.5);
    // Room for the legend above the tallest bar.
    let top = if max > 0.0 { max * 1.25 } else { 1.0 };
    let width = 0.8 / n_grp as f64;
    let offset = |g: usize| -0.4 + width * g as f64;
    let label_lines = bars
        .categories
        .iter()
        .map(|c| wrap(c).len())
        .max()
        .unwrap_or(1) as u32;
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(&bars.title, (FONT, 22))
        .margin(14)
        .x_label_area_size(16 + 16 * label_lines)
        .y_label_area_size(70);
    // Axes, each group's rectangles and value labels, legend and category
    // labels; a macro because the linear and logarithmic charts differ in type.
    macro_rules! body {
        ($chart:ident, $floor:expr) => {{
            $chart
                .configure_mesh()
                .disable_x_mesh()
                .light_line_style(WHITE)
                .x_labels(0)
                .y_desc(bars.y_desc.as_str())
                .y_label_formatter(&|v| short(*v))
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 15))
                .draw()
                .map_err(err)?;
            for (g, name) in bars.groups.iter().enumerate() {
                let c = color(g);
                let rects: Vec<Rectangle<(f64, f64)>> = bars.values[g]
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| {
                        let v = (*v)?;
                        (v.is_finite() && v > $floor).then(|| {
                            let x0 = i as f64 + offset(g);
                            Rectangle::new([(x0, $floor), (x0 + width * 0.92, v)], c.filled())
                        })
                    })
                    .collect();
                $chart
                    .draw_series(rects)
                    .map_err(err)?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled())
                    });
                if n_cat * n_grp <= 40 {
                    let labels: Vec<Text<'_, (f64, f64), String>> = bars.values[g]
                        .iter()
                        .enumerate()
                        .filter_map(|(i, v)| {
                            let v = (*v)?;
                            (v.is_finite() && v > $floor).then(|| {
                                let x = i as f64 + offset(g) + width * 0.46;
                                Text::new(
                                    short(v),
                                    (x, v),
                                    (FONT, 11)
                                        .into_font()
                                        .color(&BLACK)
                                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                                )
                            })
                        })
                        .collect();
                    $chart.draw_series(labels).map_err(err)?;
                }
            }
            if bars.legend {
                $chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.4))
                    .label_font((FONT, 14))
                    .draw()
                    .map_err(err)?;
            }
            for (i, cat) in bars.categories.iter().enumerate() {
                let (px, py) = $chart.backend_coord(&(i as f64, $floor));
                for (l, line) in wrap(cat).iter().enumerate() {
                    root.draw(&Text::new(
                        line.clone(),
                        (px, py + 8 + 16 * l as i32),
                        (FONT, 14)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Center, VPos::Top)),
                    ))
                    .map_err(err)?;
                }
            }
        }};
    }
    if bars.log_y && min_pos.is_finite() {
        let floor = 10f64.powf(min_pos.log10().floor());
        let ceil = 10f64.powf((max * 4.0).log10().ceil());
        let mut chart = builder
            .build_cartesian_2d(x_range, (floor..ceil).log_scale())
            .map_err(err)?;
        body!(chart, floor);
    } else {
        let mut chart = builder.build_cartesian_2d(x_range, 0.0..top).map_err(err)?;
        body!(chart, 0.0);
    }
    Ok(())
}

/// Splits a category label into lines of at most about 16 characters.
fn wrap(label: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in label.split(' ') {
        match lines.last_mut() {
            Some(last) if last.len() + 1 + word.len() <= 16 => {
                last.push(' ');
                last.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    if lines.is_empty() {
        lines.push(String::new());
    }
    lines
}

/// Draws `lines` into an SVG file at `path`.
pub fn draw_lines(lines: &Lines, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let points: Vec<(f64, f64)> = lines
        .series
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let x_min = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let y_max = points.iter().map(|p| p.1).fold(0.0f64, f64::max);
    if !x_min.is_finite() || !x_max.is_finite() {
        return Err(format!("{}: no points to draw", lines.title));
    }
    let top = if y_max > 0.0 { y_max * 1.2 } else { 1.0 };
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&lines.title, (FONT, 22))
        .margin(14)
        .x_label_area_size(50)
        .y_label_area_size(70);
    macro_rules! body {
        ($chart:ident, $ticks:expr, $xfmt:expr, $map:expr) => {{
            $chart
                .configure_mesh()
                .light_line_style(WHITE)
                .x_labels($ticks)
                .x_desc(lines.x_desc.as_str())
                .y_desc(lines.y_desc.as_str())
                .x_label_formatter($xfmt)
                .y_label_formatter(&|v| short(*v))
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 15))
                .draw()
                .map_err(err)?;
            for (i, (name, pts)) in lines.series.iter().enumerate() {
                let c = color(i);
                let mut pts: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| ($map(x), y)).collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                $chart
                    .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                    .map_err(err)?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                    });
                $chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
                    .map_err(err)?;
            }
            $chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .label_font((FONT, 14))
                .draw()
                .map_err(err)?;
        }};
    }
    if lines.log_x_bytes {
        // Sizes on a log2 axis: one labelled tick per power of two.
        let (lo, hi) = (x_min.max(1.0).log2(), x_max.max(1.0).log2());
        let (lo, hi) = (lo.floor() - 0.3, hi.ceil() + 0.3);
        let ticks = (hi - lo).ceil() as usize + 1;
        let mut chart = builder.build_cartesian_2d(lo..hi, 0.0..top).map_err(err)?;
        let fmt = |v: &f64| {
            if (v - v.round()).abs() < 1e-6 {
                bytes_label(2f64.powf(v.round()))
            } else {
                String::new()
            }
        };
        body!(chart, ticks, &fmt, |x: f64| x.max(1.0).log2());
    } else {
        let pad = ((x_max - x_min) * 0.05).max(0.5);
        let mut chart = builder
            .build_cartesian_2d((x_min - pad)..(x_max + pad), 0.0..top)
            .map_err(err)?;
        body!(chart, 10, &|v: &f64| short(*v), |x: f64| x);
    }
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("bench-report-{}-{name}", std::process::id()))
    }

    #[test]
    fn labels() {
        assert_eq!(short(1_234_567.0), "1.23M");
        assert_eq!(short(1_600_000.0), "1.6M");
        assert_eq!(short(12_345.0), "12.3k");
        assert_eq!(short(123.4), "123");
        assert_eq!(short(1.234), "1.23");
        assert_eq!(short(0.0), "0");
        assert_eq!(short(20.0), "20");
        assert_eq!(bytes_label(256.0), "256 B");
        assert_eq!(bytes_label(2048.0), "2 KiB");
        assert_eq!(bytes_label(1448.0), "1.4 KiB");
        assert_eq!(bytes_label(8.0 * 1048576.0), "8 MiB");
        assert_eq!(
            wrap("echo-node-park throughput size=1024"),
            ["echo-node-park", "throughput", "size=1024"]
        );
        assert_eq!(wrap("a b c"), ["a b c"]);
    }

    #[test]
    fn bar_and_line_charts_are_svg_with_their_text() {
        let bars = Bars {
            title: "ping-pong latency".into(),
            y_desc: "round trip, us".into(),
            categories: vec!["echo-node-park".into(), "tokio".into()],
            groups: vec!["p50".into(), "p99".into()],
            values: vec![vec![Some(17.3), Some(24.2)], vec![Some(33.7), None]],
            log_y: false,
            legend: true,
        };
        let p = tmp("bars.svg");
        draw_bars(&bars, &p).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        for text in [
            "ping-pong latency",
            "echo-node-park",
            "tokio",
            "p99",
            "17.3",
            "33.7",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        let log = Bars {
            log_y: true,
            values: vec![
                vec![Some(21.0), Some(207_900.0)],
                vec![Some(56.9), Some(3_200.0)],
            ],
            ..bars
        };
        draw_bars(&log, &p).unwrap();
        let lines = Lines {
            title: "Gbit/s by message size".into(),
            x_desc: "message size".into(),
            y_desc: "Gbit/s".into(),
            series: vec![
                ("tcp".into(), vec![(65536.0, 10.0), (2097152.0, 20.0)]),
                ("ringwire".into(), vec![(65536.0, 11.0), (2097152.0, 22.0)]),
            ],
            log_x_bytes: true,
        };
        draw_lines(&lines, &p).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.contains("ringwire") && svg.contains("MiB"));
        let empty = Lines {
            series: vec![],
            ..lines
        };
        assert!(draw_lines(&empty, &p).is_err());
        std::fs::remove_file(&p).unwrap();
    }
}
