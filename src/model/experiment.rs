//! An experiment report as STATS, `omnia ctl experiments` and the HTTP API return it: per
//! experiment, who was exposed in each arm, whether the split matches the weights, and
//! per goal how each arm converted against the baseline arm. `decide::report` computes
//! it from the customers' exposures; docs/decisioning.md ("Measuring an experiment")
//! says what each number means and when to trust it.

use serde::{Deserialize, Serialize};

/// A point estimate with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentReport {
    pub experiment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether this is the global holdout (`[decisions] holdout`).
    pub holdout: bool,
    /// The arm every other arm is compared with.
    pub baseline: String,
    pub arms: Vec<ArmExposure>,
    pub sample_ratio: SampleRatioCheck,
    /// The significance level of one comparison.
    pub alpha: f64,
    /// `alpha` divided by the number of comparisons (treatment arms × goals), the
    /// Bonferroni threshold `significant` is judged by.
    pub adjusted_alpha: f64,
    /// Exposed customers each compared arm needs (`min_customers`).
    pub min_customers: u32,
    pub goals: Vec<GoalReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmExposure {
    pub arm: String,
    pub weight: u32,
    pub exposed: u64,
}

/// Verdict of the sample-ratio check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleRatioVerdict {
    /// The split is what the weights say, as far as the test can tell.
    Ok,
    /// p < 0.001: the assignment or the exposure is broken; do not trust the lifts.
    Mismatch,
    /// Fewer exposed customers than `min_customers`.
    NotEnoughData,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleRatioCheck {
    pub verdict: SampleRatioVerdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chi_square: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalReport {
    pub goal: String,
    pub event: String,
    /// Seconds after exposure in which a goal event counts.
    pub window: u32,
    /// The number property summed per customer, for a value goal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub arms: Vec<GoalArm>,
}

/// Where one arm stands on one goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComparisonState {
    /// The arm the others are compared with.
    Baseline,
    /// This arm or the baseline has fewer exposed customers than `min_customers`.
    NotEnoughData,
    Compared,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalArm {
    pub arm: String,
    pub exposed: u64,
    /// Exposed customers with at least one goal event in the window.
    pub converted: u64,
    /// `converted / exposed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// For a value goal: the sum of values per exposed customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// For a value goal: the sample variance of the value per exposed customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance: Option<f64>,
    pub state: ComparisonState,
    /// The conversion rate against the baseline's (two-proportion z-test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_lift: Option<Lift>,
    /// For a value goal: the mean value against the baseline's (Welch's t-test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_lift: Option<Lift>,
}

/// One arm against the baseline on one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lift {
    /// Treatment minus baseline.
    pub absolute: Interval,
    /// Treatment over baseline, minus 1; absent when the baseline is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative: Option<Interval>,
    /// Two-sided.
    pub p_value: f64,
    /// For a rate: the Bayesian chance that this arm's rate is above the baseline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chance_to_beat: Option<f64>,
    /// `p_value < adjusted_alpha`.
    pub significant: bool,
}
