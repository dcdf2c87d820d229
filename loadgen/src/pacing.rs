//! Pacing: when requests are sent, and what their latency is.
//!
//! Open loop (the default): request `i` of a stream is *scheduled* at `start + i /
//! rate`, whether or not earlier ones have been answered, and its latency is measured
//! from that intended time to its response. A server that stalls for 100 ms therefore
//! shows 100 ms of latency on every request that should have gone out during the stall,
//! not one slow request followed by fast ones: this is how coordinated omission is
//! avoided. When the pipeline is full the sender waits, and that wait counts too.
//!
//! Closed loop (`--max`): each stream keeps `depth` requests in flight and sends the
//! next as soon as one returns; latency is measured from the actual send. This finds the
//! maximum throughput, and its latencies describe a saturated server.
//!
//! Time is `tokio::time`, so tests pause it and drive a fake server deterministically.
//! Its timer fires in millisecond steps, so a sender at 25,000 requests per second wakes
//! about once a millisecond and sends the requests that came due. That lateness is the
//! timer's, not the server's: a request sent late *only* because of the timer is
//! measured from its actual send. A request held back because its connection's pipeline
//! was full (the server not keeping up) is measured from its intended time, so the
//! backlog the server caused is counted in full.

use std::future::Future;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// This many requests per second on this stream.
    Open { per_second: f64 },
    /// As fast as responses allow.
    Closed,
}

/// One completed request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completion {
    /// When it was meant to be sent (open loop) or was sent (closed loop).
    pub intended: Instant,
    pub completed: Instant,
    /// The generator's own lateness: from when the request was due (open loop) to when
    /// it was sent, when nothing but the generator held it (its timer, its busy threads);
    /// zero when it waited for a free slot in the pipeline (the server's backlog, which
    /// its latency counts) and in closed loop.
    pub late: Duration,
    /// Units of work it carried (events in a batch; 1 otherwise), or the error.
    pub result: Result<u64, ()>,
}

impl Completion {
    pub fn latency(&self) -> Duration {
        self.completed.saturating_duration_since(self.intended)
    }
}

/// Sends requests made by `make(i)` under `pacing` with at most `depth` in flight until
/// `deadline` (no request is scheduled at or after it), and hands every completion to
/// `record`. Returns the number of requests sent.
pub async fn drive<Fut>(
    pacing: Pacing,
    depth: usize,
    deadline: Instant,
    mut make: impl FnMut(u64) -> Fut,
    mut record: impl FnMut(Completion),
) -> u64
where
    Fut: Future<Output = Result<u64, ()>>,
{
    let depth = depth.max(1);
    let start = Instant::now();
    let period = match pacing {
        Pacing::Open { per_second } if per_second > 0.0 => {
            Some(Duration::from_secs_f64(1.0 / per_second))
        }
        _ => None,
    };
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0u64;
    // The next request is made before its time comes, so building it (generating a
    // batch of events) is not counted as the server's latency.
    let mut next = Some(make(0));
    // Whether the next send waited for a free slot in the pipeline.
    let mut held_back = false;
    loop {
        // Take every completion that is ready, without waiting. Polling also moves the
        // requests just added along (a request is sent when first polled).
        while let Some(Some(done)) = in_flight.next().now_or_never() {
            record(done);
        }
        let intended = match period {
            Some(p) => start + p.mul_f64(sent as f64),
            None => Instant::now(),
        };
        let more = intended < deadline;
        if !more && in_flight.is_empty() {
            break;
        }
        if more && in_flight.len() < depth {
            let now = Instant::now();
            if intended > now {
                // Not due yet: wait for it or for a completion, whichever comes first.
                // (A timer deadline is rounded up to the next millisecond, so a request
                // that is already due never goes through it.)
                tokio::select! {
                    biased;
                    Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                        record(done);
                        continue;
                    }
                    _ = tokio::time::sleep_until(intended) => {}
                }
            }
            let request = next.take().unwrap_or_else(|| make(sent));
            sent += 1;
            let now = Instant::now();
            let late = if held_back || period.is_none() {
                Duration::ZERO
            } else {
                now.saturating_duration_since(intended)
            };
            let intended = if held_back {
                intended
            } else {
                intended.max(now)
            };
            held_back = false;
            in_flight.push(async move {
                let result = request.await;
                Completion {
                    intended,
                    completed: Instant::now(),
                    late,
                    result,
                }
            });
            next = Some(make(sent));
        } else if let Some(done) = in_flight.next().await {
            held_back = more;
            record(done);
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake server: answers in 1 ms, except that nothing is answered between 100 ms
    /// and 300 ms after the start (a stall), when everything waiting is answered at once.
    fn fake_server(
        start: Instant,
    ) -> impl Fn(u64) -> std::pin::Pin<Box<dyn Future<Output = Result<u64, ()>>>> {
        move |_| {
            Box::pin(async move {
                let now = Instant::now();
                let answer = now + Duration::from_millis(1);
                let stall = (
                    start + Duration::from_millis(100),
                    start + Duration::from_millis(300),
                );
                let at = if answer > stall.0 && answer < stall.1 {
                    stall.1
                } else {
                    answer
                };
                tokio::time::sleep_until(at).await;
                Ok(1)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_shows_in_the_latency_of_every_request_scheduled_during_it() {
        let start = Instant::now();
        let mut latencies = Vec::new();
        let sent = drive(
            Pacing::Open { per_second: 1000.0 },
            1000,
            start + Duration::from_millis(500),
            fake_server(start),
            |c| {
                // Sent on time: the stall is the server's, none of it the generator's.
                assert_eq!(c.late, Duration::ZERO);
                latencies.push((c.intended - start, c.latency()))
            },
        )
        .await;
        assert_eq!(sent, 500);
        assert_eq!(latencies.len(), 500);
        let at = |ms: u64| {
            latencies
                .iter()
                .find(|(t, _)| *t == Duration::from_millis(ms))
                .map(|(_, l)| *l)
        };
        // Before the stall: 1 ms. Scheduled at 150 ms: answered at 300 ms. After: 1 ms.
        assert_eq!(at(50), Some(Duration::from_millis(1)));
        assert_eq!(at(150), Some(Duration::from_millis(150)));
        assert_eq!(at(250), Some(Duration::from_millis(50)));
        assert_eq!(at(400), Some(Duration::from_millis(1)));
        let slow = latencies
            .iter()
            .filter(|(_, l)| *l > Duration::from_millis(1))
            .count();
        // Requests scheduled from 100 ms to 298 ms; the one at 299 ms is answered at
        // 300 ms as it would have been anyway.
        assert_eq!(
            slow, 199,
            "every request scheduled during the stall is slow"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pipeline_makes_the_wait_part_of_the_latency() {
        let start = Instant::now();
        let mut latencies = Vec::new();
        // One request in flight at a time and a server that takes 2 ms at 1000 req/s:
        // the backlog grows by 1 ms per request, and the latency shows it.
        drive(
            Pacing::Open { per_second: 1000.0 },
            1,
            start + Duration::from_millis(10),
            |_| async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok(1)
            },
            |c| {
                // Held back by the full pipeline: the server's backlog, not lateness.
                assert_eq!(c.late, Duration::ZERO);
                latencies.push(c.latency())
            },
        )
        .await;
        let ms: Vec<u64> = latencies.iter().map(|l| l.as_millis() as u64).collect();
        assert_eq!(ms, (0..10).map(|i| 2 + i).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_measures_from_the_actual_send() {
        let start = Instant::now();
        let mut latencies = Vec::new();
        let sent = drive(
            Pacing::Closed,
            2,
            start + Duration::from_millis(100),
            |_| async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(1)
            },
            |c| latencies.push(c.latency()),
        )
        .await;
        assert_eq!(sent, 40, "two in flight, 5 ms each, for 100 ms");
        assert!(latencies.iter().all(|l| *l == Duration::from_millis(5)));
    }
}
