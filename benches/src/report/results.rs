//! `RESULT key=value ...` lines: parsing, and the median of repeated runs.
//!
//! Every benchmark script prints one `RESULT` line per measured run (loadgen,
//! the typed clients, bulk-bench, ...), possibly indented. A line's keys fall
//! in three kinds:
//!
//! - **series**: who was measured, the first present of [`SERIES_KEYS`]
//!   (`server`, `stack`, `impl`, `label`);
//! - **case**: what was measured, every other key whose value is not a
//!   number (`transport=tcp`, `mode=throughput`, `test=sync`) plus the
//!   numeric shape keys of [`CASE_KEYS`] (`size`, `conns`, `depth`, ...);
//!   ratios compare series within one case;
//! - **measurements**: every other numeric value. `run` (the round number)
//!   is ignored, so lines that differ only by round are one [`Row`] whose
//!   measurements are medians.

use std::collections::BTreeMap;

/// Keys naming the measured thing, in order of preference.
pub const SERIES_KEYS: [&str; 4] = ["server", "stack", "impl", "label"];

/// Numeric keys that describe the workload rather than measure it.
pub const CASE_KEYS: [&str; 10] = [
    "size",
    "reply_size",
    "conns",
    "depth",
    "pipeline",
    "clients",
    "cores",
    "count",
    "window",
    "value_size",
];

/// Case keys whose values are byte counts.
const SIZE_KEYS: [&str; 3] = ["size", "reply_size", "value_size"];

/// Keys dropped before grouping.
const IGNORED_KEYS: [&str; 1] = ["run"];

/// One parsed `RESULT` line, keys in the order they appeared.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultLine {
    /// The key/value pairs.
    pub fields: Vec<(String, String)>,
}

impl ResultLine {
    /// Parses a line starting (after optional spaces) with `RESULT `;
    /// `None` for any other line. Tokens without `=` are skipped.
    pub fn parse(line: &str) -> Option<ResultLine> {
        let rest = line.trim_start().strip_prefix("RESULT ")?;
        let fields = rest
            .split_ascii_whitespace()
            .filter_map(|t| t.split_once('='))
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(ResultLine { fields })
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The series label (see the module docs); `?` when no series key is present.
    pub fn series(&self) -> String {
        SERIES_KEYS
            .iter()
            .find_map(|k| self.get(k))
            .unwrap_or("?")
            .to_owned()
    }

    fn is_series_key(&self, key: &str) -> bool {
        SERIES_KEYS.iter().find(|k| self.get(k).is_some()) == Some(&key)
    }
}

/// Parses every `RESULT` line of `text`.
pub fn parse_all(text: &str) -> Vec<ResultLine> {
    text.lines().filter_map(ResultLine::parse).collect()
}

/// A number as written in a RESULT line (`na`, `-` and words are not).
pub fn number(v: &str) -> Option<f64> {
    let n: f64 = v.parse().ok()?;
    n.is_finite().then_some(n)
}

/// The measurements of one series in one case, as medians over the lines
/// that repeated it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Series label.
    pub series: String,
    /// Case keys and values, in line order.
    pub case: Vec<(String, String)>,
    /// Median of each measurement key, in line order.
    pub values: Vec<(String, f64)>,
    /// How many lines were merged.
    pub lines: usize,
}

impl Row {
    /// The median of measurement `key`.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The value of case key `key`.
    pub fn case_value(&self, key: &str) -> Option<&str> {
        self.case
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The case's parts as shown: values, sizes as byte sizes (`1 KiB`),
    /// other numbers with their key (`conns=64`).
    pub fn case_parts(&self) -> Vec<String> {
        self.case
            .iter()
            .map(|(k, v)| match number(v) {
                Some(n) if SIZE_KEYS.contains(&k.as_str()) => match k.as_str() {
                    "size" => crate::report::charts::bytes_label(n),
                    _ => format!("{k}={}", crate::report::charts::bytes_label(n)),
                },
                Some(_) => format!("{k}={v}"),
                None => v.clone(),
            })
            .collect()
    }

    /// The case as one short label: its parts joined with spaces.
    pub fn case_label(&self) -> String {
        let parts = self.case_parts();
        if parts.is_empty() {
            "all".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// Short case labels for `rows` shown together: each row's case parts
/// without those every row shares (`-` when nothing is left), and the
/// shared parts joined (for a title).
pub fn distinct_labels(rows: &[&Row]) -> (Vec<String>, String) {
    let parts: Vec<Vec<String>> = rows.iter().map(|r| r.case_parts()).collect();
    let common: Vec<String> = parts
        .first()
        .map(|first| {
            first
                .iter()
                .filter(|p| parts.iter().all(|ps| ps.contains(p)))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let labels = parts
        .iter()
        .map(|ps| {
            let own: Vec<&str> = ps
                .iter()
                .filter(|p| !common.contains(p))
                .map(String::as_str)
                .collect();
            if own.is_empty() {
                "-".to_owned()
            } else {
                own.join(" ")
            }
        })
        .collect();
    (labels, common.join(" "))
}

/// Groups lines by series and case and takes the median of each
/// measurement. Rows keep the order in which their first line appeared.
pub fn aggregate(lines: &[ResultLine]) -> Vec<Row> {
    type Key = (String, Vec<(String, String)>);
    let mut order: Vec<Key> = Vec::new();
    let mut groups: BTreeMap<Key, Vec<&ResultLine>> = BTreeMap::new();
    for line in lines {
        let series = line.series();
        let case: Vec<(String, String)> = line
            .fields
            .iter()
            .filter(|(k, v)| {
                !IGNORED_KEYS.contains(&k.as_str())
                    && !line.is_series_key(k)
                    && (!is_numeric_token(v) || CASE_KEYS.contains(&k.as_str()))
            })
            .cloned()
            .collect();
        let key = (series, case);
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(line);
    }
    order
        .into_iter()
        .map(|key| {
            let members = &groups[&key];
            let mut keys: Vec<&str> = Vec::new();
            for m in members {
                for (k, v) in &m.fields {
                    let measured = !IGNORED_KEYS.contains(&k.as_str())
                        && !CASE_KEYS.contains(&k.as_str())
                        && is_numeric_token(v);
                    if measured && !keys.contains(&k.as_str()) {
                        keys.push(k);
                    }
                }
            }
            let values = keys
                .into_iter()
                .filter_map(|k| {
                    let vals: Vec<f64> = members
                        .iter()
                        .filter_map(|m| m.get(k).and_then(number))
                        .collect();
                    median(vals).map(|v| (k.to_owned(), v))
                })
                .collect();
            Row {
                series: key.0,
                case: key.1,
                values,
                lines: members.len(),
            }
        })
        .collect()
}

/// A value in a measurement's place: a number (`inf` included) or one of
/// the words that stand for "not measured" (`na`, `-`).
fn is_numeric_token(v: &str) -> bool {
    v.parse::<f64>().is_ok() || matches!(v, "na" | "-")
}

/// The median of `v` (mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_indented_lines_and_skips_others() {
        let text = "== header\n  RESULT run=1 server=tokio mode=throughput size=1024 msgs_per_s=100 p50_us=na\nRESULTS x\nRESULT stack=ringwire transport=tcp gbit_per_s=1.5 junk\n";
        let lines = parse_all(text);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].get("server"), Some("tokio"));
        assert_eq!(lines[0].series(), "tokio");
        assert_eq!(lines[1].series(), "ringwire");
        let rows = aggregate(&lines);
        assert_eq!(rows[1].case_label(), "tcp");
        assert_eq!(lines[1].get("junk"), None);
    }

    #[test]
    fn rounds_merge_into_medians_by_series_and_case() {
        let text = "\
RESULT run=1 server=tokio mode=throughput size=1024 msgs_per_s=100 p50_us=na
RESULT run=1 server=tokio mode=pingpong size=64 p50_us=20
RESULT run=2 server=tokio mode=throughput size=1024 msgs_per_s=300 p50_us=5
RESULT run=3 server=tokio mode=throughput size=1024 msgs_per_s=200
RESULT run=1 server=echo-node-park mode=throughput size=1024 msgs_per_s=400
";
        let rows = aggregate(&parse_all(text));
        assert_eq!(rows.len(), 3);
        let t = &rows[0];
        assert_eq!((t.series.as_str(), t.lines), ("tokio", 3));
        assert_eq!(t.case_label(), "throughput 1 KiB");
        assert_eq!(t.value("msgs_per_s"), Some(200.0));
        // `na` is not a measurement; the one real value is the median.
        assert_eq!(t.value("p50_us"), Some(5.0));
        assert_eq!(rows[1].case_value("mode"), Some("pingpong"));
        assert_eq!(rows[2].series, "echo-node-park");
        let all: Vec<&Row> = rows.iter().collect();
        let (labels, common) = distinct_labels(&all);
        assert_eq!(
            labels,
            ["throughput 1 KiB", "pingpong 64 B", "throughput 1 KiB"]
        );
        assert_eq!(common, "");
        let tput: Vec<&Row> = rows
            .iter()
            .filter(|r| r.case_value("mode") == Some("throughput"))
            .collect();
        assert_eq!(
            distinct_labels(&tput),
            (
                vec!["-".to_owned(), "-".to_owned()],
                "throughput 1 KiB".to_owned()
            )
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(number("1e3"), Some(1000.0));
        assert_eq!(number("inf"), None);
        assert_eq!(number("na"), None);
    }
}
