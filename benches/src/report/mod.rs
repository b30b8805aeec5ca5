//! The benchmark suite's report: Markdown tables and SVG charts from the raw
//! outputs `benches/suite.sh` keeps in its report directory.
//!
//! The directory holds:
//!
//! - `suite.env`: `key=value` lines about the run (date, CPU model, kernel,
//!   the suite's command, ...), shown at the top of the report;
//! - `steps.tsv`: one line per step, tab-separated: name, status (`ok`,
//!   `skipped`, `failed`), seconds, options, title, command, note. Options
//!   are `;`-separated `key=value`: `ref=tokio,floor` (series that ratios are
//!   taken against), `criterion=mailbox` (the criterion groups whose name
//!   starts with this belong to the step), `pairs=a/b,c/d` (criterion
//!   functions compared: how many times faster `a` is than `b`),
//!   `with=echo` (also read `raw/echo.txt`), `keep=mode=throughput` (only
//!   lines with this key and value), `charts=by-size,efficiency` (only these
//!   charts);
//! - `raw/<name>.txt`: each step's output, from which every `RESULT` line
//!   is read (see [`results`]), and every line starting with `SKIP` is
//!   listed as a skipped item;
//! - `criterion/`: criterion's saved results (see [`criterion`]).
//!
//! [`write_report`] writes `report.md` and the charts beside it: per step,
//! whichever its results allow (`<step>-latency.svg`: p50/p99/p99.9 per
//! series, preferring ping-pong runs; `<step>-efficiency.svg`: messages per
//! server CPU-second; `<step>-throughput.svg`: the step's main rate;
//! `<step>-by-size.svg`: Gbit/s by message size, when a series was measured
//! at several sizes; `<step>-rss.svg`: peak RSS per process), and one chart
//! per criterion group.

pub mod charts;
pub mod criterion;
pub mod results;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use self::charts::{Bars, Lines};
use self::criterion::{Estimate, Throughput};
use self::results::{aggregate, distinct_labels, number, parse_all, Row};

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It ran and its output is in `raw/`.
    Ok,
    /// It did not run (a script or a tool is missing); the note says why.
    Skipped,
    /// It ran and failed; its output so far is in `raw/`.
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skipped => "skipped",
            Status::Failed => "FAILED",
        }
    }
}

/// One line of `steps.tsv`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Short name; its output is `raw/<name>.txt`.
    pub name: String,
    /// How it ended.
    pub status: Status,
    /// Wall-clock seconds it took.
    pub seconds: f64,
    /// Options (see the module docs).
    pub options: BTreeMap<String, String>,
    /// Section title.
    pub title: String,
    /// The exact command.
    pub command: String,
    /// Why it was skipped or failed, or a remark.
    pub note: String,
}

impl Step {
    /// Parses one `steps.tsv` line.
    pub fn parse(line: &str) -> Result<Step, String> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 6 {
            return Err(format!(
                "steps.tsv: expected 7 tab-separated fields in `{line}`"
            ));
        }
        let status = match f[1] {
            "ok" => Status::Ok,
            "skipped" => Status::Skipped,
            "failed" => Status::Failed,
            s => return Err(format!("steps.tsv: unknown status `{s}`")),
        };
        let seconds = f[2]
            .parse()
            .map_err(|_| format!("steps.tsv: bad seconds `{}`", f[2]))?;
        let options = f[3]
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let name = f[0].to_owned();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!("steps.tsv: bad step name `{name}`"));
        }
        Ok(Step {
            name,
            status,
            seconds,
            options,
            title: f[4].to_owned(),
            command: f[5].to_owned(),
            note: f.get(6).copied().unwrap_or("").to_owned(),
        })
    }

    fn option_list(&self, key: &str) -> Vec<String> {
        self.options
            .get(key)
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// `report.md`.
    pub report: PathBuf,
    /// The charts, in the order the report shows them.
    pub charts: Vec<PathBuf>,
    /// Problems that did not stop the report (a chart that could not be drawn).
    pub warnings: Vec<String>,
}

/// Headline measurements shown in tables, in column order, with headers.
const HEADLINE: [(&str, &str); 15] = [
    ("msgs_per_s", "msgs/s"),
    ("msgs_per_server_cpu_s", "msgs/server-CPU-s"),
    ("requests_per_s", "requests/s"),
    ("rps", "requests/s"),
    ("gbit_per_s", "Gbit/s"),
    ("ops_per_s", "ops/s"),
    ("p50_us", "p50 us"),
    ("p99_us", "p99 us"),
    ("p999_us", "p99.9 us"),
    ("server_cpu_s", "server CPU s"),
    ("client_cpu_s", "client CPU s"),
    ("loadgen_cpu_s", "loadgen CPU s"),
    ("other_cpu_s", "other CPU s"),
    ("server_peak_rss_kib", "server peak RSS MiB"),
    ("client_peak_rss_kib", "client peak RSS MiB"),
];

/// Rates a step's ratios and throughput chart use, first present wins.
const RATES: [&str; 6] = [
    "msgs_per_server_cpu_s",
    "gbit_per_s",
    "requests_per_s",
    "rps",
    "ops_per_s",
    "msgs_per_s",
];

fn header_of(key: &str) -> String {
    HEADLINE
        .iter()
        .find(|(k, _)| *k == key)
        .map_or_else(|| key.to_owned(), |(_, h)| (*h).to_owned())
}

fn cell(key: &str, v: f64) -> String {
    if key.ends_with("_rss_kib") {
        format!("{:.1}", v / 1024.0)
    } else if key.ends_with("_us") || key.ends_with("_s") && v < 100.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

/// A Markdown table; columns `right` and after are right-aligned, except
/// those listed in `left`.
fn table(headers: &[String], rows: &[Vec<String>], right: usize, left: &[usize]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", headers.join(" | "));
    let aligns: Vec<&str> = (0..headers.len())
        .map(|i| {
            if i >= right && !left.contains(&i) {
                "---:"
            } else {
                "---"
            }
        })
        .collect();
    let _ = writeln!(s, "|{}|", aligns.join("|"));
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

/// Reads `suite.env`.
pub fn read_env(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Reads `steps.tsv`.
pub fn read_steps(path: &Path) -> Result<Vec<Step>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(Step::parse)
        .collect()
}

/// Builds the report of the suite run in `dir` (see the module docs).
pub fn write_report(dir: &Path) -> Result<Written, String> {
    let env = read_env(&dir.join("suite.env"));
    let steps = read_steps(&dir.join("steps.tsv"))?;
    let estimates = criterion::read_dir(&dir.join("criterion"))?;
    let mut out = Written {
        report: dir.join("report.md"),
        ..Written::default()
    };
    let mut md = String::new();
    let get = |k: &str| {
        env.iter()
            .find(|(key, _)| key == k)
            .map_or("unknown", |(_, v)| v.as_str())
    };
    let _ = writeln!(md, "# ringwire benchmark suite\n");
    let _ = writeln!(
        md,
        "{} run of {}, {} (UTC). Ratios are measured within this run.\n",
        get("mode"),
        get("commit"),
        get("date")
    );
    let _ = writeln!(md, "- CPU: {} ({} CPUs online)", get("cpu"), get("cpus"));
    let _ = writeln!(md, "- kernel: {}", get("kernel"));
    let _ = writeln!(md, "- rustc: {}", get("rustc"));
    let _ = writeln!(
        md,
        "- load average before / after: {} / {}",
        get("load_start"),
        get("load_end")
    );
    let _ = writeln!(md, "- command: `{}`", get("command"));
    let _ = writeln!(
        md,
        "- measured in {} s (building before that: {} s)\n",
        get("measure_seconds"),
        get("build_seconds")
    );
    let _ = writeln!(md, "## Steps\n");
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.status.as_str().to_owned(),
                format!("{:.1}", s.seconds),
                format!("`{}`", s.command.replace('|', "\\|")),
                s.note.replace('|', "\\|"),
            ]
        })
        .collect();
    md.push_str(&table(
        &["step", "status", "s", "command", "note"].map(String::from),
        &rows,
        2,
        &[3, 4],
    ));
    md.push('\n');
    for step in &steps {
        let _ = writeln!(md, "## {} ({})\n", step.title, step.name);
        let _ = writeln!(md, "`{}`\n", step.command);
        if step.status != Status::Ok {
            let _ = writeln!(md, "**{}**: {}\n", step.status.as_str(), step.note);
        }
        let raw_name = format!("raw/{}.txt", step.name);
        let raw = std::fs::read_to_string(dir.join(&raw_name)).unwrap_or_default();
        let skips: Vec<&str> = raw
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("SKIP"))
            .collect();
        for s in &skips {
            let _ = writeln!(md, "- skipped: {}", s.trim_start_matches("SKIP").trim());
        }
        if !skips.is_empty() {
            md.push('\n');
        }
        let mut lines = parse_all(&raw);
        for other in step.option_list("with") {
            let text =
                std::fs::read_to_string(dir.join(format!("raw/{other}.txt"))).unwrap_or_default();
            lines.extend(parse_all(&text));
        }
        if let Some((k, v)) = step.options.get("keep").and_then(|kv| kv.split_once('=')) {
            lines.retain(|l| l.get(k) == Some(v));
        }
        let rows = aggregate(&lines);
        if !rows.is_empty() {
            md.push_str(&results_table(step, &rows));
            md.push('\n');
            let wanted = step.option_list("charts");
            for (kind, chart) in step_charts(step, &rows) {
                if !wanted.is_empty() && !wanted.iter().any(|w| w == kind) {
                    continue;
                }
                let file = format!("{}-{kind}.svg", step.name);
                embed(dir, &file, chart, &mut md, &mut out);
            }
        }
        if let Some(prefix) = step.options.get("criterion") {
            let mut groups: Vec<&str> = Vec::new();
            for e in estimates
                .iter()
                .filter(|e| e.group.starts_with(prefix.as_str()))
            {
                if !groups.contains(&e.group.as_str()) {
                    groups.push(&e.group);
                }
            }
            if groups.is_empty() {
                let _ = writeln!(md, "No criterion results for `{prefix}`.\n");
            }
            for g in groups {
                let list: Vec<&Estimate> = estimates.iter().filter(|e| e.group == g).collect();
                md.push_str(&criterion_section(step, g, &list));
                let file = format!("criterion-{}.svg", sanitize(g));
                embed(
                    dir,
                    &file,
                    Chart::Bars(criterion_chart(g, &list)),
                    &mut md,
                    &mut out,
                );
            }
        }
        if step.status != Status::Skipped {
            let mut also = String::new();
            for other in step.option_list("with") {
                let _ = write!(also, ", with [raw/{other}.txt](raw/{other}.txt)");
            }
            let _ = writeln!(md, "Raw output: [{raw_name}]({raw_name}){also}\n");
        }
    }
    std::fs::write(&out.report, md).map_err(|e| format!("{}: {e}", out.report.display()))?;
    Ok(out)
}

/// A chart of either kind.
pub enum Chart {
    /// Grouped bars.
    Bars(Bars),
    /// Lines.
    Lines(Lines),
}

fn embed(dir: &Path, file: &str, chart: Chart, md: &mut String, out: &mut Written) {
    let path = dir.join(file);
    let (title, drawn) = match &chart {
        Chart::Bars(b) => (b.title.clone(), charts::draw_bars(b, &path)),
        Chart::Lines(l) => (l.title.clone(), charts::draw_lines(l, &path)),
    };
    match drawn {
        Ok(()) => {
            let _ = writeln!(md, "![{title}]({file})\n");
            out.charts.push(path);
        }
        Err(e) => out.warnings.push(format!("{file}: {e}")),
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The measurement keys a step's table shows.
fn columns(rows: &[Row]) -> Vec<String> {
    let has = |k: &str| rows.iter().any(|r| r.value(k).is_some());
    let mut cols: Vec<String> = HEADLINE
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| has(k))
        .filter(|k| *k != "rps" || !has("requests_per_s"))
        .map(str::to_owned)
        .collect();
    if cols.is_empty() {
        for r in rows {
            for (k, _) in &r.values {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    cols
}

/// The rate a step's ratios use.
fn main_rate(rows: &[Row]) -> Option<&'static str> {
    RATES
        .iter()
        .copied()
        .find(|k| rows.iter().any(|r| r.value(k).is_some()))
}

/// The row of series `series` in the same case as `row`.
fn peer<'a>(rows: &'a [Row], row: &Row, series: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.series == series && r.case == row.case)
}

fn results_table(step: &Step, rows: &[Row]) -> String {
    let cols = columns(rows);
    let refs: Vec<String> = step
        .option_list("ref")
        .into_iter()
        .filter(|s| rows.iter().any(|r| &r.series == s))
        .collect();
    // Ratios of the main rate, the median latency and the peak RSS.
    let mut ratio_keys: Vec<&str> = main_rate(rows).into_iter().collect();
    for k in ["p50_us", "server_peak_rss_kib", "client_peak_rss_kib"] {
        if cols.iter().any(|c| c == k) {
            ratio_keys.push(k);
        }
    }
    let ratio_header = |k: &str| match k {
        "p50_us" => "p50".to_owned(),
        "server_peak_rss_kib" => "server RSS".to_owned(),
        "client_peak_rss_kib" => "client RSS".to_owned(),
        k => header_of(k),
    };
    let mut headers = vec!["series".to_owned(), "case".to_owned()];
    headers.extend(cols.iter().map(|c| header_of(c)));
    for r in &refs {
        for k in &ratio_keys {
            headers.push(format!("{} x {r}", ratio_header(k)));
        }
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = vec![row.series.clone(), row.case_label()];
            cells.extend(
                cols.iter()
                    .map(|c| row.value(c).map_or_else(|| "-".to_owned(), |v| cell(c, v))),
            );
            for r in &refs {
                let other = peer(rows, row, r);
                for k in &ratio_keys {
                    cells.push(match (row.value(k), other.and_then(|o| o.value(k))) {
                        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                        _ => "-".to_owned(),
                    });
                }
            }
            cells
        })
        .collect();
    let mut s = table(&headers, &body, 2, &[]);
    if cols.iter().any(|c| c == "other_cpu_s") {
        s.push_str(
            "\n`other CPU s`: CPU time of everything else on the machine during the measured \
             interval (other processes, interrupts); a large value means the run was disturbed.\n",
        );
    }
    if !refs.is_empty() {
        s.push_str(
            "\n`x REF` columns: this series over REF in the same case; above 1 is more for rates, \
             slower for latencies, more memory for RSS.\n",
        );
    }
    if rows.iter().any(|r| r.lines > 1) {
        let n = rows.iter().map(|r| r.lines).max().unwrap_or(1);
        let _ = writeln!(s, "\nMedians of up to {n} runs per row.");
    }
    s
}

/// Bars of metric `key` over `rows`: x = series when there is one case,
/// otherwise x = cases with one bar per series.
fn metric_bars(title: &str, y_desc: &str, key: &str, rows: &[&Row], scale: f64) -> Option<Bars> {
    let rows: Vec<&Row> = rows
        .iter()
        .copied()
        .filter(|r| r.value(key).is_some_and(f64::is_finite))
        .collect();
    if rows.is_empty() {
        return None;
    }
    let (labels, common) = distinct_labels(&rows);
    let title = if common.is_empty() {
        title.to_owned()
    } else {
        format!("{title} ({common})")
    };
    let mut series: Vec<String> = Vec::new();
    let mut cases: Vec<String> = Vec::new();
    for (r, l) in rows.iter().zip(&labels) {
        if !series.contains(&r.series) {
            series.push(r.series.clone());
        }
        if !cases.contains(l) {
            cases.push(l.clone());
        }
    }
    let value = |s: &str, c: &str| {
        rows.iter()
            .zip(&labels)
            .find(|(r, l)| r.series == s && l.as_str() == c)
            .and_then(|(r, _)| r.value(key))
            .map(|v| v * scale)
    };
    Some(if cases.len() == 1 {
        Bars {
            title,
            y_desc: y_desc.to_owned(),
            categories: series.clone(),
            groups: vec![header_of(key)],
            values: vec![series.iter().map(|s| value(s, &cases[0])).collect()],
            log_y: false,
            legend: false,
        }
    } else {
        Bars {
            title,
            y_desc: y_desc.to_owned(),
            categories: cases.clone(),
            groups: series.clone(),
            values: series
                .iter()
                .map(|s| cases.iter().map(|c| value(s, c)).collect())
                .collect(),
            log_y: false,
            legend: true,
        }
    })
}

/// The charts a step's results allow, with their file name kinds.
fn step_charts(step: &Step, rows: &[Row]) -> Vec<(&'static str, Chart)> {
    let mut out = Vec::new();
    let all: Vec<&Row> = rows.iter().collect();
    let is_pp = |r: &Row| r.case_value("mode") == Some("pingpong");
    let loaded: Vec<&Row> = all.iter().copied().filter(|r| !is_pp(r)).collect();

    // Latency percentiles, from ping-pong runs when there are any.
    let lat_rows: Vec<&Row> = {
        let with = |r: &&Row| r.value("p50_us").is_some() && r.value("p99_us").is_some();
        let pp: Vec<&Row> = all
            .iter()
            .copied()
            .filter(|r| is_pp(r))
            .filter(with)
            .collect();
        if pp.is_empty() {
            all.iter().copied().filter(with).collect()
        } else {
            pp
        }
    };
    if !lat_rows.is_empty() {
        let (labels, common) = distinct_labels(&lat_rows);
        let keys = [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")];
        let title = if common.is_empty() {
            format!("{}: round-trip latency", step.title)
        } else {
            format!("{}: round-trip latency ({common})", step.title)
        };
        let values: Vec<Vec<Option<f64>>> = keys
            .iter()
            .map(|(k, _)| lat_rows.iter().map(|r| r.value(k)).collect())
            .collect();
        // Tails far above the medians (a busy machine) would flatten the
        // medians on a linear axis.
        let present: Vec<f64> = values
            .iter()
            .flatten()
            .flatten()
            .copied()
            .filter(|v| *v > 0.0)
            .collect();
        let lo = present.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = present.iter().copied().fold(0.0, f64::max);
        out.push((
            "latency",
            Chart::Bars(Bars {
                title,
                y_desc: if hi > 30.0 * lo {
                    "microseconds (log scale)".into()
                } else {
                    "microseconds".into()
                },
                categories: lat_rows
                    .iter()
                    .zip(&labels)
                    .map(|(r, l)| {
                        if l == "-" {
                            r.series.clone()
                        } else {
                            format!("{} {l}", r.series)
                        }
                    })
                    .collect(),
                groups: keys.iter().map(|(_, n)| (*n).to_owned()).collect(),
                values,
                log_y: hi > 30.0 * lo,
                legend: true,
            }),
        ));
    }

    if let Some(b) = metric_bars(
        &format!("{}: messages per server CPU-second", step.title),
        "messages per server CPU-second",
        "msgs_per_server_cpu_s",
        &loaded,
        1.0,
    ) {
        out.push(("efficiency", Chart::Bars(b)));
    }

    // Request/reply and echo runs by messages, bulk runs by bits.
    let rate = [
        "requests_per_s",
        "rps",
        "msgs_per_s",
        "gbit_per_s",
        "ops_per_s",
    ]
    .into_iter()
    .find(|k| loaded.iter().any(|r| r.value(k).is_some()));
    if let Some(rate) = rate {
        if let Some(b) = metric_bars(
            &format!("{}: {}", step.title, header_of(rate)),
            &header_of(rate),
            rate,
            &loaded,
            1.0,
        ) {
            out.push(("throughput", Chart::Bars(b)));
        }
    }

    if let Some(l) = by_size(step, &loaded) {
        out.push(("by-size", Chart::Lines(l)));
    }

    let rss: Vec<&Row> = loaded
        .iter()
        .copied()
        .filter(|r| {
            r.value("server_peak_rss_kib").is_some() && r.value("client_peak_rss_kib").is_some()
        })
        .collect();
    if !rss.is_empty() {
        let (labels, common) = distinct_labels(&rss);
        let mut series: Vec<String> = Vec::new();
        let mut cats: Vec<(String, &str)> = Vec::new();
        for (r, l) in rss.iter().zip(&labels) {
            if !series.contains(&r.series) {
                series.push(r.series.clone());
            }
            for role in ["server", "client"] {
                let c = (l.clone(), role);
                if !cats.contains(&c) {
                    cats.push(c);
                }
            }
        }
        let value = |s: &str, c: &str, role: &str| {
            rss.iter()
                .zip(&labels)
                .find(|(r, l)| r.series == s && l.as_str() == c)
                .and_then(|(r, _)| r.value(&format!("{role}_peak_rss_kib")))
                .map(|v| v / 1024.0)
        };
        out.push((
            "rss",
            Chart::Bars(Bars {
                title: if common.is_empty() {
                    format!("{}: peak RSS per process", step.title)
                } else {
                    format!("{}: peak RSS per process ({common})", step.title)
                },
                y_desc: "VmHWM, MiB".into(),
                categories: cats
                    .iter()
                    .map(|(c, role)| {
                        if c == "-" {
                            (*role).to_owned()
                        } else {
                            format!("{c} {role}")
                        }
                    })
                    .collect(),
                groups: series.clone(),
                values: series
                    .iter()
                    .map(|s| cats.iter().map(|(c, role)| value(s, c, role)).collect())
                    .collect(),
                log_y: false,
                legend: true,
            }),
        ));
    }
    out
}

/// Gbit/s (one way for echo-style runs that report messages per second;
/// as reported by runs that report `gbit_per_s`) against message size, for
/// series measured at two or more sizes.
fn by_size(step: &Step, rows: &[&Row]) -> Option<Lines> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut derived = false;
    // Words every line shares (`throughput lenprefix`) name no line.
    let words = |r: &Row| -> Vec<String> {
        r.case
            .iter()
            .filter(|(k, v)| k != "size" && number(v).is_none())
            .map(|(_, v)| v.clone())
            .collect()
    };
    let all_words: Vec<Vec<String>> = rows.iter().map(|r| words(r)).collect();
    let shared: Vec<String> = all_words
        .first()
        .map(|f| {
            f.iter()
                .filter(|w| all_words.iter().all(|ws| ws.contains(w)))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for r in rows {
        let Some(size) = r.case_value("size").and_then(number) else {
            continue;
        };
        let gbit = match r.value("gbit_per_s") {
            Some(g) => g,
            None => match r.value("msgs_per_s") {
                Some(m) => {
                    derived = true;
                    m * size * 8.0 / 1e9
                }
                None => continue,
            },
        };
        // Other case keys (test, mode) split the lines further.
        let rest: Vec<String> = words(r)
            .into_iter()
            .filter(|w| !shared.contains(w))
            .collect();
        let name = if rest.is_empty() {
            r.series.clone()
        } else {
            format!("{} {}", r.series, rest.join(" "))
        };
        if !order.contains(&name) {
            order.push(name.clone());
        }
        series.entry(name).or_default().push((size, gbit));
    }
    let multi: Vec<(String, Vec<(f64, f64)>)> = order
        .into_iter()
        .filter_map(|n| {
            let pts = series.remove(&n)?;
            let mut sizes: Vec<u64> = pts.iter().map(|p| p.0 as u64).collect();
            sizes.sort_unstable();
            sizes.dedup();
            (sizes.len() >= 2).then_some((n, pts))
        })
        .collect();
    if multi.is_empty() {
        return None;
    }
    Some(Lines {
        title: format!("{}: Gbit/s by message size", step.title),
        x_desc: "message payload size".into(),
        y_desc: if derived {
            "payload Gbit/s (one way)".into()
        } else {
            "payload Gbit/s".into()
        },
        series: multi,
        log_x_bytes: true,
    })
}

/// How many times faster `a` is than `b` (both medians).
fn speedup(a: &Estimate, b: &Estimate) -> f64 {
    b.median_ns / a.median_ns
}

fn values_of(list: &[&Estimate]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for e in list {
        if !v.contains(&e.value) {
            v.push(e.value.clone());
        }
    }
    v
}

fn functions_of(list: &[&Estimate]) -> Vec<String> {
    let mut f: Vec<String> = Vec::new();
    for e in list {
        if !f.contains(&e.function) {
            f.push(e.function.clone());
        }
    }
    f
}

fn find<'a>(list: &[&'a Estimate], function: &str, value: &str) -> Option<&'a Estimate> {
    list.iter()
        .copied()
        .find(|e| e.function == function && e.value == value)
}

fn time_label(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn criterion_section(step: &Step, group: &str, list: &[&Estimate]) -> String {
    let values = values_of(list);
    let functions = functions_of(list);
    let mut s = String::new();
    let _ = writeln!(s, "### criterion group `{group}`\n");
    let mut headers = vec!["function \\ parameter".to_owned()];
    headers.extend(values.iter().map(|v| {
        if v.is_empty() {
            "median".into()
        } else {
            v.clone()
        }
    }));
    let rows: Vec<Vec<String>> = functions
        .iter()
        .map(|f| {
            let mut r = vec![f.clone()];
            r.extend(values.iter().map(|v| match find(list, f, v) {
                Some(e) => match e.m_elements_per_s() {
                    Some(m) => format!("{} ({m:.1} M/s)", time_label(e.median_ns)),
                    None => time_label(e.median_ns),
                },
                None => "-".into(),
            }));
            r
        })
        .collect();
    s.push_str(&table(&headers, &rows, 1, &[]));
    let pairs: Vec<(String, String)> = step
        .option_list("pairs")
        .iter()
        .filter_map(|p| p.split_once('/'))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .filter(|(a, b)| functions.contains(a) && functions.contains(b))
        .collect();
    if !pairs.is_empty() {
        s.push('\n');
        let mut headers = vec!["how many times faster".to_owned()];
        headers.extend(values.iter().cloned());
        let rows: Vec<Vec<String>> = pairs
            .iter()
            .map(|(a, b)| {
                let mut r = vec![format!("{a} / {b}")];
                r.extend(
                    values
                        .iter()
                        .map(|v| match (find(list, a, v), find(list, b, v)) {
                            (Some(x), Some(y)) => format!("{:.2}x", speedup(x, y)),
                            _ => "-".into(),
                        }),
                );
                r
            })
            .collect();
        s.push_str(&table(&headers, &rows, 1, &[]));
    }
    s.push('\n');
    s
}

/// Rates (millions per second) when the group declares elements, otherwise
/// median times on a logarithmic axis.
fn criterion_chart(group: &str, list: &[&Estimate]) -> Bars {
    let values = values_of(list);
    let functions = functions_of(list);
    let elements = list
        .iter()
        .all(|e| matches!(e.throughput, Throughput::Elements(_)));
    let pick = |e: &Estimate| {
        if elements {
            e.m_elements_per_s()
        } else {
            Some(e.median_ns)
        }
    };
    Bars {
        title: if elements {
            format!("{group}: throughput (criterion median)")
        } else {
            format!("{group}: time per operation (criterion median)")
        },
        y_desc: if elements {
            "million messages per second".into()
        } else {
            "nanoseconds (log scale)".into()
        },
        categories: values
            .iter()
            .map(|v| {
                if v.is_empty() {
                    group.to_owned()
                } else {
                    v.clone()
                }
            })
            .collect(),
        groups: functions.clone(),
        values: functions
            .iter()
            .map(|f| {
                values
                    .iter()
                    .map(|v| find(list, f, v).and_then(pick))
                    .collect()
            })
            .collect(),
        log_y: !elements,
        legend: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPARE: &str = "\
== [1/1] tokio on core 0
raw RESULT lines:
  RESULT run=1 server=echo-node-park mode=throughput wire=lenprefix conns=64 depth=16 size=1024 secs=5.0 msgs=1 msgs_per_s=1400000 server_cpu_s=0.9 msgs_per_server_cpu_s=1600000 loadgen_cpu_s=1 machine_busy_s=2 other_cpu_s=0.1 p50_us=700 p99_us=900 p999_us=1000 max_us=2000
  RESULT run=1 server=echo-node-park mode=pingpong wire=lenprefix conns=1 depth=1 size=64 secs=5.0 msgs=1 msgs_per_s=40000 server_cpu_s=0.5 msgs_per_server_cpu_s=80000 loadgen_cpu_s=1 machine_busy_s=2 other_cpu_s=0.1 p50_us=22.3 p99_us=43.9 p999_us=64.5 max_us=100
  RESULT run=1 server=tokio mode=throughput wire=lenprefix conns=64 depth=16 size=1024 secs=5.0 msgs=1 msgs_per_s=1300000 server_cpu_s=0.9 msgs_per_server_cpu_s=1300000 loadgen_cpu_s=1 machine_busy_s=2 other_cpu_s=0.1 p50_us=750 p99_us=950 p999_us=1100 max_us=2000
  RESULT run=1 server=tokio mode=pingpong wire=lenprefix conns=1 depth=1 size=64 secs=5.0 msgs=1 msgs_per_s=38000 server_cpu_s=0.5 msgs_per_server_cpu_s=76000 loadgen_cpu_s=1 machine_busy_s=2 other_cpu_s=0.1 p50_us=24.2 p99_us=48.0 p999_us=89.1 max_us=100
  RESULT run=2 server=tokio mode=throughput wire=lenprefix conns=64 depth=16 size=16384 secs=5.0 msgs=1 msgs_per_s=300000 msgs_per_server_cpu_s=310000
  RESULT run=2 server=echo-node-park mode=throughput wire=lenprefix conns=64 depth=16 size=16384 secs=5.0 msgs=1 msgs_per_s=320000 msgs_per_server_cpu_s=350000
";

    fn write_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bench-report-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("raw")).unwrap();
        std::fs::create_dir_all(dir.join("criterion/mailbox_64B/ringwire/16/new")).unwrap();
        std::fs::create_dir_all(dir.join("criterion/mailbox_64B/glommio/16/new")).unwrap();
        for (f, ns) in [("ringwire", 8.0), ("glommio", 40.0)] {
            let d = dir.join(format!("criterion/mailbox_64B/{f}/16/new"));
            std::fs::write(
                d.join("benchmark.json"),
                format!(r#"{{"group_id":"mailbox/64B","function_id":"{f}","value_str":"16","throughput":{{"Elements":1}}}}"#),
            )
            .unwrap();
            std::fs::write(
                d.join("estimates.json"),
                format!(r#"{{"median":{{"confidence_interval":{{"lower_bound":{ns},"upper_bound":{ns}}},"point_estimate":{ns}}}}}"#),
            )
            .unwrap();
        }
        std::fs::write(dir.join("raw/echo.txt"), COMPARE).unwrap();
        std::fs::write(
            dir.join("raw/bulk.txt"),
            "SKIP bulk ringwire: tcp:// is not enabled in this build\n\
             RESULT bench=bulk impl=tcp test=sync size=2097152 gbit_per_s=20 ops_per_s=1000 server_peak_rss_kib=8000 client_peak_rss_kib=8100\n",
        )
        .unwrap();
        std::fs::write(dir.join("raw/mailbox.txt"), "criterion output\n").unwrap();
        std::fs::write(
            dir.join("raw/echo-sizes.txt"),
            "RESULT run=1 server=tokio mode=throughput wire=lenprefix conns=64 depth=16 size=65536 msgs_per_s=60000\n\
             RESULT run=1 server=tokio mode=pingpong size=64 p50_us=30 p99_us=40\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("suite.env"),
            "date=2026-11-30 10:00\nmode=quick\ncpu=Test CPU\ncpus=2\nkernel=6.18\ncommand=./benches/suite.sh --quick\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("steps.tsv"),
            "echo\tok\t12.5\tref=tokio,floor\tEcho servers\tSIZES=\"1024 16384\" ./benches/compare.sh\t\n\
             typed\tskipped\t0\t\tTyped request/reply\t./benches/typed.sh\tbenches/typed.sh is not in this tree\n\
             bulk\tok\t3\tref=tcp\tBulk transfer\tbulk-bench --count 32\t\n\
             mailbox\tok\t9\tcriterion=mailbox;pairs=ringwire/glommio\tMailbox ring\tcargo bench\t\n\
             echo-sizes\tok\t5\twith=echo;keep=mode=throughput;charts=by-size\tSizes\tSIZE=65536 compare.sh\t\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn report_has_tables_ratios_skips_and_charts() {
        let dir = write_dir("full");
        let w = write_report(&dir).unwrap();
        assert!(w.warnings.is_empty(), "{:?}", w.warnings);
        let md = std::fs::read_to_string(&w.report).unwrap();
        for want in [
            "CPU: Test CPU",
            "| typed | skipped |",
            "benches/typed.sh is not in this tree",
            "msgs/server-CPU-s x tokio",
            // echo-node-park over tokio at 1 KiB: 1.6M / 1.3M.
            "| 1.23x |",
            "skipped: bulk ringwire: tcp:// is not enabled",
            "ringwire / glommio",
            "| 5.00x |",
            "![",
            "raw/echo.txt",
        ] {
            assert!(md.contains(want), "report lacks `{want}`:\n{md}");
        }
        let names: Vec<String> = w
            .charts
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "echo-latency.svg",
            "echo-efficiency.svg",
            "echo-throughput.svg",
            "echo-by-size.svg",
            "bulk-throughput.svg",
            "bulk-rss.svg",
            "criterion-mailbox-64B.svg",
            "echo-sizes-by-size.svg",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        // Only the charts asked for, from throughput lines of both files.
        assert!(!names.iter().any(|n| n == "echo-sizes-latency.svg"));
        let sizes = std::fs::read_to_string(dir.join("echo-sizes-by-size.svg")).unwrap();
        assert!(
            sizes.contains("64 KiB") && sizes.contains("1 KiB"),
            "{sizes}"
        );
        let lat = std::fs::read_to_string(dir.join("echo-latency.svg")).unwrap();
        // The ping-pong p50s, not the loaded ones.
        assert!(lat.contains("22.3") && lat.contains("24.2") && !lat.contains(">700<"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn steps_lines() {
        let s =
            Step::parse("kv\tfailed\t1.5\tref=redis-server\tKV\t./benches/kv.sh\texit 1").unwrap();
        assert_eq!(s.status, Status::Failed);
        assert_eq!(s.option_list("ref"), ["redis-server"]);
        assert!(Step::parse("kv\tmaybe\t1\t\tKV\tcmd").is_err());
        assert!(Step::parse("../x\tok\t1\t\tKV\tcmd").is_err());
        assert!(Step::parse("kv\tok").is_err());
    }
}
