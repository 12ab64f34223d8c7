//! Small statistics over timing samples.

use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

pub fn summarize(samples: &[Duration]) -> Summary {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pick = |q: f64| {
        if ms.is_empty() {
            return f64::NAN;
        }
        let i = ((ms.len() as f64 - 1.0) * q).round() as usize;
        ms[i]
    };
    Summary {
        n: ms.len(),
        median_ms: pick(0.5),
        p99_ms: pick(0.99),
        min_ms: ms.first().copied().unwrap_or(f64::NAN),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
    }
}

/// Median, min and max of plain values (Gbit/s, cycles/s...).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(values: &[f64]) -> Spread {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Spread {
        n: v.len(),
        median,
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let sum = summarize(&s);
        assert_eq!(sum.n, 100);
        assert!((sum.median_ms - 50.0).abs() <= 1.0);
        assert!((sum.p99_ms - 99.0).abs() <= 1.0);
        assert_eq!(sum.min_ms, 1.0);
        assert_eq!(sum.max_ms, 100.0);
    }

    #[test]
    fn spread_of_values() {
        let s = spread(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.n, s.median, s.min, s.max), (4, 2.5, 1.0, 10.0));
        let s = spread(&[5.0]);
        assert_eq!((s.median, s.min, s.max), (5.0, 5.0, 5.0));
        assert!(spread(&[]).median.is_nan());
    }
}
