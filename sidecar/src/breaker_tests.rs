use super::*;

fn settings() -> Settings {
    Settings {
        workspaces: 3,
        window: Duration::from_secs(60),
        open_for: Duration::from_secs(30),
    }
}

fn ws(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

#[test]
fn one_workspace_failing_never_opens() {
    let mut b = Breaker::new(settings());
    let t0 = Instant::now();
    for i in 0..50 {
        assert_eq!(
            b.record(t0 + Duration::from_millis(i), ws(1), true, false),
            None
        );
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.admit(t0).0, Admit::Probe);
}

#[test]
fn distinct_workspaces_within_the_window_open_it() {
    let mut b = Breaker::new(settings());
    let t0 = Instant::now();
    assert_eq!(b.record(t0, ws(1), true, false), None);
    assert_eq!(
        b.record(t0 + Duration::from_secs(1), ws(2), true, false),
        None
    );
    assert_eq!(
        b.record(t0 + Duration::from_secs(2), ws(2), true, false),
        None
    );
    let t3 = t0 + Duration::from_secs(3);
    assert_eq!(
        b.record(t3, ws(3), true, false),
        Some(Transition::Opened { workspaces: 3 })
    );
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        b.admit(t3 + Duration::from_secs(10)).0,
        Admit::Defer(Duration::from_secs(20))
    );
    assert_eq!(
        b.open_remaining(t3 + Duration::from_secs(10)),
        Duration::from_secs(20)
    );
}

#[test]
fn failures_older_than_the_window_do_not_count() {
    let mut b = Breaker::new(settings());
    let t0 = Instant::now();
    b.record(t0, ws(1), true, false);
    b.record(t0 + Duration::from_secs(30), ws(2), true, false);
    assert_eq!(
        b.record(t0 + Duration::from_secs(61), ws(3), true, false),
        None
    );
    assert_eq!(b.state(), State::Closed);
    assert!(b
        .record(t0 + Duration::from_secs(62), ws(4), true, false)
        .is_some());
}

#[test]
fn key_problems_and_successes_never_open_it() {
    let mut b = Breaker::new(settings());
    let t0 = Instant::now();
    for i in 0..10 {
        assert_eq!(b.record(t0, ws(i), false, false), None);
    }
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn half_open_trial_success_closes() {
    let mut b = Breaker::new(Settings {
        workspaces: 1,
        ..settings()
    });
    let t0 = Instant::now();
    assert!(b.record(t0, ws(1), true, false).is_some());
    let t1 = t0 + Duration::from_secs(30);
    assert_eq!(b.admit(t1), (Admit::Trial, Some(Transition::HalfOpened)));
    assert_eq!(b.state(), State::HalfOpen);
    // Others wait while the trial is out; a late non-trial result changes nothing.
    assert_eq!(b.admit(t1).0, Admit::Defer(Duration::from_secs(5)));
    assert_eq!(b.record(t1, ws(9), true, false), None);
    assert_eq!(
        b.record(t1 + Duration::from_secs(1), ws(1), false, true),
        Some(Transition::Closed)
    );
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.admit(t1).0, Admit::Probe);
}

#[test]
fn half_open_trial_failure_reopens_for_a_full_interval() {
    let mut b = Breaker::new(Settings {
        workspaces: 2,
        ..settings()
    });
    let t0 = Instant::now();
    b.record(t0, ws(1), true, false);
    b.record(t0, ws(2), true, false);
    let t1 = t0 + Duration::from_secs(31);
    assert_eq!(b.admit(t1).0, Admit::Trial);
    assert_eq!(b.record(t1, ws(3), true, true), Some(Transition::Reopened));
    assert_eq!(
        b.admit(t1 + Duration::from_secs(1)).0,
        Admit::Defer(Duration::from_secs(29))
    );
}

#[test]
fn a_lost_trial_does_not_wedge_the_breaker() {
    let mut b = Breaker::new(Settings {
        workspaces: 1,
        ..settings()
    });
    let t0 = Instant::now();
    b.record(t0, ws(1), true, false);
    let t1 = t0 + Duration::from_secs(30);
    assert_eq!(b.admit(t1).0, Admit::Trial);
    assert!(matches!(
        b.admit(t1 + Duration::from_secs(29)).0,
        Admit::Defer(_)
    ));
    assert_eq!(b.admit(t1 + Duration::from_secs(30)).0, Admit::Trial);
}

#[test]
fn states_have_sql_spellings_and_gauges() {
    assert_eq!(State::Closed.as_str(), "closed");
    assert_eq!(State::HalfOpen.as_str(), "half_open");
    assert_eq!(State::Open.as_str(), "open");
    assert_eq!(
        [
            State::Closed.gauge(),
            State::HalfOpen.gauge(),
            State::Open.gauge()
        ],
        [0, 1, 2]
    );
}
