use super::*;
use crate::rng::SplitMix64;
use crate::service::{Peer, Service};
use crate::storage::RamStorage;
use crate::testing::Unordered;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::vec::Vec as HeapVec;

type Ram = RamStorage<32768>;
type Sched = Scheduler<Ram, [u8; 4096], 8, 8, 8>;

fn config() -> Config {
    let mut config = Config {
        lease: Duration::from_secs(10),
        backoff_base: Duration::from_secs(1),
        backoff_cap: Duration::from_secs(8),
        checkpoint_every: 16,
        ..Config::default()
    };
    config.log.segment_size = 4096;
    config
}

fn at(millis: u64) -> Instant {
    Instant::from_millis(millis)
}

fn fresh() -> Sched {
    let storage = RamStorage::new(8, 512, 0xFF).unwrap();
    Sched::open(storage, [0; 4096], config(), at(0)).unwrap().0
}

/// Reopens after a crash: whatever was not committed may be lost.
fn reopen(scheduler: Sched, now: Instant) -> Sched {
    let (storage, buffer) = scheduler.into_parts();
    Sched::open(storage, buffer, config(), now).unwrap().0
}

fn new_job(payload: &[u8]) -> NewJob<'_> {
    NewJob {
        key: None,
        priority: 0,
        delay: Duration::ZERO,
        max_attempts: 3,
        payload,
    }
}

fn worker(index: u8) -> Peer {
    Peer {
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, index)), 7000),
        node: NodeId(u32::from(index)),
        incarnation: 1,
    }
}

fn send(scheduler: &mut Sched, now: Instant, from: Peer, message: &Message<'_>) {
    let mut buffer = [0u8; 1400];
    let len = encode(message, &mut buffer).unwrap();
    scheduler.handle_message(now, from, &buffer[..len]);
}

/// Every answer waiting, decoded (the test leaks the bytes so the messages may borrow them).
fn answers(scheduler: &mut Sched, now: Instant) -> HeapVec<Message<'static>> {
    let mut out = HeapVec::new();
    let mut buffer = [0u8; 1400];
    while let Some(transmit) = scheduler.poll_transmit(now, &mut buffer) {
        let bytes: &'static [u8] = buffer[..transmit.len].to_vec().leak();
        out.push(decode(bytes).unwrap());
    }
    out
}

#[test]
fn a_duplicate_submit_is_stored_once() {
    let mut scheduler = fresh();
    let keyed = NewJob {
        key: Some(7),
        ..new_job(b"a")
    };
    let first = scheduler.submit(at(0), &keyed).unwrap();
    let second = scheduler.submit(at(1), &keyed).unwrap();
    assert_eq!(second.job, first.job);
    assert!(!first.duplicate && second.duplicate);
    assert_eq!(scheduler.jobs().len(), 1);
    scheduler.commit().unwrap();
    let mut scheduler = reopen(scheduler, at(5));
    assert_eq!(scheduler.jobs().len(), 1);
    // Still recognised once finished and forgotten.
    let lease = scheduler.claim(at(5), NodeId(1)).unwrap().unwrap();
    scheduler.complete(at(6), lease.job, lease.token).unwrap();
    scheduler.commit().unwrap();
    let mut scheduler = reopen(scheduler, at(7));
    assert!(scheduler.jobs().is_empty());
    let third = scheduler.submit(at(8), &keyed).unwrap();
    assert_eq!(third.job, first.job);
    assert!(third.duplicate);
}

#[test]
fn claims_take_the_highest_priority_then_the_earliest_run_after_then_submission_order() {
    let mut scheduler = fresh();
    let job = |priority, delay_ms| NewJob {
        priority,
        delay: Duration::from_millis(delay_ms),
        ..new_job(b"x")
    };
    let low = scheduler.submit(at(0), &job(1, 0)).unwrap().job;
    let late = scheduler.submit(at(0), &job(5, 20)).unwrap().job;
    let early = scheduler.submit(at(0), &job(5, 10)).unwrap().job;
    let first = scheduler.submit(at(0), &job(5, 10)).unwrap().job;
    let future = scheduler.submit(at(0), &job(9, 1000)).unwrap().job;
    let mut order = HeapVec::new();
    while let Some(lease) = scheduler.claim(at(100), NodeId(1)).unwrap() {
        order.push(lease.job);
    }
    assert_eq!(order, [early, first, late, low]);
    assert_eq!(scheduler.job(future).unwrap().state, State::Pending);
}

#[test]
fn a_claim_is_durable_before_it_is_answered_and_carries_the_payload() {
    let mut scheduler = fresh();
    scheduler.submit(at(0), &new_job(b"payload")).unwrap();
    scheduler.commit().unwrap();
    send(
        &mut scheduler,
        at(1),
        worker(1),
        &Message::Claim { request: 9 },
    );
    assert!(
        answers(&mut scheduler, at(1)).is_empty(),
        "answered before the sync"
    );
    // A crash now: the claim was never answered, and the job is pending again.
    let (storage, buffer) = scheduler.into_parts();
    let mut scheduler = Sched::open(storage, buffer, config(), at(2)).unwrap().0;
    assert_eq!(scheduler.jobs()[0].state, State::Pending);
    send(
        &mut scheduler,
        at(3),
        worker(1),
        &Message::Claim { request: 9 },
    );
    scheduler.commit().unwrap();
    let got = answers(&mut scheduler, at(3));
    let [Message::Claimed {
        request,
        job,
        token,
        lease_ms,
        payload,
        ..
    }] = &got[..]
    else {
        panic!("expected one claim, got {got:?}");
    };
    assert_eq!((*request, *job, *lease_ms), (9, 1, 10_000));
    assert_eq!(*payload, b"payload");
    let scheduler = reopen(scheduler, at(4));
    assert_eq!(scheduler.jobs()[0].state, State::Running);
    assert_eq!(scheduler.jobs()[0].token, *token);
}

fn claimed(answer: &Message<'_>) -> (u64, u64) {
    match answer {
        Message::Claimed { job, token, .. } => (*job, *token),
        other => panic!("not a claim: {other:?}"),
    }
}

#[test]
fn a_retried_claim_gets_the_same_job_not_a_second_one() {
    let mut scheduler = fresh();
    for payload in [&b"a"[..], b"b"] {
        scheduler.submit(at(0), &new_job(payload)).unwrap();
    }
    scheduler.commit().unwrap();
    let claim = Message::Claim { request: 4 };
    send(&mut scheduler, at(1), worker(1), &claim);
    // The retry arrives before the first claim's sync: answered after it, the same claim.
    send(&mut scheduler, at(1), worker(1), &claim);
    scheduler.commit().unwrap();
    let got = answers(&mut scheduler, at(1));
    assert_eq!(got.len(), 2);
    assert_eq!(claimed(&got[0]), claimed(&got[1]));
    // A retry after the answer was lost: the same claim again.
    send(&mut scheduler, at(2), worker(1), &claim);
    scheduler.commit().unwrap();
    assert_eq!(
        claimed(&answers(&mut scheduler, at(2))[0]),
        claimed(&got[0])
    );
    let running = scheduler
        .jobs()
        .iter()
        .filter(|job| job.state == State::Running)
        .count();
    assert_eq!(running, 1);
    // The same request id from another worker is another claim.
    send(&mut scheduler, at(3), worker(2), &claim);
    scheduler.commit().unwrap();
    assert_ne!(
        claimed(&answers(&mut scheduler, at(3))[0]).0,
        claimed(&got[0]).0
    );
    // Once the first job is completed, the old request no longer names a running claim.
    let (job, token) = claimed(&got[0]);
    scheduler.complete(at(4), job, token).unwrap();
    scheduler.commit().unwrap();
    send(&mut scheduler, at(5), worker(1), &claim);
    scheduler.commit().unwrap();
    assert_eq!(
        answers(&mut scheduler, at(5)),
        [Message::NoJob { request: 4 }]
    );
}

#[test]
fn a_lease_that_ran_out_is_stale_before_the_expiry_timer_runs() {
    let mut scheduler = fresh();
    scheduler.submit(at(0), &new_job(b"x")).unwrap();
    let lease = scheduler.claim(at(0), NodeId(1)).unwrap().unwrap();
    scheduler.commit().unwrap();
    // No handle_timeout: the job is still marked running, but its lease is over.
    assert_eq!(
        scheduler.heartbeat(lease.expires, lease.job, lease.token),
        Err(Refusal::StaleToken)
    );
    assert_eq!(
        scheduler.complete(lease.expires, lease.job, lease.token),
        Err(Refusal::StaleToken)
    );
    let mut rng = SplitMix64::new(3);
    assert_eq!(
        scheduler.fail(lease.expires, lease.job, lease.token, &mut rng),
        Err(Refusal::StaleToken)
    );
    // Just before the end it still holds.
    let just_before = Instant::from_micros(lease.expires.as_micros() - 1);
    assert!(scheduler
        .complete(just_before, lease.job, lease.token)
        .is_ok());
}

#[test]
fn a_heartbeat_extends_the_lease_and_a_stale_token_is_rejected_after_expiry_and_reclaim() {
    let mut scheduler = fresh();
    let mut rng = SplitMix64::new(1);
    scheduler.submit(at(0), &new_job(b"x")).unwrap();
    let first = scheduler.claim(at(0), NodeId(1)).unwrap().unwrap();
    scheduler.commit().unwrap();
    assert_eq!(
        scheduler.heartbeat(at(8_000), first.job, first.token),
        Ok(at(18_000))
    );
    scheduler.handle_timeout(at(12_000), &mut rng);
    assert_eq!(scheduler.job(first.job).unwrap().state, State::Running);
    scheduler.handle_timeout(at(18_000), &mut rng);
    assert_eq!(scheduler.job(first.job).unwrap().state, State::Pending);
    assert_eq!(
        scheduler.heartbeat(at(18_001), first.job, first.token),
        Err(Refusal::StaleToken)
    );
    let second = scheduler.claim(at(18_002), NodeId(2)).unwrap().unwrap();
    scheduler.commit().unwrap();
    assert!(second.token > first.token);
    assert_eq!(
        scheduler.complete(at(18_003), first.job, first.token),
        Err(Refusal::StaleToken)
    );
    // Still stale after a restart.
    let mut scheduler = reopen(scheduler, at(0));
    assert_eq!(
        scheduler.heartbeat(at(1), first.job, first.token),
        Err(Refusal::StaleToken)
    );
    assert_eq!(scheduler.complete(at(1), second.job, second.token), Ok(()));
    assert_eq!(scheduler.stats().stale, 1);
}

#[test]
fn a_worker_that_stops_heartbeating_loses_the_job_at_expiry_and_the_next_worker_gets_a_higher_token(
) {
    let mut scheduler = fresh();
    let mut rng = SplitMix64::new(2);
    scheduler.submit(at(0), &new_job(b"x")).unwrap();
    send(
        &mut scheduler,
        at(0),
        worker(1),
        &Message::Claim { request: 1 },
    );
    scheduler.commit().unwrap();
    let Message::Claimed { token: old, .. } = answers(&mut scheduler, at(0))[0].clone() else {
        panic!("no claim");
    };
    assert_eq!(scheduler.poll_timeout(), Some(at(10_000)));
    send(
        &mut scheduler,
        at(9_000),
        worker(2),
        &Message::Claim { request: 2 },
    );
    assert!(matches!(
        answers(&mut scheduler, at(9_000))[..],
        [Message::NoJob { request: 2 }]
    ));
    scheduler.handle_timeout(at(10_000), &mut rng);
    assert_eq!(scheduler.stats().expired, 1);
    send(
        &mut scheduler,
        at(10_001),
        worker(2),
        &Message::Claim { request: 3 },
    );
    scheduler.commit().unwrap();
    let Message::Claimed {
        token: new,
        attempts,
        ..
    } = answers(&mut scheduler, at(10_001))[0].clone()
    else {
        panic!("no claim");
    };
    assert!(new > old);
    assert_eq!(attempts, 1, "an expired lease counts as an attempt");
    let complete = Message::Complete {
        request: 4,
        job: 1,
        token: old,
    };
    send(&mut scheduler, at(10_002), worker(1), &complete);
    assert!(matches!(
        answers(&mut scheduler, at(10_002))[..],
        [Message::Refused {
            reason: Refusal::StaleToken,
            ..
        }]
    ));
}

#[test]
fn a_failure_backs_off_within_bounds_then_the_job_runs_again() {
    let mut scheduler = fresh();
    let mut rng = SplitMix64::new(3);
    let id = scheduler
        .submit(
            at(0),
            &NewJob {
                max_attempts: 10,
                ..new_job(b"x")
            },
        )
        .unwrap()
        .job;
    let mut now = at(0);
    for attempt in 1..=6u32 {
        let lease = scheduler.claim(now, NodeId(1)).unwrap().unwrap();
        let Failed::Retry {
            at: retry,
            attempts,
        } = scheduler.fail(now, id, lease.token, &mut rng).unwrap()
        else {
            panic!("dead too early");
        };
        assert_eq!(attempts, attempt);
        let nominal = (1_000_000u64 << (attempt - 1)).min(8_000_000);
        let waited = retry.as_micros() - now.as_micros();
        assert!(
            waited >= nominal / 2 && waited <= nominal,
            "{waited} vs {nominal}"
        );
        let early = Instant::from_micros(retry.as_micros() - 1);
        assert_eq!(scheduler.claim(early, NodeId(1)), Ok(None));
        now = retry;
    }
    assert!(scheduler.claim(now, NodeId(1)).unwrap().is_some());
}

#[test]
fn the_last_attempt_makes_a_job_dead_and_a_retry_requeues_it() {
    let mut scheduler = fresh();
    let mut rng = SplitMix64::new(4);
    let id = scheduler
        .submit(
            at(0),
            &NewJob {
                max_attempts: 2,
                ..new_job(b"x")
            },
        )
        .unwrap()
        .job;
    let lease = scheduler.claim(at(0), NodeId(1)).unwrap().unwrap();
    assert!(matches!(
        scheduler.fail(at(0), id, lease.token, &mut rng),
        Ok(Failed::Retry { .. })
    ));
    let lease = scheduler.claim(at(60_000), NodeId(1)).unwrap().unwrap();
    assert_eq!(
        scheduler.fail(at(60_000), id, lease.token, &mut rng),
        Ok(Failed::Dead)
    );
    assert_eq!(scheduler.claim(at(999_999), NodeId(1)), Ok(None));
    scheduler.commit().unwrap();
    let mut scheduler = reopen(scheduler, at(0));
    assert_eq!(scheduler.job(id).unwrap().state, State::Dead);
    send(
        &mut scheduler,
        at(1),
        worker(1),
        &Message::List {
            request: 1,
            after: 0,
        },
    );
    let listed = answers(&mut scheduler, at(1));
    let Message::Listed { jobs, more, .. } = &listed[0] else {
        panic!("no list");
    };
    assert_eq!((&jobs[..], *more), (&[id][..], false));
    send(
        &mut scheduler,
        at(2),
        worker(1),
        &Message::Retry {
            request: 2,
            job: id,
        },
    );
    assert!(
        answers(&mut scheduler, at(2)).is_empty(),
        "answered before the sync"
    );
    scheduler.commit().unwrap();
    assert!(matches!(
        answers(&mut scheduler, at(2))[..],
        [Message::Done { request: 2, .. }]
    ));
    let lease = scheduler.claim(at(3), NodeId(1)).unwrap().unwrap();
    assert_eq!((lease.job, lease.attempts), (id, 0));
    assert_eq!(scheduler.requeue(at(4), id), Err(Refusal::NotDead));
}

#[test]
fn a_restart_grants_running_jobs_a_full_lease_from_the_open() {
    let mut scheduler = fresh();
    scheduler.submit(at(0), &new_job(b"x")).unwrap();
    let lease = scheduler.claim(at(0), NodeId(1)).unwrap().unwrap();
    scheduler.commit().unwrap();
    // The new process's clock starts near zero again.
    let mut scheduler = reopen(scheduler, at(3));
    let job = scheduler.job(lease.job).unwrap();
    assert_eq!((job.state, job.lease), (State::Running, at(10_003)));
    assert_eq!(scheduler.claim(at(10_002), NodeId(2)), Ok(None));
    assert_eq!(scheduler.complete(at(4), lease.job, lease.token), Ok(()));
}

#[test]
fn reclamation_keeps_the_log_bounded_over_a_long_run() {
    let mut scheduler = fresh();
    let mut rng = SplitMix64::new(5);
    let payload = [7u8; 100];
    for round in 0..3000u64 {
        let now = at(round);
        let id = scheduler.submit(now, &new_job(&payload)).unwrap().job;
        let lease = scheduler.claim(now, NodeId(1)).unwrap().unwrap();
        assert_eq!(lease.job, id);
        scheduler
            .with_payload(id, |bytes| assert_eq!(bytes, payload))
            .unwrap();
        scheduler.complete(now, id, lease.token).unwrap();
        scheduler.commit().unwrap();
        scheduler.handle_timeout(now, &mut rng);
        assert!(scheduler.log().free_segments() >= 1, "round {round}");
    }
    let scheduler = reopen(scheduler, at(0));
    assert!(scheduler.jobs().is_empty());
    assert_eq!(scheduler.next_token(), 3001);
}

#[test]
fn pending_and_dead_jobs_older_than_the_whole_log_keep_their_payloads() {
    let mut scheduler = fresh();
    let old = scheduler.submit(at(0), &new_job(b"old")).unwrap().job;
    let dead = scheduler
        .submit(
            at(0),
            &NewJob {
                priority: 2,
                max_attempts: 1,
                ..new_job(b"dead")
            },
        )
        .unwrap()
        .job;
    let lease = scheduler.claim(at(0), NodeId(1)).unwrap().unwrap();
    let mut rng = SplitMix64::new(6);
    assert_eq!(
        scheduler.fail(at(0), dead, lease.token, &mut rng),
        Ok(Failed::Dead)
    );
    scheduler.commit().unwrap();
    let payload = [1u8; 200];
    for round in 0..100u64 {
        let now = at(round + 1);
        let id = scheduler
            .submit(
                now,
                &NewJob {
                    priority: 1,
                    ..new_job(&payload)
                },
            )
            .unwrap()
            .job;
        let lease = scheduler.claim(now, NodeId(1)).unwrap().unwrap();
        scheduler.complete(now, id, lease.token).unwrap();
        if scheduler.commit().is_err() {
            panic!("round {round}");
        }
    }
    assert!(
        scheduler.log().first_live_epoch() > 1,
        "the log was never reclaimed"
    );
    let mut scheduler = reopen(scheduler, at(0));
    scheduler
        .with_payload(old, |bytes| assert_eq!(bytes, b"old"))
        .unwrap();
    scheduler
        .with_payload(dead, |bytes| assert_eq!(bytes, b"dead"))
        .unwrap();
    assert_eq!(scheduler.job(dead).unwrap().state, State::Dead);
    assert_eq!(scheduler.jobs().len(), 2);
}

#[test]
fn malformed_messages_are_counted_and_change_nothing() {
    let mut scheduler = fresh();
    scheduler.submit(at(0), &new_job(b"x")).unwrap();
    scheduler.commit().unwrap();
    for bytes in [&[][..], &[0xFF, 0xFF], &[2], &[2, 1, 0], &[99, 1, 2, 3]] {
        scheduler.handle_message(at(1), worker(1), bytes);
    }
    assert_eq!(scheduler.stats().malformed, 5);
    assert_eq!(scheduler.jobs()[0].state, State::Pending);
    assert!(answers(&mut scheduler, at(1)).is_empty());
}

#[test]
fn a_submit_is_answered_after_the_sync_and_refusals_at_once() {
    let mut scheduler = fresh();
    let submit = |request, max_attempts| Message::Submit {
        request,
        key: Some(3),
        priority: 0,
        delay_ms: 0,
        max_attempts,
        payload: b"hello",
    };
    send(&mut scheduler, at(0), worker(1), &submit(1, 0));
    assert!(matches!(
        answers(&mut scheduler, at(0))[..],
        [Message::Refused {
            request: 1,
            reason: Refusal::Invalid
        }]
    ));
    send(&mut scheduler, at(0), worker(1), &submit(2, 1));
    send(&mut scheduler, at(0), worker(1), &submit(3, 1));
    assert!(answers(&mut scheduler, at(0)).is_empty());
    scheduler.commit().unwrap();
    let got = answers(&mut scheduler, at(0));
    assert_eq!(got.len(), 2);
    assert!(got
        .iter()
        .all(|message| matches!(message, Message::Submitted { job: 1, .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn reopening_at_arbitrary_points_loses_no_job_and_tokens_never_go_backwards(
        ops in proptest::collection::vec((0u8..6, any::<u16>()), 1..120)
    ) {
        let mut scheduler = fresh();
        let mut rng = SplitMix64::new(9);
        // Jobs whose submit was committed and that were not completed durably.
        let mut durable: BTreeSet<u64> = BTreeSet::new();
        let mut staged: HeapVec<u64> = HeapVec::new();
        let mut completed: HeapVec<u64> = HeapVec::new();
        let mut leases: HeapVec<Lease> = HeapVec::new();
        let mut token_given = 0u64;
        let mut now = 0u64;
        for (op, value) in ops {
            now += u64::from(value % 4000);
            match op {
                0 => {
                    if let Ok(submitted) = scheduler.submit(at(now), &new_job(&value.to_le_bytes())) {
                        staged.push(submitted.job);
                    }
                }
                1 => {
                    if let Ok(Some(lease)) = scheduler.claim(at(now), NodeId(1)) {
                        leases.push(lease);
                    }
                }
                2 => {
                    if let Some(lease) = leases.pop() {
                        if scheduler.complete(at(now), lease.job, lease.token).is_ok() {
                            completed.push(lease.job);
                        }
                    }
                }
                3 => {
                    if let Some(lease) = leases.pop() {
                        let _ = scheduler.fail(at(now), lease.job, lease.token, &mut rng);
                    }
                }
                4 => {
                    scheduler.commit().unwrap();
                    durable.extend(staged.drain(..));
                    for job in completed.drain(..) {
                        durable.remove(&job);
                    }
                    token_given = token_given.max(scheduler.next_token() - 1);
                    scheduler.handle_timeout(at(now), &mut rng);
                }
                _ => {
                    scheduler = reopen(scheduler, at(u64::from(value)));
                    now = u64::from(value);
                    // An uncommitted completion may or may not have survived: its frame may
                    // have reached the storage (unsynced frames may be recovered).
                    for &job in &durable {
                        let finished = completed.contains(&job);
                        prop_assert!(finished || scheduler.job(job).is_some(), "job {} lost", job);
                    }
                    for job in completed.drain(..) {
                        if scheduler.job(job).is_none() {
                            durable.remove(&job);
                        }
                    }
                    staged.clear();
                    leases.clear();
                    prop_assert!(scheduler.next_token() > token_given);
                }
            }
        }
    }

    #[test]
    fn messages_round_trip_and_junk_never_panics(
        request in any::<u64>(),
        job in any::<u64>(),
        token in any::<u64>(),
        payload in proptest::collection::vec(any::<u8>(), 0..PAYLOAD_LEN_MAX),
        junk in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let messages = [
            Message::Claimed { request, job, token, lease_ms: token, attempts: 3, payload: &payload },
            Message::Fail { request, job, token },
            Message::Refused { request, reason: Refusal::StaleToken },
        ];
        let mut buffer = [0u8; 1400];
        for message in &messages {
            let len = encode(message, &mut buffer).unwrap();
            prop_assert_eq!(&decode(&buffer[..len]).unwrap(), message);
        }
        let _ = decode(&junk);
        let mut scheduler = fresh();
        scheduler.handle_message(at(0), worker(1), &junk);
    }
}

#[test]
fn messages_and_records_match_the_bytes_in_the_spec() {
    let mut buffer = [0u8; 64];
    let submit = Message::Submit {
        request: 1,
        key: Some(9),
        priority: 2,
        delay_ms: 0,
        max_attempts: 3,
        payload: b"hi",
    };
    let len = encode(&submit, &mut buffer).unwrap();
    assert_eq!(
        &buffer[..len],
        [0x00, 0x01, 0x01, 0x09, 0x02, 0x00, 0x03, 0x02, 0x68, 0x69]
    );
    let heartbeat = Message::Heartbeat {
        request: 1,
        job: 2,
        token: 300,
    };
    let len = encode(&heartbeat, &mut buffer).unwrap();
    assert_eq!(&buffer[..len], [0x05, 0x01, 0x02, 0xac, 0x02]);
    let record = Record::Submit(SubmitRecord {
        job: 1,
        key: None,
        priority: 0,
        delay_us: 0,
        max_attempts: 3,
        payload: b"hi",
    });
    let len = record.emit(&mut buffer).unwrap();
    assert_eq!(
        &buffer[..len],
        [0x01, 0x00, 0x00, 0x00, 0x03, 0x02, 0x68, 0x69]
    );
    let claim = Record::Claim(ClaimRecord {
        job: 1,
        worker: NodeId(4),
        token: 5,
        lease_us: 1_000_000,
    });
    let len = claim.emit(&mut buffer).unwrap();
    assert_eq!(&buffer[..len], [0x01, 0x04, 0x05, 0xc0, 0x84, 0x3d]);
}

#[test]
fn a_payload_over_the_configured_limit_is_refused() {
    let storage = RamStorage::new(8, 4096, 0xFF).unwrap();
    let config = Config {
        payload_max: 10,
        ..config()
    };
    let mut scheduler = Sched::open(storage, [0; 4096], config, at(0)).unwrap().0;
    assert!(scheduler.submit(at(0), &new_job(&[1; 10])).is_ok());
    assert_eq!(
        scheduler.submit(at(0), &new_job(&[1; 11])),
        Err(Refusal::TooLarge)
    );
}

#[test]
fn full_tables_refuse_cleanly() {
    let mut scheduler = fresh();
    for _ in 0..8 {
        scheduler.submit(at(0), &new_job(b"x")).unwrap();
    }
    assert_eq!(scheduler.submit(at(0), &new_job(b"x")), Err(Refusal::Full));
    assert_eq!(
        scheduler.submit(at(0), &new_job(&[0; PAYLOAD_LEN_MAX + 1])),
        Err(Refusal::TooLarge)
    );
    assert_eq!(scheduler.heartbeat(at(0), 99, 1), Err(Refusal::UnknownJob));
    // Eight claims wait for the sync; the ninth request is refused at once.
    for request in 0..9 {
        send(
            &mut scheduler,
            at(0),
            worker(1),
            &Message::Claim { request },
        );
    }
    assert!(matches!(
        answers(&mut scheduler, at(0))[..],
        [Message::Refused {
            request: 8,
            reason: Refusal::Busy
        }]
    ));
    scheduler.commit().unwrap();
    assert_eq!(answers(&mut scheduler, at(0)).len(), 8);
    assert_eq!(scheduler.jobs().len(), 8);
}

#[test]
fn a_release_never_reaches_the_medium_before_the_checkpoint_and_copies_that_justify_it() {
    // Regression (found by tests/tests/sim_queue_jobs.rs, seed 305 with a 4-segment log): the
    // release point of a checkpoint is usually the oldest unfinished job's SUBMIT, a frame
    // durable long ago, so the log applied the release at once and wrote its release frame
    // before the sync. Unsynced writes are independent: that frame could land while the
    // checkpoint and the SUBMIT copies made just before it did not, and recovery then started
    // past the only SUBMIT of a relocated job (its payload, or the whole job, was lost).
    type Small = Scheduler<Unordered, HeapVec<u8>, 8, 8, 8>;
    let config = Config {
        lease: Duration::from_secs(10),
        checkpoint_every: 64,
        log: log::Config {
            segment_size: Unordered::ERASE,
            ..log::Config::default()
        },
        ..Config::default()
    };
    let storage = Unordered::new(4);
    let mut scheduler = Small::open(storage.clone(), std::vec![0; 4096], config, at(0))
        .unwrap()
        .0;
    // Jobs that stay pending for the whole run (far in the future), submitted now and then, so
    // checkpoints relocate them and release the segments behind them.
    let mut kept: HeapVec<(u64, HeapVec<u8>)> = HeapVec::new();
    let mut durable_kept = 0;
    let mut checked = 0;
    for round in 0..80u64 {
        let now = at(round * 10);
        if round % 12 == 0 {
            let payload = std::format!("kept {round}").into_bytes();
            let job = NewJob {
                delay: Duration::from_secs(3600),
                ..new_job(&payload)
            };
            let id = scheduler.submit(now, &job).unwrap().job;
            kept.push((id, payload));
        }
        let filler = [round as u8; 300];
        let id = scheduler.submit(now, &new_job(&filler)).unwrap().job;
        let lease = scheduler.claim(now, NodeId(1)).unwrap().unwrap();
        assert_eq!(lease.job, id);
        scheduler.complete(now, id, lease.token).unwrap();
        storage.0.borrow_mut().syncs.clear();
        scheduler.commit().unwrap();
        // Power cut during any sync of the commit, landing one unsynced operation alone or all
        // but one: every job kept from earlier rounds must come back with its payload.
        let syncs = core::mem::take(&mut storage.0.borrow_mut().syncs);
        for image in &syncs {
            for cut in 0..image.pending.len() {
                for only in [true, false] {
                    let crashed = Unordered(std::rc::Rc::new(core::cell::RefCell::new(
                        image.crash(|index| (index == cut) == only),
                    )));
                    let mut recovered = Small::open(crashed, std::vec![0; 4096], config, now)
                        .unwrap()
                        .0;
                    for (id, payload) in &kept[..durable_kept] {
                        let read = recovered.with_payload(*id, |bytes| bytes.to_vec());
                        assert_eq!(
                            read.as_ref(),
                            Ok(payload),
                            "round {round}, operation {cut} of {} (only: {only}): job {id}",
                            image.pending.len()
                        );
                    }
                    checked += 1;
                }
            }
        }
        durable_kept = kept.len();
    }
    assert!(checked > 0);
}
