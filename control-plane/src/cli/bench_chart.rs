//! The cold-start chart: a CDF of submit → exec per mode, as a self-contained SVG with a
//! log-scale time axis (boots and restores differ by orders of magnitude).

use serde_json::Value;

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 6] = [
    "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

pub fn cdf_svg(report: &Value) -> String {
    let modes = report["modes"].as_object().cloned().unwrap_or_default();
    let series: Vec<(String, Vec<f64>)> = modes
        .iter()
        .map(|(name, m)| {
            let mut v: Vec<f64> = m["samples"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["submit_to_exec_ms"].as_f64())
                .map(|x| x.max(1.0))
                .collect();
            v.sort_by(f64::total_cmp);
            (name.clone(), v)
        })
        .collect();
    let all = series.iter().flat_map(|(_, v)| v.iter().copied());
    let lo = all.clone().fold(f64::INFINITY, f64::min).max(1.0);
    let hi = all.fold(1.0, f64::max);
    let (lo_e, hi_e) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let x = |ms: f64| LEFT + (ms.log10() - lo_e) / (hi_e - lo_e) * (W - LEFT - RIGHT);
    let y = |frac: f64| H - BOTTOM - frac * (H - TOP - BOTTOM);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">Skiff cold start: submit → process exec (CDF)</text>
"#,
        W / 2.0
    );
    for e in lo_e as i32..=hi_e as i32 {
        let px = x(10f64.powi(e));
        svg += &format!(
            r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#ddd"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>
"##,
            TOP,
            H - BOTTOM,
            H - BOTTOM + 18.0,
            human_ms(10f64.powi(e))
        );
    }
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        svg += &format!(
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}%</text>
"##,
            y(f),
            W - RIGHT,
            LEFT - 6.0,
            y(f) + 4.0,
            (f * 100.0) as u32
        );
    }
    svg += &format!(
        r#"<text x="{}" y="{}" text-anchor="middle">time from submit to exec (log scale)</text>
"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 15.0
    );
    for (i, (name, v)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts = String::new();
        for (k, ms) in v.iter().enumerate() {
            let (fa, fb) = (k as f64 / v.len() as f64, (k + 1) as f64 / v.len() as f64);
            pts += &format!("{:.1},{:.1} {:.1},{:.1} ", x(*ms), y(fa), x(*ms), y(fb));
        }
        svg += &format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>
<text x="{}" y="{}" fill="{color}">{name} (n={}, p50 {})</text>
"#,
            LEFT + 10.0,
            TOP + 16.0 + 16.0 * i as f64,
            v.len(),
            human_ms(v.get(v.len() / 2).copied().unwrap_or(0.0))
        );
    }
    svg + "</svg>\n"
}

fn human_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.3} s", ms / 1000.0).replace(".000", "")
    } else {
        format!("{ms:.0} ms")
    }
}
