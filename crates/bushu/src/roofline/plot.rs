//! The roofline chart (`--plot out.svg`), drawn with `plotters`' SVG backend: log-log axes, the compute
//! and bandwidth roofs, secondary peaks dashed, the ridge, the analytic points per op family for prefill
//! and decode (FlashAttention as open markers) and the measured points of `--run`.

use super::analysis::{Analysis, Family, Pass};
use super::hardware::Hardware;
use super::run::RunPoint;
use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use std::path::Path;

/// A labelled point: intensity (FLOP/byte), FLOP/s.
struct Pt {
    label: String,
    x: f64,
    y: f64,
    color: RGBColor,
    filled: bool,
    measured: bool,
}

const PREFILL: RGBColor = RGBColor(31, 119, 180);
const DECODE: RGBColor = RGBColor(214, 39, 40);
const MEASURED: RGBColor = RGBColor(44, 160, 44);

fn points(hw: &Hardware, a: &Analysis, runs: &[RunPoint]) -> Vec<Pt> {
    let mut pts = Vec::new();
    let mut add_pass = |p: &Pass, color: RGBColor| {
        for f in Family::ALL {
            let t = p.family(f);
            if t.flops > 0.0 && t.bytes > 0.0 {
                let x = t.intensity();
                pts.push(Pt {
                    label: format!("{} {}", p.phase, f.name()),
                    x,
                    y: hw.attainable(x),
                    color,
                    filled: true,
                    measured: false,
                });
            }
        }
        let fa = &p.flash_attention;
        let x = fa.intensity();
        pts.push(Pt {
            label: format!("{} attention (flash)", p.phase),
            x,
            y: hw.attainable(x),
            color,
            filled: false,
            measured: false,
        });
    };
    add_pass(&a.prefill, PREFILL);
    add_pass(&a.decode, DECODE);
    for r in runs {
        pts.push(Pt {
            label: format!(
                "bushu {} (measured, {:.0}% of roof)",
                r.phase,
                100.0 * r.fraction_of_roof
            ),
            x: r.intensity,
            y: r.flops_per_s,
            color: MEASURED,
            filled: true,
            measured: true,
        });
    }
    pts
}

/// Writes the chart to `path` (`.svg`).
pub fn plot(path: &Path, hw: &Hardware, a: &Analysis, runs: &[RunPoint]) -> Result<()> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
    {
        Some(e) if e == "svg" => {}
        _ => bail!(
            "{}: only .svg output is supported (render it to PNG with e.g. `convert out.svg out.png`)",
            path.display()
        ),
    }
    let pts = points(hw, a, runs);
    let ridge = hw.ridge();
    let xs = pts.iter().map(|p| p.x).chain([ridge]);
    let (xmin, xmax) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (xmin, xmax) = (
        10f64.powf((xmin / 4.0).log10().floor()),
        10f64.powf((xmax * 4.0).log10().ceil()),
    );
    let top = hw.other_peaks.iter().map(|p| p.1).fold(hw.peak_flops, f64::max);
    let ys = pts.iter().map(|p| p.y).chain([hw.attainable(xmin)]);
    let ymin = ys.fold(f64::MAX, f64::min);
    let (ymin, ymax) = (
        10f64.powf((ymin / 3.0).log10().floor()),
        10f64.powf((top * 3.0).log10().ceil()),
    );

    let root = SVGBackend::new(path, (1100, 720)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (peak, unit) = if hw.peak_flops >= 1e12 {
        (hw.peak_flops / 1e12, "TFLOP/s")
    } else {
        (hw.peak_flops / 1e9, "GFLOP/s")
    };
    let title = format!(
        "Roofline: {} — {peak:.1} {unit}, {:.1} GB/s, ridge {:.2} FLOP/byte",
        hw.name,
        hw.bandwidth / 1e9,
        ridge
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("arithmetic intensity (FLOP/byte)")
        .y_desc("attainable FLOP/s")
        .x_label_formatter(&|x| if *x >= 1.0 { format!("{x:.0}") } else { format!("{x}") })
        .y_label_formatter(&|y| format!("{y:.0e}"))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| err(&e))?;

    let samples = 200;
    let curve = |peak: f64| {
        (0..=samples).map(move |i| {
            let x = xmin * (xmax / xmin).powf(i as f64 / samples as f64);
            (x, peak.min(hw.bandwidth * x))
        })
    };
    chart
        .draw_series(LineSeries::new(curve(hw.peak_flops), BLACK.stroke_width(3)))
        .map_err(|e| err(&e))?
        .label(format!("roof: {} / {:.0} GB/s", hw.compute_type, hw.bandwidth / 1e9))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(3)));
    for (label, peak) in &hw.other_peaks {
        let style = RGBColor(140, 140, 140).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(curve(*peak), 6, 4, style))
            .map_err(|e| err(&e))?
            .label(format!("{label} peak {:.3e} OP/s", peak))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    // Ridge.
    chart
        .draw_series(DashedLineSeries::new(
            vec![(ridge, ymin), (ridge, hw.peak_flops)],
            4,
            4,
            RGBColor(120, 120, 120).stroke_width(1),
        ))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(std::iter::once(Text::new(
            format!("ridge {ridge:.2}"),
            (ridge * 1.08, ymin * 2.0),
            ("sans-serif", 14).into_font().color(&RGBColor(90, 90, 90)),
        )))
        .map_err(|e| err(&e))?;

    // Points and labels, labels staggered so close points stay readable.
    for (i, p) in pts.iter().enumerate() {
        let style = if p.filled {
            p.color.filled()
        } else {
            p.color.stroke_width(2)
        };
        let size = if p.measured { 7 } else { 6 };
        if p.measured {
            chart
                .draw_series(std::iter::once(TriangleMarker::new((p.x, p.y), size, style)))
                .map_err(|e| err(&e))?;
        } else {
            chart
                .draw_series(std::iter::once(Circle::new((p.x, p.y), size, style)))
                .map_err(|e| err(&e))?;
        }
        // Labels of points that (nearly) coincide are stacked instead of drawn over each other.
        let near = |q: &Pt| (q.x / p.x).log10().abs() < 0.12 && (q.y / p.y).log10().abs() < 0.12;
        let k = pts[..i].iter().filter(|q| near(q)).count() as i32;
        let dy = if k == 0 { -22 } else { 2 + 15 * k };
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((p.x, p.y))
                    + Text::new(p.label.clone(), (8, dy), ("sans-serif", 13).into_font().color(&p.color)),
            ))
            .map_err(|e| err(&e))?;
    }
    for (name, color) in [
        ("prefill (analytic)", PREFILL),
        ("decode (analytic)", DECODE),
        ("measured (bushu)", MEASURED),
    ] {
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
