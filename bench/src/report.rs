//! Reporting: run statistics (median and spread), machine facts, and rewriting the generated parts of
//! `docs/benchmarks.md` between marker comments.

use serde::{Deserialize, Serialize};

/// The median and the range of a set of runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Number of runs.
    pub runs: usize,
}

impl Spread {
    /// The spread of `values` (NaNs ignored); `None` when there is no value.
    pub fn of(values: &[f64]) -> Option<Self> {
        let median = crate::median(values)?;
        let v = values.iter().copied().filter(|x| !x.is_nan());
        let (min, max) = v.clone().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
        Some(Self { median, min, max, runs: v.count() })
    }

    /// `median (min–max)` with `decimals` decimals.
    pub fn show(&self, decimals: usize) -> String {
        if self.runs <= 1 {
            return format!("{:.*}", decimals, self.median);
        }
        format!("{:.*} ({:.*}–{:.*})", decimals, self.median, decimals, self.min, decimals, self.max)
    }
}

/// Formats an optional spread (`—` when there is none).
pub fn show(s: Option<Spread>, decimals: usize) -> String {
    s.map_or_else(|| "—".to_owned(), |s| s.show(decimals))
}

/// A pass/fail check of one figure against a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What is checked, e.g. `A: server memory per idle connection`.
    pub name: String,
    /// The target, e.g. `≤ 2048 B`.
    pub target: String,
    /// The measured figure, as shown.
    pub measured: String,
    /// Whether the target is met (`None`: not measured).
    pub pass: Option<bool>,
}

impl Check {
    /// A check whose figure `value` must be at most `limit`.
    pub fn at_most(name: &str, value: Option<f64>, limit: f64, unit: &str, decimals: usize) -> Self {
        Self::new(name, format!("≤ {limit} {unit}"), value, unit, decimals, |v| v <= limit)
    }

    /// A check whose figure `value` must be at least `limit`.
    pub fn at_least(name: &str, value: Option<f64>, limit: f64, unit: &str, decimals: usize) -> Self {
        Self::new(name, format!("≥ {limit} {unit}"), value, unit, decimals, |v| v >= limit)
    }

    fn new(
        name: &str,
        target: String,
        value: Option<f64>,
        unit: &str,
        decimals: usize,
        ok: impl Fn(f64) -> bool,
    ) -> Self {
        Self {
            name: name.to_owned(),
            target,
            measured: value.map_or_else(|| "not measured".to_owned(), |v| format!("{v:.decimals$} {unit}")),
            pass: value.map(ok),
        }
    }

    /// `PASS`, `FAIL` or `n/a`.
    pub fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "n/a",
        }
    }
}

/// A markdown table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|{}\n", headers.join(" | "), "---|".repeat(headers.len()));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// Why a generated section could not be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerError {
    /// The start marker is missing.
    MissingStart(String),
    /// The end marker is missing (or comes before the start).
    MissingEnd(String),
    /// A marker appears more than once.
    Duplicate(String),
}

impl std::fmt::Display for MarkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingStart(m) => write!(f, "marker {m} not found"),
            Self::MissingEnd(m) => write!(f, "marker {m} not found after its start marker"),
            Self::Duplicate(m) => write!(f, "marker {m} appears more than once"),
        }
    }
}

impl std::error::Error for MarkerError {}

/// The start and end markers of section `name`.
pub fn markers(name: &str) -> (String, String) {
    (format!("<!-- bench:{name}:start -->"), format!("<!-- bench:{name}:end -->"))
}

/// Replaces what lies between the markers of section `name` in `doc` with `content` (markers kept, each on
/// its own line). Everything outside the markers is left byte for byte.
///
/// ```
/// let doc = "a\n<!-- bench:A:start -->\nold\n<!-- bench:A:end -->\nb\n";
/// let new = herald_bench::report::replace_section(doc, "A", "new table").unwrap();
/// assert_eq!(new, "a\n<!-- bench:A:start -->\nnew table\n<!-- bench:A:end -->\nb\n");
/// ```
pub fn replace_section(doc: &str, name: &str, content: &str) -> Result<String, MarkerError> {
    let (start, end) = markers(name);
    let s = doc.find(&start).ok_or_else(|| MarkerError::MissingStart(start.clone()))?;
    if doc[s + start.len()..].contains(&start) {
        return Err(MarkerError::Duplicate(start));
    }
    let body_from = s + start.len();
    let e = doc[body_from..].find(&end).map(|i| i + body_from).ok_or_else(|| MarkerError::MissingEnd(end.clone()))?;
    if doc[e + end.len()..].contains(&end) || doc[..s].contains(&end) {
        return Err(MarkerError::Duplicate(end));
    }
    let content = content.trim_end_matches('\n');
    Ok(format!("{}\n{}\n{}", &doc[..body_from], content, &doc[e..]))
}

/// Facts about the machine a run happened on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Logical cores available to this process.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// `rustc --version`.
    pub rustc: String,
    /// UTC date of the run, `YYYY-MM-DD`.
    pub date: String,
    /// `git rev-parse --short HEAD` of the working tree, if known.
    pub commit: String,
}

impl Machine {
    /// Reads the facts of this machine now.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0);
        let run = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|| "unknown".into())
        };
        let days = crate::schedule::unix_nanos() / 1_000_000_000 / 86_400;
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned()),
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            rustc: run("rustc", &["--version"]),
            date: civil_date(days as i64),
            commit: run("git", &["rev-parse", "--short", "HEAD"]),
        }
    }

    /// One markdown line with the facts.
    pub fn line(&self) -> String {
        format!(
            "{} cores ({}), {} GiB RAM, Linux {}, {}, run on {} at commit `{}`",
            self.cores, self.cpu, self.memory_gib, self.kernel, self.rustc, self.date, self.commit
        )
    }
}

/// The date (`YYYY-MM-DD`, proleptic Gregorian) of day `days` since 1970-01-01.
pub fn civil_date(days: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_between_markers() {
        let doc = "# T\n\nintro\n<!-- bench:B:start -->\n| old |\n<!-- bench:B:end -->\n\ntail <!-- bench:C:start -->x<!-- bench:C:end -->\n";
        let out = replace_section(doc, "B", "| new |\n| row |\n").expect("markers present");
        assert_eq!(
            out,
            "# T\n\nintro\n<!-- bench:B:start -->\n| new |\n| row |\n<!-- bench:B:end -->\n\ntail <!-- bench:C:start -->x<!-- bench:C:end -->\n"
        );
        // Idempotent.
        assert_eq!(replace_section(&out, "B", "| new |\n| row |").expect("again"), out);
        let out = replace_section(&out, "C", "y").expect("inline markers");
        assert!(out.ends_with("tail <!-- bench:C:start -->\ny\n<!-- bench:C:end -->\n"), "{out}");
    }

    #[test]
    fn marker_errors() {
        assert_eq!(
            replace_section("nothing", "A", "x"),
            Err(MarkerError::MissingStart("<!-- bench:A:start -->".into()))
        );
        assert_eq!(
            replace_section("<!-- bench:A:end --> <!-- bench:A:start -->", "A", "x"),
            Err(MarkerError::MissingEnd("<!-- bench:A:end -->".into()))
        );
        let dup = "<!-- bench:A:start --><!-- bench:A:end --><!-- bench:A:start --><!-- bench:A:end -->";
        assert!(matches!(replace_section(dup, "A", "x"), Err(MarkerError::Duplicate(_))));
        // A section name that is a prefix of another does not match it.
        assert!(replace_section("<!-- bench:AB:start --><!-- bench:AB:end -->", "A", "x").is_err());
    }

    #[test]
    fn spreads() {
        assert_eq!(Spread::of(&[]), None);
        let s = Spread::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        assert_eq!(s.show(1), "2.0 (1.0–3.0)");
        assert_eq!(Spread::of(&[5.0]).expect("one").show(0), "5");
    }

    #[test]
    fn checks() {
        let c = Check::at_most("mem", Some(2100.0), 2048.0, "B", 0);
        assert_eq!((c.verdict(), c.measured.as_str()), ("FAIL", "2100 B"));
        assert_eq!(Check::at_least("rate", Some(12_000.0), 10_000.0, "/s", 0).verdict(), "PASS");
        assert_eq!(Check::at_least("rate", None, 1.0, "/s", 0).verdict(), "n/a");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_723), "2024-01-01");
        assert_eq!(civil_date(19_782), "2024-02-29");
        assert_eq!(civil_date(-1), "1969-12-31");
    }

    #[test]
    fn tables() {
        let t = table(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(t, "| a | b |\n|---|---|\n| 1 | 2 |\n");
    }
}
