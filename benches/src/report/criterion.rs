//! criterion's saved results: `<dir>/**/new/benchmark.json` (the ids and
//! the throughput declared) beside `new/estimates.json` (the statistics, in
//! nanoseconds per iteration).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// What a benchmark declared it moves per iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Throughput {
    /// Elements (messages) per iteration.
    Elements(f64),
    /// Bytes per iteration.
    Bytes(f64),
    /// Nothing declared.
    None,
}

/// One benchmark's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Group id (`mailbox/64B`, `proto_codec`).
    pub group: String,
    /// Function id (`ringwire`, `encode`).
    pub function: String,
    /// Parameter (`16`, `1KiB`), empty when none.
    pub value: String,
    /// Median time per iteration, nanoseconds.
    pub median_ns: f64,
    /// Lower and upper bound of the median's confidence interval.
    pub median_ci_ns: (f64, f64),
    /// Declared throughput.
    pub throughput: Throughput,
}

impl Estimate {
    /// Elements per second (millions), when elements were declared.
    pub fn m_elements_per_s(&self) -> Option<f64> {
        match self.throughput {
            Throughput::Elements(n) if self.median_ns > 0.0 => Some(n * 1e3 / self.median_ns),
            _ => None,
        }
    }

    /// Bytes per second (GB/s), when bytes were declared.
    pub fn gb_per_s(&self) -> Option<f64> {
        match self.throughput {
            Throughput::Bytes(n) if self.median_ns > 0.0 => Some(n / self.median_ns),
            _ => None,
        }
    }
}

/// Reads every benchmark saved under `dir`, sorted by group, function and
/// parameter order of appearance in the directory walk. A missing `dir`
/// yields an empty list; an unreadable or malformed file is an error naming it.
pub fn read_dir(dir: &Path) -> Result<Vec<Estimate>, String> {
    let mut files = Vec::new();
    if dir.is_dir() {
        walk(dir, &mut files).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    files.sort();
    let mut out = Vec::new();
    for bench in files {
        let Some(new_dir) = bench.parent() else {
            continue;
        };
        let estimates = new_dir.join("estimates.json");
        out.push(read_one(&bench, &estimates)?);
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, out)?;
        } else if path.file_name().is_some_and(|n| n == "benchmark.json")
            && path
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "new")
        {
            out.push(path);
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_one(bench: &Path, estimates: &Path) -> Result<Estimate, String> {
    parse(&read_json(bench)?, &read_json(estimates)?)
        .ok_or_else(|| format!("{}: unexpected layout", bench.display()))
}

/// Builds an [`Estimate`] from the two JSON documents.
pub fn parse(bench: &Value, estimates: &Value) -> Option<Estimate> {
    let s = |v: &Value| v.as_str().map(str::to_owned);
    let median = estimates.get("median")?;
    let ci = median.get("confidence_interval")?;
    let throughput = match bench.get("throughput") {
        Some(Value::Object(m)) => {
            if let Some(n) = m.get("Elements").and_then(Value::as_f64) {
                Throughput::Elements(n)
            } else if let Some(n) = m
                .get("Bytes")
                .or_else(|| m.get("BytesDecimal"))
                .and_then(Value::as_f64)
            {
                Throughput::Bytes(n)
            } else {
                Throughput::None
            }
        }
        _ => Throughput::None,
    };
    Some(Estimate {
        group: s(bench.get("group_id")?)?,
        function: bench.get("function_id").and_then(s).unwrap_or_default(),
        value: bench.get("value_str").and_then(s).unwrap_or_default(),
        median_ns: median.get("point_estimate")?.as_f64()?,
        median_ci_ns: (
            ci.get("lower_bound")?.as_f64()?,
            ci.get("upper_bound")?.as_f64()?,
        ),
        throughput,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_criterions_layout() {
        let bench: Value = serde_json::from_str(
            r#"{"group_id":"mailbox/64B","function_id":"ringwire","value_str":"16",
                "throughput":{"Elements":1},"full_id":"mailbox/64B/ringwire/16",
                "directory_name":"mailbox_64B/ringwire/16","title":"mailbox/64B/ringwire/16"}"#,
        )
        .unwrap();
        let est: Value = serde_json::from_str(
            r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":7.0,"upper_bound":9.0},"point_estimate":8.0,"standard_error":0.5},
                "median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":7.5,"upper_bound":8.5},"point_estimate":8.0,"standard_error":0.4}}"#,
        )
        .unwrap();
        let e = parse(&bench, &est).unwrap();
        assert_eq!(e.group, "mailbox/64B");
        assert_eq!(e.value, "16");
        assert_eq!(e.median_ci_ns, (7.5, 8.5));
        assert_eq!(e.m_elements_per_s(), Some(125.0));
        assert_eq!(e.gb_per_s(), None);
        let mut bytes = bench.clone();
        bytes["throughput"] = serde_json::json!({"Bytes": 1024});
        assert_eq!(parse(&bytes, &est).unwrap().gb_per_s(), Some(128.0));
        assert!(parse(&bench, &serde_json::json!({})).is_none());
    }

    #[test]
    fn walks_a_directory_tree() {
        let dir = std::env::temp_dir().join(format!("bench-report-crit-{}", std::process::id()));
        let new = dir.join("g/f/1/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::create_dir_all(dir.join("g/f/1/base")).unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"group_id":"g","function_id":"f","value_str":"1","throughput":null}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"median":{"confidence_interval":{"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.0}}"#,
        )
        .unwrap();
        // A stale copy under `base/` is ignored.
        std::fs::write(dir.join("g/f/1/base/benchmark.json"), "{").unwrap();
        let got = read_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].throughput, Throughput::None);
        assert!(read_dir(Path::new("/nonexistent/criterion"))
            .unwrap()
            .is_empty());
    }
}
