//! The simulated fleet of the replay: instances that are requested, become ready a cold start
//! later, and are stopped; cost is counted from request to stop.

/// One simulated instance (times in seconds from the start of the trace).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Instance {
    requested: f64,
    ready: f64,
}

/// A fleet of identical instances with a fixed cold start.
#[derive(Debug, Clone)]
pub struct SimFleet {
    cold_start: f64,
    running: Vec<Instance>,
    cost_seconds: f64,
}

impl SimFleet {
    /// An empty fleet whose instances take `cold_start` seconds to become ready.
    pub fn new(cold_start: f64) -> Self {
        Self {
            cold_start,
            running: Vec::new(),
            cost_seconds: 0.0,
        }
    }

    /// A fleet of `count` instances that are ready at time 0, requested one cold start before.
    pub fn warm(cold_start: f64, count: usize) -> Self {
        let mut fleet = Self::new(cold_start);
        fleet.scale_to(count, -cold_start);
        fleet
    }

    /// Instances running or booting.
    pub fn count(&self) -> usize {
        self.running.len()
    }

    /// Instances ready to serve at time `t`.
    pub fn ready_at(&self, t: f64) -> usize {
        self.running.iter().filter(|i| i.ready <= t).count()
    }

    /// Request or stop instances at time `t` so that `n` run; booting (newest) instances are
    /// stopped first.
    pub fn scale_to(&mut self, n: usize, t: f64) {
        while self.running.len() < n {
            self.running.push(Instance {
                requested: t,
                ready: t + self.cold_start,
            });
        }
        if self.running.len() > n {
            for stopped in self.take_newest(self.running.len() - n) {
                self.cost_seconds += (t - stopped.requested).max(0.0);
            }
        }
    }

    /// Stop everything at time `t` and return the total cost in instance-minutes.
    pub fn close(mut self, t: f64) -> f64 {
        let n = self.running.len();
        self.scale_to(0, t);
        debug_assert_eq!(self.running.len(), 0, "closed {n}");
        self.cost_seconds / 60.0
    }

    fn take_newest(&mut self, count: usize) -> Vec<Instance> {
        // Stable order: latest ready time last, so the newest (booting first) go first.
        self.running.sort_by(|a, b| a.ready.total_cmp(&b.ready));
        let keep = self.running.len() - count.min(self.running.len());
        self.running.split_off(keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_runs_from_request_to_stop_and_readiness_waits_for_the_cold_start() {
        let mut fleet = SimFleet::new(120.0);
        fleet.scale_to(2, 0.0);
        assert_eq!(fleet.ready_at(60.0), 0);
        assert_eq!(fleet.ready_at(120.0), 2);
        fleet.scale_to(1, 180.0);
        assert_eq!(fleet.close(600.0), (180.0 + 600.0) / 60.0);
    }
}
