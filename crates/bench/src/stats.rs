//! Figures, their summaries, and the report: the printed table and the JSON
//! file that `scripts/bench-salt` merges with Salt's figures.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

/// Whether a smaller or a larger value of a figure is the better one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
}

/// One measured figure: a summary of its samples, in `unit`.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Stable key, such as `sync_latency_memory`, for scripts that read the
    /// JSON file.
    pub id: String,
    pub section: String,
    pub label: String,
    pub unit: String,
    pub better: Better,
    pub median: f64,
    pub p95: f64,
    pub p99: f64,
    pub runs: usize,
    /// Id of the figure measured in the same run as this one's floor: the
    /// same work done by spawning processes directly, with no Runwarden in
    /// between.
    pub floor: Option<String>,
    /// Times the floor's cost: this figure's median over the floor's for
    /// times and sizes, the floor's over this one's for rates, so that 1.0
    /// means "as fast as the floor" and 3.0 "three times the floor's cost".
    pub ratio_to_floor: Option<f64>,
}

impl Figure {
    /// Summarizes `samples` (in `unit`) with nearest-rank percentiles.
    ///
    /// # Panics
    ///
    /// Panics when `samples` is empty, since a figure without a run is a bug
    /// in the section that made it.
    pub fn new(
        id: &str,
        section: &str,
        label: &str,
        unit: &str,
        better: Better,
        samples: &[f64],
    ) -> Figure {
        assert!(!samples.is_empty(), "figure {id} has no samples");
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Figure {
            id: id.to_owned(),
            section: section.to_owned(),
            label: label.to_owned(),
            unit: unit.to_owned(),
            better,
            median: percentile(&sorted, 50.0),
            p95: percentile(&sorted, 95.0),
            p99: percentile(&sorted, 99.0),
            runs: sorted.len(),
            floor: None,
            ratio_to_floor: None,
        }
    }

    /// Summarizes durations as a figure in milliseconds.
    pub fn millis(id: &str, section: &str, label: &str, samples: &[Duration]) -> Figure {
        let values: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Figure::new(id, section, label, "ms", Better::Lower, &values)
    }

    /// Names `floor` as this figure's floor and computes the ratio.
    pub fn with_floor(mut self, floor: &Figure) -> Figure {
        self.floor = Some(floor.id.clone());
        let ratio = match self.better {
            Better::Lower => self.median / floor.median,
            Better::Higher => floor.median / self.median,
        };
        self.ratio_to_floor = ratio.is_finite().then_some(ratio);
        self
    }
}

/// Returns the nearest-rank percentile `p` (0 to 100) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The machine the run happened on, read from `/proc`.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub cpu: String,
    /// `/proc/loadavg`'s 1-, 5- and 15-minute load averages when the run
    /// started.
    pub load_average: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, name)| name.trim().to_owned());
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0);
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: memory_kib / (1024.0 * 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            cpu,
            load_average: loadavg
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    /// `release` or `debug`: figures from a debug build are for checking
    /// that the harness runs, not for reading.
    pub profile: &'static str,
    pub smoke: bool,
    pub figures: Vec<Figure>,
    /// Facts that are not timings, such as where the agents ran, one
    /// sentence each.
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(smoke: bool) -> Report {
        Report {
            machine: Machine::read(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            smoke,
            figures: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn push(&mut self, figure: Figure) {
        self.figures.push(figure);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("failed to encode the report")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("failed to write the JSON report `{}`", path.display()))
    }

    /// Formats the report as a plain-text table, one line per figure,
    /// grouped by section.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "machine: {} cores, {:.1} GiB, kernel {}, {}; load average at start {}; {} build",
            self.machine.cores,
            self.machine.memory_gib,
            self.machine.kernel,
            self.machine.cpu,
            self.machine.load_average,
            self.profile
        );
        let label_width = self
            .figures
            .iter()
            .map(|figure| figure.label.chars().count())
            .max()
            .unwrap_or(10)
            .max(10);
        let _ = writeln!(
            out,
            "{:<label_width$}  {:>11} {:>11} {:>11} {:>6}  {:<7} {:>8}",
            "figure", "median", "p95", "p99", "runs", "unit", "x floor"
        );
        let mut section = "";
        for figure in &self.figures {
            if figure.section != section {
                section = &figure.section;
                let _ = writeln!(out, "[{section}]");
            }
            let ratio = figure
                .ratio_to_floor
                .map_or_else(String::new, |ratio| format!("{ratio:.2}"));
            let _ = writeln!(
                out,
                "{:<label_width$}  {:>11} {:>11} {:>11} {:>6}  {:<7} {:>8}",
                figure.label,
                format_value(figure.median),
                format_value(figure.p95),
                format_value(figure.p99),
                figure.runs,
                figure.unit,
                ratio
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

/// Formats a value with three significant digits, or as an integer when it
/// is large.
pub fn format_value(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 || value == value.trunc() {
        format!("{value:.0}")
    } else if magnitude >= 100.0 {
        format!("{value:.1}")
    } else if magnitude >= 10.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let figure = Figure::new("x", "s", "x", "ms", Better::Lower, &samples);
        assert_eq!(figure.median, 50.0);
        assert_eq!(figure.p95, 95.0);
        assert_eq!(figure.p99, 99.0);
        assert_eq!(figure.runs, 100);
    }

    #[test]
    fn single_sample_fills_every_percentile() {
        let figure = Figure::new("x", "s", "x", "ms", Better::Lower, &[7.0]);
        assert_eq!(figure.median, 7.0);
        assert_eq!(figure.p99, 7.0);
    }

    #[test]
    fn ratio_of_rate_is_floor_over_figure() {
        let floor = Figure::new("floor", "s", "floor", "jobs/s", Better::Higher, &[1000.0]);
        let figure =
            Figure::new("x", "s", "x", "jobs/s", Better::Higher, &[250.0]).with_floor(&floor);
        assert_eq!(figure.ratio_to_floor, Some(4.0));
    }

    #[test]
    fn ratio_of_time_is_figure_over_floor() {
        let floor = Figure::new("floor", "s", "floor", "ms", Better::Lower, &[2.0]);
        let figure = Figure::new("x", "s", "x", "ms", Better::Lower, &[5.0]).with_floor(&floor);
        assert_eq!(figure.ratio_to_floor, Some(2.5));
    }
}
