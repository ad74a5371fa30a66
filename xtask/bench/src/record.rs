//! The result record every suite writes, and its markdown rendering.

use serde::Serialize;

/// One measurement: the median of `runs` repetitions, with the extremes kept.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub suite: String,
    pub system: String,
    pub rules: u64,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    /// `value` divided by the baseline's value for the same metric in the same invocation.
    pub ratio_to_baseline: f64,
    pub runs: usize,
    pub min: f64,
    pub max: f64,
}

impl Record {
    /// The median of `samples` as `metric`, with `base` (the first value of the same metric,
    /// set on the first call) as the baseline.
    #[allow(clippy::too_many_arguments)] // one record's fields, named at the call
    pub fn of_samples(
        suite: &str,
        system: String,
        rules: u64,
        metric: &str,
        unit: &str,
        samples: &mut [f64],
        base: &mut Option<f64>,
    ) -> Record {
        let (value, min, max) = summarize(samples);
        let base = *base.get_or_insert(value);
        Record {
            suite: suite.into(),
            system,
            rules,
            metric: metric.into(),
            value,
            unit: unit.into(),
            ratio_to_baseline: if base > 0.0 { value / base } else { f64::NAN },
            runs: samples.len(),
            min,
            max,
        }
    }
}

/// Median, minimum and maximum of `samples` (which must not be empty).
pub fn summarize(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    };
    (median, samples[0], samples[n - 1])
}

pub fn print_table(suite: &str, records: &[Record]) {
    println!("\n## {suite}\n");
    println!("| system | rules | metric | median | unit | ratio to baseline | min | max | runs |");
    println!("| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |");
    for r in records {
        println!(
            "| {} | {} | {} | {:.1} | {} | {:.2} | {:.1} | {:.1} | {} |",
            r.system, r.rules, r.metric, r.value, r.unit, r.ratio_to_baseline, r.min, r.max, r.runs
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(summarize(&mut [3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(summarize(&mut [4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
