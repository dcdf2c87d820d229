//! The omnia load generator: realistic omnichannel traffic, honest latency, reports
//! people can read.
//!
//! - [`journey`]: customers walking omnichannel journeys, deterministic per seed;
//! - [`pacing`]: open-loop scheduling (latency from the intended send time, so a stalled
//!   server shows up in the numbers) and closed-loop `--max`;
//! - [`target`]: an omnia server over TCP, an in-process engine, and [`redis_target`],
//!   the baseline;
//! - [`run`]: workloads (`ingest`, `decide`, `mixed`, `query`) as paced streams;
//! - [`report`]: histograms, the table, JSON and the HTML report;
//! - [`probes`]: trigger probes, the latency from an event to the webhook delivery it
//!   causes, through a receiver of the generator's own;
//! - [`breakdown`]: the server's own stage histograms for the measured window, scraped
//!   from its `/metrics`, printed beside the generator's figures;
//! - [`effect`]: a true effect for one experiment's treated arm, built into the
//!   journeys, so that the experiment report printed after a mixed run has a known
//!   answer to be checked against.

pub mod breakdown;
pub mod effect;
pub mod journey;
pub mod pacing;
pub mod probes;
pub mod redis_target;
pub mod report;
pub mod run;
pub mod target;
