//! When a minute is complete: the rule the live driver hands minutes to the brain by.
//!
//! A minute is complete once every live proxy of the region has reported past its end, or once
//! the lateness bound after its end has passed. A proxy is live while membership (SWIM, when the
//! forecaster runs it) says it is alive, or while it reported within the silence bound (proxies
//! send a sketch every interval, empty ones included, so a quiet proxy still says how far it has
//! reported). A due minute that no sketch covers at all (the store's
//! coverage of the minute) is *absent* — missing data, not zero demand: the brain is not told it
//! was quiet.
//!
//! Pure functions of node time and the proxies' progress; the driver reads the progress from the
//! store.

/// How far one proxy has reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeProgress {
    pub node: String,
    /// End (node time, unix ms) of the latest interval it reported (0: never).
    pub reported_through_ms: u64,
    /// Membership counts it alive (false without membership).
    pub member_alive: bool,
}

/// The rule's two bounds, in node milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletenessRule {
    /// How long after a minute's end the driver waits for proxies still to report it.
    pub lateness_ms: u64,
    /// A proxy that has not reported for this long is not waited for.
    pub silent_after_ms: u64,
}

/// What the driver may do with one minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinuteState {
    /// Not complete yet: wait.
    Open,
    /// Complete, and at least one sketch covers it: observe it (zero where nothing was sent).
    Complete,
    /// Due, but no sketch covers it: missing data.
    Absent,
}

impl CompletenessRule {
    /// Whether `node` is live at `now_ms`: membership counts it alive, or it reported within the
    /// silence bound.
    pub fn is_live(&self, node: &NodeProgress, now_ms: u64) -> bool {
        node.member_alive || node.reported_through_ms + self.silent_after_ms >= now_ms
    }

    /// The state of the minute starting at `minute_start_ms` at node time `now_ms`; `covered`:
    /// whether any sketch of the minute was stored.
    pub fn state(
        &self,
        minute_start_ms: u64,
        now_ms: u64,
        nodes: &[NodeProgress],
        covered: bool,
    ) -> MinuteState {
        let end = minute_start_ms + 60_000;
        if now_ms < end {
            return MinuteState::Open;
        }
        let late = now_ms >= end + self.lateness_ms;
        let live: Vec<&NodeProgress> = nodes.iter().filter(|n| self.is_live(n, now_ms)).collect();
        let all_live_past = !live.is_empty() && live.iter().all(|n| n.reported_through_ms >= end);
        match (all_live_past || late, covered) {
            (false, _) => MinuteState::Open,
            (true, true) => MinuteState::Complete,
            (true, false) => MinuteState::Absent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: CompletenessRule = CompletenessRule {
        lateness_ms: 30_000,
        silent_after_ms: 60_000,
    };

    fn node(name: &str, through: u64) -> NodeProgress {
        NodeProgress {
            node: name.into(),
            reported_through_ms: through,
            member_alive: false,
        }
    }

    #[test]
    fn a_minute_is_complete_once_every_live_proxy_reported_past_it() {
        let m = 600_000;
        // One proxy is past the minute, the other not yet: wait.
        let nodes = [node("a", m + 60_000), node("b", m + 50_000)];
        assert_eq!(RULE.state(m, m + 61_000, &nodes, true), MinuteState::Open);
        let nodes = [node("a", m + 60_000), node("b", m + 60_000)];
        assert_eq!(
            RULE.state(m, m + 61_000, &nodes, true),
            MinuteState::Complete
        );
        // Still running: never complete.
        assert_eq!(RULE.state(m, m + 59_000, &nodes, true), MinuteState::Open);
    }

    #[test]
    fn a_late_proxy_is_waited_for_only_up_to_the_lateness_bound() {
        let m = 600_000;
        let nodes = [node("a", m + 70_000), node("b", m + 50_000)];
        assert_eq!(RULE.state(m, m + 89_000, &nodes, true), MinuteState::Open);
        assert_eq!(
            RULE.state(m, m + 90_000, &nodes, true),
            MinuteState::Complete
        );
    }

    #[test]
    fn a_silent_proxy_is_not_waited_for() {
        let m = 600_000;
        // b last reported two minutes before: it is not live, a alone decides.
        let nodes = [node("a", m + 60_000), node("b", m - 60_000)];
        assert_eq!(
            RULE.state(m, m + 61_000, &nodes, true),
            MinuteState::Complete
        );
    }

    #[test]
    fn a_proxy_membership_counts_alive_is_waited_for_until_the_lateness_bound() {
        let m = 600_000;
        // b has not reported for two minutes, but membership says it is alive: it may be
        // sending late, so the minute waits for it, up to the lateness bound.
        let mut b = node("b", m - 60_000);
        b.member_alive = true;
        let nodes = [node("a", m + 60_000), b];
        assert_eq!(RULE.state(m, m + 61_000, &nodes, true), MinuteState::Open);
        assert_eq!(
            RULE.state(m, m + 90_000, &nodes, true),
            MinuteState::Complete
        );
    }

    #[test]
    fn a_minute_nobody_reported_is_absent_not_quiet() {
        let m = 600_000;
        let nodes = [node("a", m + 10_000)];
        assert_eq!(RULE.state(m, m + 61_000, &nodes, false), MinuteState::Open);
        assert_eq!(
            RULE.state(m, m + 95_000, &nodes, false),
            MinuteState::Absent
        );
        assert_eq!(RULE.state(m, m + 95_000, &[], false), MinuteState::Absent);
    }
}
