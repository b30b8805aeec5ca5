//! A tiny hand-rolled command-line parser.
//!
//! The binaries take only a handful of `--flag value` options, so a small
//! parser keeps them free of a heavier dependency. Both `--flag value` and
//! `--flag=value` are accepted; `-h`/`--help` is reported as [`Arg::Help`].

use std::fmt;
use std::str::FromStr;

/// Error produced while parsing the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

/// One parsed command-line item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// `-h` or `--help`.
    Help,
    /// `--name value` or `--name=value`; `name` is given without the dashes.
    Opt {
        /// Option name without the leading `--`.
        name: String,
        /// Its value.
        value: String,
    },
}

/// Splits `args` (without the program name) into [`Arg`]s.
///
/// Every option except `--help` takes exactly one value.
pub fn parse_args<I>(args: I) -> Result<Vec<Arg>, CliError>
where
    I: IntoIterator<Item = String>,
{
    let mut out = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            out.push(Arg::Help);
            continue;
        }
        let Some(body) = arg.strip_prefix("--") else {
            return Err(CliError(format!("unexpected argument `{arg}`")));
        };
        if let Some((name, value)) = body.split_once('=') {
            out.push(Arg::Opt {
                name: name.to_owned(),
                value: value.to_owned(),
            });
        } else {
            let value = it
                .next()
                .ok_or_else(|| CliError(format!("option `--{body}` needs a value")))?;
            out.push(Arg::Opt {
                name: body.to_owned(),
                value,
            });
        }
    }
    Ok(out)
}

/// Parses `value` of option `--name` into `T`, with a readable error.
pub fn parse_value<T>(name: &str, value: &str) -> Result<T, CliError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    value
        .parse()
        .map_err(|e| CliError(format!("invalid value `{value}` for `--{name}`: {e}")))
}

/// Parses a duration given in seconds, with an optional `s` or `ms` suffix
/// (`5`, `2.5s`, `500ms`).
pub fn parse_duration(name: &str, value: &str) -> Result<std::time::Duration, CliError> {
    let bad = || {
        CliError(format!(
            "invalid duration `{value}` for `--{name}` (e.g. 5, 2.5s, 500ms)"
        ))
    };
    let (num, scale) = if let Some(ms) = value.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = value.strip_suffix('s') {
        (s, 1.0)
    } else {
        (value, 1.0)
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    std::time::Duration::try_from_secs_f64(n * scale).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn both_forms() {
        let args = parse_args(strings(&["--a", "1", "--b=2", "-h"])).unwrap();
        assert_eq!(
            args,
            vec![
                Arg::Opt {
                    name: "a".into(),
                    value: "1".into()
                },
                Arg::Opt {
                    name: "b".into(),
                    value: "2".into()
                },
                Arg::Help,
            ]
        );
    }

    #[test]
    fn missing_value_and_stray_word() {
        assert!(parse_args(strings(&["--a"])).is_err());
        assert!(parse_args(strings(&["a"])).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("d", "5").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration("d", "2.5s").unwrap(),
            Duration::from_millis(2500)
        );
        assert_eq!(
            parse_duration("d", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert!(parse_duration("d", "-1").is_err());
        assert!(parse_duration("d", "x").is_err());
    }
}
