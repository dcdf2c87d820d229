//! The statistics of an experiment report: how a treatment arm compares with the
//! baseline arm on one goal, and whether the arms got the customers their weights say.
//!
//! Pure functions of counts and running sums, so that they are checked against a
//! reference (`tests/fixtures/experiments/reference.py`, run by hand with scipy and
//! statsmodels, whose numbers the unit tests below hold to 1e-6) and so that the report
//! can be recomputed from what STATS returns. The formulas are written out for users in
//! docs/decisioning.md, "Measuring an experiment"; the two must say the same.
//!
//! - rates (customers converted / exposed): absolute lift with an unpooled (Wald) 95%
//!   interval, relative lift with a delta-method interval, a two-sided p-value from the
//!   pooled two-proportion z-test, and the Bayesian chance that the treatment's rate is
//!   above the baseline's under Beta(1, 1) priors, by numerical integration;
//! - means (a goal's value per exposed customer, from the sums of values and of their
//!   squares): Welch's t-test, its interval from the t distribution with the
//!   Welch–Satterthwaite degrees of freedom, relative lift by the delta method;
//! - sample ratio: Pearson's chi-square of the exposed counts against the weights.
//!
//! Invariant: every function returns `None` (or a `None` field) where its number is
//! undefined (no customers, a baseline rate of 0 for a relative lift), never NaN.

pub use crate::model::experiment::Interval;
use statrs::distribution::{Beta, ChiSquared, Continuous, ContinuousCDF, Normal, StudentsT};

/// The two-sided 95% level every interval here has.
pub const CONFIDENCE: f64 = 0.95;

/// Converted customers out of exposed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Proportion {
    pub converted: u64,
    pub exposed: u64,
}

impl Proportion {
    pub fn rate(&self) -> Option<f64> {
        (self.exposed > 0).then(|| self.converted as f64 / self.exposed as f64)
    }
}

/// The running sums of one value per exposed customer (0 for one that did not convert).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Moments {
    pub n: u64,
    pub sum: f64,
    pub sum_of_squares: f64,
}

impl Moments {
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The sample variance (n − 1 in the denominator); `None` below two customers.
    pub fn variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        // Rounding can take a constant value's variance a hair below zero.
        Some(((self.sum_of_squares - self.sum * self.sum / n) / (n - 1.0)).max(0.0))
    }
}

/// A treatment's rate against the baseline's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateComparison {
    /// Treatment rate minus baseline rate.
    pub absolute: Interval,
    /// Treatment rate over baseline rate, minus 1; `None` when the baseline rate is 0.
    pub relative: Option<Interval>,
    pub p_value: f64,
    /// P(treatment rate > baseline rate) under Beta(1, 1) priors.
    pub chance_to_beat: f64,
}

/// A treatment's mean value per exposed customer against the baseline's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanComparison {
    pub absolute: Interval,
    /// `None` when the baseline mean is 0.
    pub relative: Option<Interval>,
    pub p_value: f64,
    pub degrees_of_freedom: f64,
}

/// The sample-ratio check of one experiment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRatio {
    pub chi_square: f64,
    pub degrees_of_freedom: u32,
    pub p_value: f64,
}

fn standard_normal() -> Normal {
    Normal::new(0.0, 1.0).expect("the standard normal's parameters are valid")
}

/// The two-sided critical value of the standard normal at [`CONFIDENCE`].
fn z_critical() -> f64 {
    standard_normal().inverse_cdf(1.0 - (1.0 - CONFIDENCE) / 2.0)
}

/// Two-sided p-value of a standard normal statistic.
fn normal_p(z: f64) -> f64 {
    (2.0 * standard_normal().sf(z.abs())).min(1.0)
}

/// `estimate ± critical × se`.
fn interval(estimate: f64, se: f64, critical: f64) -> Interval {
    Interval {
        estimate,
        low: estimate - critical * se,
        high: estimate + critical * se,
    }
}

/// The delta-method interval of `t / c − 1` for independent estimates `t`, `c` with
/// variances `var_t`, `var_c`; `None` when `c` is 0.
fn relative(t: f64, var_t: f64, c: f64, var_c: f64, critical: f64) -> Option<Interval> {
    if c == 0.0 {
        return None;
    }
    let ratio = t / c;
    let var = var_t / (c * c) + t * t * var_c / (c * c * c * c);
    Some(interval(ratio - 1.0, var.sqrt(), critical))
}

/// Compares the treatment's conversion rate with the baseline's; `None` while either
/// arm has no exposed customer.
pub fn compare_rates(baseline: Proportion, treatment: Proportion) -> Option<RateComparison> {
    let (pc, pt) = (baseline.rate()?, treatment.rate()?);
    let (nc, nt) = (baseline.exposed as f64, treatment.exposed as f64);
    let (var_c, var_t) = (pc * (1.0 - pc) / nc, pt * (1.0 - pt) / nt);
    let z = z_critical();
    let absolute = interval(pt - pc, (var_t + var_c).sqrt(), z);
    // The test assumes no difference, so both arms share one pooled rate.
    let pooled = (baseline.converted + treatment.converted) as f64 / (nc + nt);
    let se0 = (pooled * (1.0 - pooled) * (1.0 / nc + 1.0 / nt)).sqrt();
    let p_value = if se0 > 0.0 {
        normal_p((pt - pc) / se0)
    } else {
        // Every customer of both arms converted, or none did: no evidence of a difference.
        1.0
    };
    Some(RateComparison {
        absolute,
        relative: relative(pt, var_t, pc, var_c, z),
        p_value,
        chance_to_beat: chance_to_beat(baseline, treatment),
    })
}

/// Compares the treatment's mean value per exposed customer with the baseline's by
/// Welch's t-test; `None` while either arm has fewer than two exposed customers.
pub fn compare_means(baseline: Moments, treatment: Moments) -> Option<MeanComparison> {
    let (vc, vt) = (baseline.variance()?, treatment.variance()?);
    let (mc, mt) = (baseline.mean()?, treatment.mean()?);
    let (nc, nt) = (baseline.n as f64, treatment.n as f64);
    let (a, b) = (vt / nt, vc / nc);
    let se = (a + b).sqrt();
    let difference = mt - mc;
    if se == 0.0 {
        // Every customer of each arm has the same value: the difference is exact.
        let p_value = if difference == 0.0 { 1.0 } else { 0.0 };
        let exact = Interval {
            estimate: difference,
            low: difference,
            high: difference,
        };
        let relative = (mc != 0.0).then(|| {
            let r = mt / mc - 1.0;
            Interval {
                estimate: r,
                low: r,
                high: r,
            }
        });
        return Some(MeanComparison {
            absolute: exact,
            relative,
            p_value,
            degrees_of_freedom: nt + nc - 2.0,
        });
    }
    let df = (a + b) * (a + b) / (a * a / (nt - 1.0) + b * b / (nc - 1.0));
    let t = StudentsT::new(0.0, 1.0, df).expect("Welch's degrees of freedom are positive");
    let critical = t.inverse_cdf(1.0 - (1.0 - CONFIDENCE) / 2.0);
    Some(MeanComparison {
        absolute: interval(difference, se, critical),
        relative: relative(mt, a, mc, b, critical),
        p_value: (2.0 * t.sf((difference / se).abs())).min(1.0),
        degrees_of_freedom: df,
    })
}

/// P(treatment rate > baseline rate) with each rate Beta(1 + converted, 1 + exposed −
/// converted): ∫ f_baseline(x) · P(treatment > x) dx, by Simpson's rule on 4,096
/// intervals over the baseline density's mass (its mean ± 12 standard deviations, within
/// [0, 1]). Deterministic; within 1e-6 of scipy's adaptive quadrature on the reference
/// cases.
pub fn chance_to_beat(baseline: Proportion, treatment: Proportion) -> f64 {
    let posterior = |p: Proportion| {
        let converted = p.converted.min(p.exposed) as f64;
        Beta::new(1.0 + converted, 1.0 + p.exposed as f64 - converted)
            .expect("a Beta(1 + x, 1 + n - x) posterior has positive shapes")
    };
    let (c, t) = (posterior(baseline), posterior(treatment));
    let (alpha, beta) = (c.shape_a(), c.shape_b());
    let mean = alpha / (alpha + beta);
    let sd = (alpha * beta / ((alpha + beta).powi(2) * (alpha + beta + 1.0))).sqrt();
    let (low, high) = ((mean - 12.0 * sd).max(0.0), (mean + 12.0 * sd).min(1.0));
    const STEPS: usize = 4096;
    let h = (high - low) / STEPS as f64;
    let f = |x: f64| c.pdf(x) * t.sf(x);
    let mut sum = f(low) + f(high);
    for i in 1..STEPS {
        let x = low + i as f64 * h;
        sum += if i % 2 == 1 { 4.0 } else { 2.0 } * f(x);
    }
    (sum * h / 3.0).clamp(0.0, 1.0)
}

/// Pearson's chi-square test of the exposed counts per arm against the arms' weights.
/// Arms of weight 0 are left out (they are never assigned); `None` with fewer than two
/// weighted arms or no customer.
pub fn sample_ratio(exposed: &[u64], weights: &[u32]) -> Option<SampleRatio> {
    let arms: Vec<(u64, u32)> = exposed
        .iter()
        .zip(weights)
        .filter(|(_, &w)| w > 0)
        .map(|(&n, &w)| (n, w))
        .collect();
    let total: u64 = arms.iter().map(|(n, _)| n).sum();
    let weight: u64 = arms.iter().map(|&(_, w)| w as u64).sum();
    if arms.len() < 2 || total == 0 {
        return None;
    }
    let chi_square: f64 = arms
        .iter()
        .map(|&(n, w)| {
            let expected = total as f64 * w as f64 / weight as f64;
            (n as f64 - expected).powi(2) / expected
        })
        .sum();
    let degrees_of_freedom = arms.len() as u32 - 1;
    let p_value = ChiSquared::new(degrees_of_freedom as f64)
        .expect("at least one degree of freedom")
        .sf(chi_square);
    Some(SampleRatio {
        chi_square,
        degrees_of_freedom,
        p_value,
    })
}

#[cfg(test)]
mod tests {
    //! The expected numbers come from `tests/fixtures/experiments/reference.py` (scipy
    //! and statsmodels), pasted from its output.
    use super::*;

    fn close(found: f64, expected: f64, tolerance: f64, what: &str) {
        assert!(
            (found - expected).abs() <= tolerance,
            "{what}: found {found}, the reference says {expected}"
        );
    }

    fn p(converted: u64, exposed: u64) -> Proportion {
        Proportion { converted, exposed }
    }

    fn moments(values: &[f64]) -> Moments {
        Moments {
            n: values.len() as u64,
            sum: values.iter().sum(),
            sum_of_squares: values.iter().map(|v| v * v).sum(),
        }
    }

    #[test]
    fn undefined_numbers_are_none_not_nan() {
        assert_eq!(compare_rates(p(0, 0), p(3, 10)), None);
        let r = compare_rates(p(0, 100), p(0, 100)).unwrap();
        assert_eq!(r.p_value, 1.0);
        assert_eq!(r.relative, None, "no relative lift on a baseline rate of 0");
        close(r.chance_to_beat, 0.5, 1e-9, "equal posteriors");
        assert_eq!(compare_means(moments(&[1.0]), moments(&[1.0, 2.0])), None);
        let m = compare_means(moments(&[2.0, 2.0]), moments(&[3.0, 3.0])).unwrap();
        assert_eq!((m.p_value, m.absolute.estimate), (0.0, 1.0));
        assert_eq!(sample_ratio(&[10, 0], &[50, 0]), None);
        assert_eq!(sample_ratio(&[0, 0], &[50, 50]), None);
    }

    /// Within 1e-6; below 1 in magnitude, within 1e-6 of the expected value's size, so
    /// a p-value of 1e-23 is checked too.
    fn near(found: f64, expected: f64, what: &str) {
        close(
            found,
            expected,
            1e-6 * expected.abs().min(1.0) + 1e-15,
            what,
        );
    }

    fn near_interval(found: Interval, expected: (f64, f64, f64), what: &str) {
        near(found.estimate, expected.0, &format!("{what} estimate"));
        near(found.low, expected.1, &format!("{what} low"));
        near(found.high, expected.2, &format!("{what} high"));
    }

    #[test]
    fn rates_match_statsmodels_and_scipy() {
        type Case = (
            (u64, u64),
            (u64, u64),
            (f64, f64, f64),
            Option<(f64, f64, f64)>,
            f64,
            f64,
        );
        let cases: [Case; 5] = [
            (
                (1000, 10000),
                (1200, 10000),
                (
                    0.01999999999999999,
                    0.011331728284555373,
                    0.02866827171544461,
                ),
                Some((
                    0.19999999999999996,
                    0.10494679833760154,
                    0.29505320166239835,
                )),
                6.188458781738781e-06,
                0.9999969307641081,
            ),
            (
                (50, 400),
                (71, 410),
                (
                    0.04817073170731706,
                    -0.0007366900973129684,
                    0.0970781535119471,
                ),
                Some((0.3853658536585365, -0.07818586526474447, 0.8489175725818174)),
                0.054498905098437564,
                0.9724690617295749,
            ),
            (
                (3, 20),
                (9, 25),
                (0.21, -0.034728797801652556, 0.45472879780165254),
                Some((1.4, -1.4004860878656635, 4.200486087865663)),
                0.11343638083618274,
                0.9367322089712585,
            ),
            (
                (480, 5000),
                (455, 5000),
                (
                    -0.0050000000000000044,
                    -0.016411737768491853,
                    0.006411737768491844,
                ),
                Some((
                    -0.05208333333333337,
                    -0.16782711149282403,
                    0.06366044482615729,
                )),
                0.39049640901013416,
                0.19536880980544413,
            ),
            (
                (0, 30),
                (2, 30),
                (
                    0.06666666666666667,
                    -0.02259401978949306,
                    0.1559273531228264,
                ),
                None,
                0.15032345547866832,
                0.8811475409836057,
            ),
        ];
        for (c, t, absolute, relative, p_value, chance) in cases {
            let what = format!("{c:?} against {t:?}");
            let r = compare_rates(p(c.0, c.1), p(t.0, t.1)).unwrap();
            near_interval(r.absolute, absolute, &format!("{what}: absolute lift"));
            match (r.relative, relative) {
                (Some(found), Some(expected)) => {
                    near_interval(found, expected, &format!("{what}: relative lift"))
                }
                (found, expected) => assert_eq!(found.is_some(), expected.is_some(), "{what}"),
            }
            near(r.p_value, p_value, &format!("{what}: p-value"));
            near(r.chance_to_beat, chance, &format!("{what}: chance to beat"));
        }
    }

    #[test]
    fn means_match_scipy_welch() {
        type Case = (
            (u64, f64, f64),
            (u64, f64, f64),
            (f64, f64, f64),
            (f64, f64, f64),
            f64,
            f64,
        );
        let cases: [Case; 2] = [
            (
                (2000, 8200.0, 755259.0),
                (1800, 8820.0, 874805.75),
                (0.8000000000000007, -0.496540764578163, 2.0965407645781644),
                (0.19512195121951237, -0.14792356812758, 0.5381674705666047),
                0.22645203737656386,
                3611.1573071198154,
            ),
            (
                (50, 410.0, 9300.0),
                (60, 366.0, 5100.0),
                (-2.0999999999999996, -5.678738653465976, 1.4787386534659763),
                (
                    -0.25609756097560976,
                    -0.6120667018378512,
                    0.09987157988663159,
                ),
                0.24636093758431737,
                79.82059535842839,
            ),
        ];
        for (c, t, absolute, relative, p_value, df) in cases {
            let m = |(n, sum, sum_of_squares): (u64, f64, f64)| Moments {
                n,
                sum,
                sum_of_squares,
            };
            let what = format!("{c:?} against {t:?}");
            let r = compare_means(m(c), m(t)).unwrap();
            near_interval(r.absolute, absolute, &format!("{what}: absolute lift"));
            near_interval(
                r.relative.unwrap(),
                relative,
                &format!("{what}: relative lift"),
            );
            near(r.p_value, p_value, &format!("{what}: p-value"));
            close(
                r.degrees_of_freedom,
                df,
                1e-6 * df,
                &format!("{what}: degrees of freedom"),
            );
        }
    }

    #[test]
    fn sample_ratios_match_scipy_chisquare() {
        let cases: [(&[u64], &[u32], f64, f64); 4] = [
            (&[5000, 5000], &[50, 50], 0.0, 1.0),
            (&[5500, 4500], &[50, 50], 100.0, 1.5239706048320995e-23),
            (
                &[1010, 980, 2100],
                &[25, 25, 50],
                3.3985330073349633,
                0.18281757090306539,
            ),
            (&[30, 62], &[1, 2], 0.02173913043478261, 0.882783191152826),
        ];
        for (exposed, weights, chi_square, p_value) in cases {
            let r = sample_ratio(exposed, weights).unwrap();
            near(
                r.chi_square,
                chi_square,
                &format!("{exposed:?}: chi-square"),
            );
            near(r.p_value, p_value, &format!("{exposed:?}: p-value"));
            assert_eq!(r.degrees_of_freedom as usize, exposed.len() - 1);
        }
    }

    /// With equal true rates, a test at p < 0.05 says "different" about 5% of the time:
    /// over 200 simulated experiments of 2,000 customers per arm (fixed seed), the count
    /// of false positives is inside the binomial(200, 0.05) range of 99.9% (1 to 22).
    #[test]
    fn the_false_positive_rate_is_what_the_level_says() {
        let mut state = 0x5eed_u64;
        let mut uniform = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut false_positives = 0;
        for _ in 0..200 {
            let mut arm = || {
                let converted = (0..2000).filter(|_| uniform() < 0.1).count() as u64;
                p(converted, 2000)
            };
            let (c, t) = (arm(), arm());
            if compare_rates(c, t).unwrap().p_value < 0.05 {
                false_positives += 1;
            }
        }
        assert!(
            (1..=22).contains(&false_positives),
            "{false_positives} false positives in 200"
        );
    }
}
