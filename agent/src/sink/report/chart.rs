//! Line charts as inline SVG for the HTML report: no script, no font, nothing fetched. Axes with
//! time labels (UTC) and values, one `<g class="series">` per line with a `<title>` naming it,
//! so a reader hovering a line (or a test reading the DOM) finds whose it is.

use std::fmt::Write as _;

use jiff::Timestamp;

use crate::text::escape_html as h;

/// The drawing's size in SVG units (it scales to the page's width).
const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 260.0;
/// Room for the value labels (left) and the time labels (bottom).
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 30.0;
/// Points drawn per line at most: past that, neighbours merge, keeping their highest value (a
/// peak must stay visible).
pub const MAX_DRAWN: usize = 1200;

/// Distinct colours for the lines, in order (Tableau 10).
pub const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// One line: its values at seconds from the chart's start.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// The element's id (unique in the page).
    pub id: String,
    /// Extra classes beside `series` (e.g. `pid-42`).
    pub class: String,
    /// The `<title>`: who this line is (escaped when written).
    pub title: String,
    pub color: &'static str,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

/// A chart: lines over a span of time.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub id: String,
    /// What the values are, for the chart's own title.
    pub title: String,
    /// The time at second 0.
    pub start: Timestamp,
    /// Seconds the x axis covers.
    pub span_s: f64,
    pub lines: Vec<Line>,
}

/// The smallest "nice" step (1, 2 or 5 times a power of ten) at least `raw`.
pub fn nice_step(raw: f64) -> f64 {
    if raw.is_nan() || raw <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag)
}

/// The y axis for values up to `max`: (top of the axis, step between ticks), about five ticks.
/// Whole steps for counts (`integral`).
pub fn y_axis(max: f64, integral: bool) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let mut step = nice_step(max / 5.0);
    if integral {
        step = step.max(1.0);
    }
    let top = (max / step - 1e-9).ceil().max(1.0) * step;
    (top, step)
}

/// Seconds between time labels for a span: at most about eight labels.
pub fn time_step(span_s: f64) -> f64 {
    const STEPS: [f64; 18] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        10800.0, 21600.0, 43200.0, 86400.0,
    ];
    STEPS
        .iter()
        .copied()
        .find(|s| span_s / s <= 8.0)
        .unwrap_or_else(|| (span_s / 8.0 / 86400.0).ceil() * 86400.0)
}

/// A value as a label: whole numbers without a fraction, others with up to two decimals.
pub fn label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// At most `max` points: consecutive points merged, each group drawn at its first time with its
/// highest value.
pub fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max == 0 {
        return points.to_vec();
    }
    let per = points.len().div_ceil(max);
    points
        .chunks(per)
        .map(|c| (c[0].0, c.iter().map(|p| p.1).fold(f64::MIN, f64::max)))
        .collect()
}

impl Chart {
    /// Whether every value is a whole number (counts, not rates).
    fn integral(&self) -> bool {
        self.lines
            .iter()
            .flat_map(|l| &l.points)
            .all(|p| p.1.fract() == 0.0)
    }

    /// The chart as an `<svg>` element.
    pub fn svg(&self) -> String {
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let span = if self.span_s > 0.0 { self.span_s } else { 1.0 };
        let max = self
            .lines
            .iter()
            .flat_map(|l| &l.points)
            .map(|p| p.1)
            .fold(0.0, f64::max);
        let (top, step) = y_axis(max, self.integral());
        let x = |t: f64| LEFT + (t.clamp(0.0, span) / span) * plot_w;
        let y = |v: f64| TOP + plot_h - (v.clamp(0.0, top) / top) * plot_h;

        let mut s = String::with_capacity(4096);
        let _ = write!(
            s,
            r#"<svg class="chart" id="{id}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}"><title>{title}</title>"#,
            id = h(&self.id),
            title = h(&self.title),
        );
        // Value axis: grid lines and labels.
        let ticks = (top / step).round() as usize;
        for i in 0..=ticks {
            let v = step * i as f64;
            let yy = y(v);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{LEFT}" y1="{yy:.1}" x2="{x2:.1}" y2="{yy:.1}"/><text class="ylabel" x="{lx:.1}" y="{ty:.1}" text-anchor="end">{v}</text>"#,
                x2 = LEFT + plot_w,
                lx = LEFT - 6.0,
                ty = yy + 4.0,
                v = label(v),
            );
        }
        // Time axis: labels at round times of day.
        let tstep = time_step(span);
        let start_s = self.start.as_second() as f64;
        let first = (start_s / tstep).ceil() * tstep - start_s;
        let mut t = first;
        while t <= span + 1e-9 {
            let xx = x(t);
            let when = Timestamp::from_second((start_s + t) as i64)
                .map(|ts| ts.strftime("%H:%M:%S").to_string())
                .unwrap_or_default();
            let _ = write!(
                s,
                r#"<line class="tick" x1="{xx:.1}" y1="{y0:.1}" x2="{xx:.1}" y2="{y1:.1}"/><text class="xlabel" x="{xx:.1}" y="{ly:.1}" text-anchor="middle">{when}</text>"#,
                y0 = TOP + plot_h,
                y1 = TOP + plot_h + 4.0,
                ly = TOP + plot_h + 18.0,
            );
            t += tstep;
        }
        let _ = write!(
            s,
            r#"<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{yb:.1}"/><line class="axis" x1="{LEFT}" y1="{yb:.1}" x2="{xr:.1}" y2="{yb:.1}"/>"#,
            yb = TOP + plot_h,
            xr = LEFT + plot_w,
        );
        for line in &self.lines {
            let pts = thin(&line.points, MAX_DRAWN);
            let coords: Vec<String> = pts
                .iter()
                .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
                .collect();
            let dash = if line.dashed {
                r#" stroke-dasharray="5 3""#
            } else {
                ""
            };
            let _ = write!(
                s,
                r#"<g class="series {class}" id="{id}"><title>{title}</title><polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>"#,
                class = h(&line.class),
                id = h(&line.id),
                title = h(&line.title),
                pts = coords.join(" "),
                color = line.color,
            );
            // A single point draws no line: a dot shows it.
            if let [(t, v)] = pts[..] {
                let _ = write!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                    x(t),
                    y(v),
                    line.color
                );
            }
            s.push_str("</g>");
        }
        s.push_str("</svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps_and_axes() {
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(1.2), 2.0);
        assert_eq!(nice_step(4.1), 5.0);
        assert_eq!(nice_step(6.0), 10.0);
        assert_eq!(nice_step(130.0), 200.0);
        assert_eq!(y_axis(30.0, true), (30.0, 10.0));
        assert_eq!(y_axis(31.0, true), (40.0, 10.0));
        assert_eq!(y_axis(0.0, true), (1.0, 1.0));
        assert_eq!(
            y_axis(3.0, true),
            (3.0, 1.0),
            "counts step by whole numbers"
        );
        assert_eq!(y_axis(0.9, false), (1.0, 0.2));
        assert_eq!(y_axis(812.4, false), (1000.0, 200.0));
        assert_eq!(time_step(10.0), 2.0);
        assert_eq!(time_step(60.0), 10.0);
        assert_eq!(time_step(3600.0), 600.0);
        assert_eq!(time_step(7.0 * 86400.0), 86400.0);
        assert_eq!(label(3.0), "3");
        assert_eq!(label(0.25), "0.25");
        assert_eq!(label(0.2), "0.2");
    }

    #[test]
    fn thinning_keeps_peaks() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), f64::from(i % 3))).collect();
        assert_eq!(thin(&pts, 20), pts);
        let t = thin(&pts, 4);
        assert_eq!(t, [(0.0, 2.0), (3.0, 2.0), (6.0, 2.0), (9.0, 0.0)]);
    }

    fn chart(lines: Vec<Line>) -> Chart {
        Chart {
            id: "cw".into(),
            title: "CLOSE_WAIT now".into(),
            start: "2026-11-25T16:00:00Z".parse().expect("time"),
            span_s: 10.0,
            lines,
        }
    }

    fn line(points: Vec<(f64, f64)>) -> Line {
        Line {
            id: "cw-pid-42".into(),
            class: "pid-42".into(),
            title: "pid 42 <leaker> & co".into(),
            color: PALETTE[0],
            dashed: false,
            points,
        }
    }

    /// The coordinates of the polyline of the series `id`.
    fn coords(svg: &str, id: &str) -> Vec<(f64, f64)> {
        let at = svg.find(&format!(r#"id="{id}""#)).expect("series");
        let rest = &svg[at..];
        let p = rest.find(r#"points=""#).expect("points") + 8;
        let end = rest[p..].find('"').expect("end");
        rest[p..p + end]
            .split(' ')
            .map(|xy| {
                let (x, y) = xy.split_once(',').expect("x,y");
                (x.parse().expect("x"), y.parse().expect("y"))
            })
            .collect()
    }

    #[test]
    fn lines_are_scaled_into_the_plot() {
        let svg = chart(vec![line(vec![(0.0, 0.0), (5.0, 30.0), (10.0, 15.0)])]).svg();
        let c = coords(&svg, "cw-pid-42");
        let (bottom, plot_w, plot_h) =
            (HEIGHT - BOTTOM, WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        // Axis top is 30: the peak touches it, half of it sits half-way.
        assert_eq!(c[0], (LEFT, bottom));
        assert_eq!(c[1], (LEFT + plot_w / 2.0, TOP));
        assert!((c[2].1 - (TOP + plot_h / 2.0)).abs() < 0.06, "{c:?}");
        assert_eq!(c[2].0, LEFT + plot_w);
        for v in ["0", "10", "20", "30"] {
            assert!(
                svg.contains(&format!(r#"text-anchor="end">{v}</text>"#)),
                "{svg}"
            );
        }
        // Labels every 2 s, as times of day.
        for t in ["16:00:00", "16:00:02", "16:00:10"] {
            assert!(svg.contains(&format!(">{t}</text>")), "{svg}");
        }
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn titles_and_ids_are_escaped_and_a_lone_point_is_drawn() {
        let mut l = line(vec![(3.0, 2.0)]);
        l.id = r#"x"><script>"#.into();
        let svg = chart(vec![l]).svg();
        assert!(
            svg.contains("<title>pid 42 &lt;leaker&gt; &amp; co</title>"),
            "{svg}"
        );
        assert!(svg.contains(r#"id="x&quot;&gt;&lt;script&gt;""#), "{svg}");
        assert!(!svg.contains("<script"), "{svg}");
        assert!(svg.contains("<circle "), "{svg}");
    }

    #[test]
    fn an_empty_chart_has_axes_and_no_nan() {
        let mut c = chart(Vec::new());
        c.span_s = 0.0;
        let svg = c.svg();
        assert!(svg.starts_with(r#"<svg class="chart" id="cw""#));
        assert!(svg.ends_with("</svg>"));
        assert!(!svg.contains("NaN"), "{svg}");
    }
}
