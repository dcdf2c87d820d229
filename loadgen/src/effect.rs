//! A true effect built into the journeys, so that an experiment's report can be checked
//! against a known answer.
//!
//! One experiment of the config (by default the first measured one) and one of its arms
//! (by default the first that is not the baseline) are "treated": a customer in that arm,
//! once a decision has shown it one of the experiment's exposing offers (the cart
//! reminder, in the default config), takes each step towards a purchase `1 + lift` times
//! as often (logging in with a cart, clicking the cart reminder, buying: the
//! `carted_login`, `abandoned_reminder_click`, `logged_in_purchase` and
//! `customer_purchase` steps of [`crate::journey::Mix`]), so more of those customers come
//! back and buy, and buy more. The generator learns arm and exposure the only way a
//! channel can: from the `arms` and `offers` of the decisions omnia answered.
//!
//! Why from the exposure and not from the first decision: an effect that began before
//! the customer met the treatment would move treated customers out of the cart stages
//! before they are exposed, so fewer of them would be exposed, and the report's
//! sample-ratio check would rightly call the split broken (it did, in a first version).
//!
//! Besides shaping the traffic, the effect keeps its own tally of what it sent: per arm,
//! the customers it saw shown an exposing offer and how many of them it then sent a
//! purchase for. That is the generator's view, printed beside omnia's report so a reader
//! can compare the two; it differs where omnia's exposure does (an exposing offer that
//! passed the gate but ranked below the answer's top, omnia exposes and this does not
//! see).
//!
//! Invariant: a customer's arm is the one of the answer that first showed it an exposing
//! offer, and never changes after; before that it is the latest answer's, because omnia
//! fixes an arm only when something is recorded (docs/decisioning.md, "Known limits").

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use omnia::config::Config;

use crate::target::Answered;
use serde::Serialize;

/// The effect and the tally of what it did. Shared by every stream of a run.
#[derive(Debug)]
pub struct Effect {
    experiment: String,
    arms: Vec<String>,
    /// Index into `arms`.
    treated: usize,
    lift: f64,
    /// The experiment's exposing offers, by name.
    exposing: Vec<String>,
    /// Per customer: the arm's index + 1 once a decision named it (0 before), and
    /// [`SHOWN`] once a decision showed it an exposing offer.
    seen: Vec<AtomicU8>,
    /// Per customer: a purchase was sent after it was shown an exposing offer.
    bought: Vec<AtomicBool>,
}

/// What the effect did, per arm.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EffectReport {
    pub experiment: String,
    pub treated_arm: String,
    /// The relative uplift of each step towards a purchase in the treated arm.
    pub lift: f64,
    pub arms: Vec<EffectArm>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EffectArm {
    pub arm: String,
    /// Customers a decision placed in this arm.
    pub placed: u64,
    /// Of those, customers a decision showed an exposing offer.
    pub shown: u64,
    /// Of those, customers the generator then sent a purchase for.
    pub bought: u64,
}

/// The bit of [`Effect::seen`] that says "shown an exposing offer".
const SHOWN: u8 = 0x80;

impl Effect {
    /// The effect of `lift` on `arm` of `experiment` in `config`, for `customers`
    /// customers; `None` names pick the defaults (see the module doc). `Ok(None)`: no
    /// experiment was named and the config measures none.
    pub fn new(
        config: &Config,
        experiment: Option<&str>,
        arm: Option<&str>,
        lift: f64,
        customers: u64,
    ) -> Result<Option<Effect>, String> {
        if !(lift.is_finite() && lift >= 0.0) {
            return Err(format!(
                "--effect is {lift}; it is a relative uplift, 0 (none, an A/A check) or more"
            ));
        }
        let experiments = &config.decisions.experiments;
        let def = match experiment {
            Some(name) => experiments.iter().find(|e| e.name == name).ok_or_else(|| {
                format!(
                    "--effect-experiment: the config has no experiment `{name}` (it has: {})",
                    names(experiments.iter().map(|e| e.name.as_str()))
                )
            })?,
            None => match experiments
                .iter()
                .find(|e| !e.goals.is_empty() && e.arms.len() >= 2)
            {
                Some(def) => def,
                None => return Ok(None),
            },
        };
        if def.arms.len() >= SHOWN as usize {
            return Err(format!(
                "experiment `{}` has {} arms; the effect follows at most {}",
                def.name,
                def.arms.len(),
                SHOWN - 1
            ));
        }
        let treated = match arm {
            Some(name) => def
                .arms
                .iter()
                .position(|a| a.name == name)
                .ok_or_else(|| {
                    format!(
                        "--effect-arm: experiment `{}` has no arm `{name}` (it has: {})",
                        def.name,
                        names(def.arms.iter().map(|a| a.name.as_str()))
                    )
                })?,
            None => (0..def.arms.len())
                .find(|&a| a != def.baseline)
                .unwrap_or(0),
        };
        Ok(Some(Effect {
            experiment: def.name.clone(),
            arms: def.arms.iter().map(|a| a.name.clone()).collect(),
            treated,
            lift,
            exposing: config
                .decisions
                .offers
                .iter()
                .zip(&def.exposing)
                .filter(|(_, &exposing)| exposing)
                .map(|(o, _)| o.name.clone())
                .collect(),
            seen: (0..customers).map(|_| AtomicU8::new(0)).collect(),
            bought: (0..customers).map(|_| AtomicBool::new(false)).collect(),
        }))
    }

    /// A decision for `customer` was answered.
    pub fn saw(&self, customer: u64, answer: &Answered) {
        let Some(slot) = self.seen.get(customer as usize) else {
            return;
        };
        let Some(arm) = answer
            .arms
            .iter()
            .find(|a| a.experiment == self.experiment)
            .and_then(|a| self.arms.iter().position(|name| *name == a.arm))
        else {
            return;
        };
        let shown = answer.offers.iter().any(|o| self.exposing.contains(o));
        let state = (arm as u8 + 1) | if shown { SHOWN } else { 0 };
        // Until shown, the arm follows the answers, as omnia's may (a read-only decision
        // does not fix it); from then on it is fixed, as omnia's exposure fixes it.
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            (old & SHOWN == 0).then_some(state)
        });
    }

    /// How much more likely `customer` is to take a step towards a purchase: `1 + lift`
    /// in the treated arm once shown an exposing offer, 1 otherwise.
    pub fn factor(&self, customer: u64) -> f64 {
        match self.seen.get(customer as usize) {
            Some(slot) if slot.load(Ordering::Relaxed) == SHOWN | (self.treated as u8 + 1) => {
                1.0 + self.lift
            }
            _ => 1.0,
        }
    }

    /// A purchase was sent for `customer`.
    pub fn bought(&self, customer: u64) {
        let i = customer as usize;
        if self
            .seen
            .get(i)
            .is_some_and(|s| s.load(Ordering::Relaxed) & SHOWN != 0)
        {
            self.bought[i].store(true, Ordering::Relaxed);
        }
    }

    pub fn report(&self) -> EffectReport {
        let mut arms: Vec<EffectArm> = self
            .arms
            .iter()
            .map(|arm| EffectArm {
                arm: arm.clone(),
                placed: 0,
                shown: 0,
                bought: 0,
            })
            .collect();
        for (seen, bought) in self.seen.iter().zip(&self.bought) {
            let state = seen.load(Ordering::Relaxed);
            let Some(arm) = (state & !SHOWN).checked_sub(1) else {
                continue;
            };
            let tally = &mut arms[arm as usize];
            tally.placed += 1;
            if state & SHOWN != 0 {
                tally.shown += 1;
                tally.bought += u64::from(bought.load(Ordering::Relaxed));
            }
        }
        EffectReport {
            experiment: self.experiment.clone(),
            treated_arm: self.arms[self.treated].clone(),
            lift: self.lift,
            arms,
        }
    }
}

impl EffectReport {
    /// The lines printed after the run's table.
    pub fn lines(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
"true effect built into the journeys: in experiment {}, arm {}, once shown an exposing offer, takes each step towards a purchase {:+.0}% more often; what the generator sent:\n",
            self.experiment,
            self.treated_arm,
            self.lift * 100.0
        );
        for arm in &self.arms {
            let rate = if arm.shown == 0 {
                "-".to_string()
            } else {
                format!("{:.2}%", 100.0 * arm.bought as f64 / arm.shown as f64)
            };
            let _ = writeln!(
                out,
                "  {:<14} {:>9} placed, {:>9} shown an exposing offer, {:>9} of them then bought ({rate})",
                arm.arm, arm.placed, arm.shown, arm.bought
            );
        }
        out
    }
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = names.collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnia::model::decision::ArmAssignment;

    fn answer(arm: &str, offers: &[&str]) -> Answered {
        Answered {
            arms: vec![ArmAssignment {
                experiment: "cart_reminder_boost".into(),
                arm: arm.into(),
            }],
            offers: offers.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn the_treated_arm_is_treated_once_shown_an_exposing_offer() {
        let config = Config::embedded_default().unwrap();
        let effect = Effect::new(&config, None, None, 0.5, 10).unwrap().unwrap();
        assert_eq!(effect.exposing, ["cart_reminder"]);
        assert_eq!(effect.factor(3), 1.0, "an arm not yet seen is untreated");
        effect.saw(3, &answer("standard", &["welcome_discount"]));
        effect.saw(3, &answer("boosted", &["welcome_discount"]));
        assert_eq!(effect.factor(3), 1.0, "placed, not yet shown the reminder");
        effect.bought(3); // before the exposure: not in the tally
        effect.saw(3, &answer("boosted", &["cart_reminder"]));
        effect.saw(4, &answer("standard", &["cart_reminder"]));
        assert_eq!(effect.factor(3), 1.5);
        assert_eq!(effect.factor(4), 1.0, "the baseline is never treated");
        // Once shown, the arm is fixed, as omnia's exposure fixes it.
        effect.saw(3, &answer("standard", &[]));
        assert_eq!(effect.factor(3), 1.5);
        effect.saw(5, &answer("standard", &[]));

        effect.bought(4);
        effect.bought(5); // never shown: not counted
        effect.bought(6); // never placed
        let report = effect.report();
        assert_eq!(report.treated_arm, "boosted");
        let tally: Vec<(&str, u64, u64, u64)> = report
            .arms
            .iter()
            .map(|a| (a.arm.as_str(), a.placed, a.shown, a.bought))
            .collect();
        assert_eq!(tally, [("standard", 2, 1, 1), ("boosted", 1, 1, 0)]);
    }

    #[test]
    fn unknown_names_and_a_negative_lift_are_refused_by_name() {
        let config = Config::embedded_default().unwrap();
        let err = Effect::new(&config, Some("nope"), None, 0.5, 1).unwrap_err();
        assert!(
            err.contains("no experiment `nope` (it has: cart_reminder_boost"),
            "{err}"
        );
        let err = Effect::new(&config, None, Some("nope"), 0.5, 1).unwrap_err();
        assert!(
            err.contains("has no arm `nope` (it has: standard, boosted)"),
            "{err}"
        );
        let err = Effect::new(&config, None, None, -0.1, 1).unwrap_err();
        assert!(err.contains("--effect is -0.1"), "{err}");
        // A config that measures nothing has no effect, unless one is asked for by name.
        let text = include_str!("../../examples/retail.toml")
            .replace("goals = [\"purchase\", \"revenue\"]", "");
        let unmeasured =
            Config::from_source(&omnia::config::Source::new("unmeasured.toml", &text)).unwrap();
        assert!(Effect::new(&unmeasured, None, None, 0.5, 1)
            .unwrap()
            .is_none());
        assert!(Effect::new(&unmeasured, Some("x"), None, 0.5, 1).is_err());
    }
}
