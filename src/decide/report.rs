//! The experiment report: the customers' exposures totalled per experiment, arm and goal
//! (one pass over every shard's offer state, each under its lock), then compared with
//! the baseline arm by `analysis`.
//!
//! Nothing here is kept between reports: the exposures in the shards are the truth (in
//! snapshots, replayed from the log, moved by merges and reloads), and a report is a
//! pure function of them, so it cannot drift from them. The counts alone
//! ([`arm_counts`], for `/metrics`) come from each shard's running `ArmTally`, which
//! its invariant keeps equal to a recount; tests compare the two.

use super::analysis::{self, Moments, Proportion};
use super::state::ArmTally;
use super::Offers;
use crate::config::Config;
use crate::engine::Engine;
use crate::model::experiment::{
    ArmExposure, ComparisonState, ExperimentReport, GoalArm, GoalReport, Lift, SampleRatioCheck,
    SampleRatioVerdict,
};

/// The significance level of one comparison.
pub const ALPHA: f64 = 0.05;
/// Below this p-value the sample-ratio check says the split is broken.
pub const SAMPLE_RATIO_ALPHA: f64 = 0.001;

/// One arm's totals on one goal.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    converted: u64,
    sum: f64,
    sum_of_squares: f64,
}

/// Per experiment, per arm: exposed customers, and per goal the totals.
struct Tally {
    exposed: Vec<Vec<u64>>,
    goals: Vec<Vec<Vec<Totals>>>,
}

impl Tally {
    fn new(config: &Config) -> Tally {
        let experiments = &config.decisions.experiments;
        Tally {
            exposed: experiments.iter().map(|e| vec![0; e.arms.len()]).collect(),
            goals: experiments
                .iter()
                .map(|e| vec![vec![Totals::default(); e.arms.len()]; e.goals.len()])
                .collect(),
        }
    }

    fn add(&mut self, offers: &Offers) {
        for customer in offers.customers() {
            for x in &customer.exposures {
                let e = x.experiment as usize;
                let Some(arm) = customer.arms.get(e).and_then(|a| a.checked_sub(1)) else {
                    continue;
                };
                let arm = arm as usize;
                if arm >= self.exposed[e].len() {
                    continue;
                }
                self.exposed[e][arm] += 1;
                for (g, tally) in x.goals.iter().enumerate() {
                    let t = &mut self.goals[e][g][arm];
                    t.converted += (tally.conversions > 0) as u64;
                    t.sum += tally.value;
                    t.sum_of_squares += tally.value * tally.value;
                }
            }
        }
    }
}

/// One arm's counts, without the comparisons: what `/metrics` publishes every tick.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmCounts {
    pub experiment: String,
    pub arm: String,
    pub exposed: u64,
    /// Per goal of the experiment: its name and the customers converted on it.
    pub converted: Vec<(String, u64)>,
}

/// The exposed and converted customers of every arm of every measured experiment,
/// from the shards' running tallies (a few numbers per shard, not a walk over its
/// customers: cheap enough for every `/metrics` tick).
pub fn arm_counts(engine: &Engine<Offers>) -> Vec<ArmCounts> {
    let config = engine.config();
    let mut tally = ArmTally::new(config);
    engine.each_extension(|offers| tally.merge(offers.tally()));
    let count = |n: i64| n.max(0) as u64;
    let mut counts = Vec::new();
    for (e, def) in config.decisions.experiments.iter().enumerate() {
        if def.goals.is_empty() {
            continue;
        }
        for (a, arm) in def.arms.iter().enumerate() {
            counts.push(ArmCounts {
                experiment: def.name.clone(),
                arm: arm.name.clone(),
                exposed: count(tally.exposed[e][a]),
                converted: def
                    .goals
                    .iter()
                    .enumerate()
                    .map(|(g, &goal)| {
                        (
                            config.goals[goal].name.clone(),
                            count(tally.converted[e][g][a]),
                        )
                    })
                    .collect(),
            });
        }
    }
    counts
}

/// The report of every experiment that is measured (has goals), or of `only`.
pub fn experiment_reports(engine: &Engine<Offers>, only: Option<&str>) -> Vec<ExperimentReport> {
    let config = engine.config();
    let mut tally = Tally::new(config);
    engine.each_extension(|offers| tally.add(offers));
    config
        .decisions
        .experiments
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.goals.is_empty() && only.map_or(true, |name| e.name == name))
        .map(|(e, _)| report(config, e, &tally))
        .collect()
}

/// One report as people read it (`omnia ctl experiments`, the load generator): the
/// exposures and the sample-ratio verdict, then a table per goal, a `*` on a p-value
/// below the adjusted threshold.
pub fn render(r: &ExperimentReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let percent = |x: f64| format!("{:+.2}%", x * 100.0);
    let _ = writeln!(
        out,
        "experiment {}{} (baseline {}):",
        r.experiment,
        if r.holdout {
            " (the global holdout)"
        } else {
            ""
        },
        r.baseline
    );
    let exposed: Vec<String> = r
        .arms
        .iter()
        .map(|a| format!("{} {} (weight {})", a.arm, a.exposed, a.weight))
        .collect();
    let _ = writeln!(out, "  exposed: {}", exposed.join(", "));
    let srm = match r.sample_ratio.verdict {
        SampleRatioVerdict::Ok => format!(
            "ok (chi-square {:.3}, p = {:.4})",
            r.sample_ratio.chi_square.unwrap_or(0.0),
            r.sample_ratio.p_value.unwrap_or(1.0)
        ),
        SampleRatioVerdict::Mismatch => format!(
            "MISMATCH (chi-square {:.3}, p = {:.2e}): the split is not what the weights say; do not trust the lifts until the cause is found",
            r.sample_ratio.chi_square.unwrap_or(0.0),
            r.sample_ratio.p_value.unwrap_or(0.0)
        ),
        SampleRatioVerdict::NotEnoughData => {
            format!("not enough data (fewer than {} exposed)", r.min_customers)
        }
    };
    let _ = writeln!(out, "  sample ratio: {srm}");
    for goal in &r.goals {
        let _ = writeln!(
            out,
            "  goal {} ({} within {}{}), significant below p = {:.4}:",
            goal.goal,
            goal.event,
            crate::config::duration::format_duration(goal.window as u64),
            goal.value
                .as_ref()
                .map(|v| format!(", value {v} per exposed customer"))
                .unwrap_or_default(),
            r.adjusted_alpha
        );
        let _ = writeln!(
            out,
            "    {:<14} {:>9} {:>9} {:>9} {:>10} {:>22} {:>9} {:>7}",
            "arm", "exposed", "converted", "rate", "lift", "95% CI", "p", "chance"
        );
        for arm in &goal.arms {
            let rate = arm
                .rate
                .map_or("-".into(), |x| format!("{:.2}%", x * 100.0));
            let lift = if goal.value.is_some() {
                arm.mean_lift.as_ref()
            } else {
                arm.rate_lift.as_ref()
            };
            let (lift_text, ci, p, chance) = match (arm.state, lift) {
                (ComparisonState::Baseline, _) => (
                    "baseline".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                ),
                (ComparisonState::NotEnoughData, _) => (
                    "not enough data".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                ),
                (ComparisonState::Compared, Some(l)) => {
                    let (lift, ci) = match &l.relative {
                        Some(rel) => (
                            percent(rel.estimate),
                            format!("[{}, {}]", percent(rel.low), percent(rel.high)),
                        ),
                        None => (
                            format!("{:+.4}", l.absolute.estimate),
                            format!("[{:+.4}, {:+.4}]", l.absolute.low, l.absolute.high),
                        ),
                    };
                    let mark = if l.significant { "*" } else { "" };
                    (
                        lift,
                        ci,
                        format!("{:.4}{mark}", l.p_value),
                        l.chance_to_beat
                            .map_or(String::new(), |c| format!("{:.1}%", c * 100.0)),
                    )
                }
                (ComparisonState::Compared, None) => {
                    ("-".into(), String::new(), String::new(), String::new())
                }
            };
            let _ = writeln!(
                out,
                "    {:<14} {:>9} {:>9} {:>9} {:>10} {:>22} {:>9} {:>7}",
                arm.arm, arm.exposed, arm.converted, rate, lift_text, ci, p, chance
            );
            if let (Some(mean), true) = (arm.mean, goal.value.is_some()) {
                let _ = writeln!(
                    out,
                    "    {:<14} mean value per exposed customer {mean:.2}",
                    ""
                );
            }
        }
    }
    out
}

fn report(config: &Config, e: usize, tally: &Tally) -> ExperimentReport {
    let def = &config.decisions.experiments[e];
    let exposed = &tally.exposed[e];
    let min = def.min_customers as u64;
    let total: u64 = exposed.iter().sum();
    let weights: Vec<u32> = def.arms.iter().map(|a| a.weight).collect();
    let sample_ratio = match analysis::sample_ratio(exposed, &weights) {
        Some(s) if total >= min => SampleRatioCheck {
            verdict: if s.p_value < SAMPLE_RATIO_ALPHA {
                SampleRatioVerdict::Mismatch
            } else {
                SampleRatioVerdict::Ok
            },
            chi_square: Some(s.chi_square),
            p_value: Some(s.p_value),
        },
        _ => SampleRatioCheck {
            verdict: SampleRatioVerdict::NotEnoughData,
            chi_square: None,
            p_value: None,
        },
    };
    let comparisons = (def.arms.len().saturating_sub(1) * def.goals.len()).max(1);
    let adjusted_alpha = ALPHA / comparisons as f64;
    let b = def.baseline;
    let goals = def
        .goals
        .iter()
        .enumerate()
        .map(|(g, &goal)| {
            let goal_def = &config.goals[goal];
            let totals = &tally.goals[e][g];
            let proportion = |arm: usize| Proportion {
                converted: totals[arm].converted,
                exposed: exposed[arm],
            };
            let moments = |arm: usize| Moments {
                n: exposed[arm],
                sum: totals[arm].sum,
                sum_of_squares: totals[arm].sum_of_squares,
            };
            let valued = goal_def.value.is_some();
            let arms = (0..def.arms.len())
                .map(|arm| {
                    let state = if arm == b {
                        ComparisonState::Baseline
                    } else if exposed[arm] < min || exposed[b] < min {
                        ComparisonState::NotEnoughData
                    } else {
                        ComparisonState::Compared
                    };
                    let compared = state == ComparisonState::Compared;
                    let rate_lift = compared
                        .then(|| analysis::compare_rates(proportion(b), proportion(arm)))
                        .flatten()
                        .map(|r| Lift {
                            absolute: r.absolute,
                            relative: r.relative,
                            p_value: r.p_value,
                            chance_to_beat: Some(r.chance_to_beat),
                            significant: r.p_value < adjusted_alpha,
                        });
                    let mean_lift = (compared && valued)
                        .then(|| analysis::compare_means(moments(b), moments(arm)))
                        .flatten()
                        .map(|m| Lift {
                            absolute: m.absolute,
                            relative: m.relative,
                            p_value: m.p_value,
                            chance_to_beat: None,
                            significant: m.p_value < adjusted_alpha,
                        });
                    GoalArm {
                        arm: def.arms[arm].name.clone(),
                        exposed: exposed[arm],
                        converted: totals[arm].converted,
                        rate: proportion(arm).rate(),
                        mean: valued.then(|| moments(arm).mean()).flatten(),
                        variance: valued.then(|| moments(arm).variance()).flatten(),
                        state,
                        rate_lift,
                        mean_lift,
                    }
                })
                .collect();
            GoalReport {
                goal: goal_def.name.clone(),
                event: config.events[goal_def.event].name.clone(),
                window: goal_def.window,
                value: goal_def
                    .value
                    .map(|p| config.events[goal_def.event].properties[p].name.clone()),
                arms,
            }
        })
        .collect();
    ExperimentReport {
        experiment: def.name.clone(),
        description: def.description.clone(),
        holdout: def.holdout,
        baseline: def.arms[b].name.clone(),
        arms: def
            .arms
            .iter()
            .zip(exposed)
            .map(|(a, &n)| ArmExposure {
                arm: a.name.clone(),
                weight: a.weight,
                exposed: n,
            })
            .collect(),
        sample_ratio,
        alpha: ALPHA,
        adjusted_alpha,
        min_customers: def.min_customers,
        goals,
    }
}
