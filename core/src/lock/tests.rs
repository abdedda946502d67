use super::*;
use crate::rng::SplitMix64;
use crate::service::{Peer, Service};
use crate::storage::RamStorage;
use crate::testing::Unordered;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use proptest::prelude::*;
use std::vec::Vec as HeapVec;

type Ram = RamStorage<32768>;
type Flaky = crate::testing::Flaky<32768>;
type Server = LockServer<Ram, [u8; 2048], 4, 8>;
type Crashy = LockServer<Unordered, HeapVec<u8>, 4, 8>;

const TTL_MAX: Duration = Duration::from_secs(10);

fn config() -> Config {
    let mut config = Config {
        ttl_max: TTL_MAX,
        drift_ppm: 10_000,
        checkpoint_every: 8,
        ..Config::default()
    };
    config.log.segment_size = 4096;
    config
}

fn crashy_config() -> Config {
    let mut config = config();
    config.checkpoint_every = 5;
    config.log.segment_size = Unordered::ERASE;
    config
}

fn at(millis: u64) -> Instant {
    Instant::from_millis(millis)
}

fn fresh() -> Server {
    let storage = RamStorage::new(8, 512, 0xFF).unwrap();
    Server::open(storage, [0; 2048], config(), at(0)).unwrap().0
}

/// Reopens after a crash: whatever was not committed is lost (it sat in the lent buffer).
fn reopen(server: Server, now: Instant) -> Server {
    let (storage, buffer) = server.into_parts();
    Server::open(storage, buffer, config(), now).unwrap().0
}

/// Reopens the image a power cut left, landing only the unsynced operations `keep` chooses.
fn reopen_crashed(storage: &Unordered, keep: impl Fn(usize) -> bool, now: Instant) -> Crashy {
    let image = storage.0.borrow().crash(keep);
    let crashed = Unordered(std::rc::Rc::new(core::cell::RefCell::new(image)));
    Crashy::open(crashed, std::vec![0; 2048], crashy_config(), now)
        .unwrap()
        .0
}

fn client(index: u8) -> Peer {
    Peer {
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, index)), 7000),
        node: NodeId(u32::from(index)),
        incarnation: 1,
    }
}

fn send<S: Storage, B: AsMut<[u8]>>(
    server: &mut LockServer<S, B, 4, 8>,
    now: Instant,
    from: Peer,
    message: &Message<'_>,
) {
    let mut buffer = [0u8; 1400];
    let len = encode(message, &mut buffer).unwrap();
    server.handle_message(now, from, &buffer[..len]);
}

/// Every answer waiting, decoded (the test leaks the bytes so the messages may borrow them).
fn answers<S: Storage, B: AsMut<[u8]>>(
    server: &mut LockServer<S, B, 4, 8>,
    now: Instant,
) -> HeapVec<Message<'static>> {
    let mut out = HeapVec::new();
    let mut buffer = [0u8; 1400];
    while let Some(transmit) = server.poll_transmit(now, &mut buffer) {
        let bytes: &'static [u8] = buffer[..transmit.len].to_vec().leak();
        out.push(decode(bytes).unwrap());
    }
    out
}

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

#[test]
fn a_grant_is_durable_before_it_is_answered() {
    let storage = Unordered::new(6);
    let mut server = Crashy::open(storage.clone(), std::vec![0; 2048], crashy_config(), at(0))
        .unwrap()
        .0;
    let acquire = Message::Acquire {
        request: 7,
        name: b"db",
        ttl_ms: 5000,
    };
    send(&mut server, at(1), client(1), &acquire);
    assert!(
        answers(&mut server, at(1)).is_empty(),
        "answered before the sync"
    );
    // A crash now loses the grant: nobody was told, and the lock is free after the restart.
    let lost = reopen_crashed(&storage, |_| false, at(2));
    assert!(lost.locks().is_empty());
    server.commit().unwrap();
    let answered = answers(&mut server, at(1));
    assert_eq!(
        answered,
        [Message::Granted {
            request: 7,
            token: 1,
            lease_ms: 5000
        }]
    );
    // Once answered, no crash loses it.
    let recovered = reopen_crashed(&storage, |_| false, at(3));
    assert_eq!(recovered.locks().len(), 1);
    assert_eq!(recovered.locks()[0].token, 1);
    assert_eq!(recovered.locks()[0].holder, NodeId(1));
    assert!(recovered.next_token() > 1);
}

#[test]
fn tokens_strictly_increase_across_grants_and_across_a_crash_at_any_point() {
    let storage = Unordered::new(4);
    let mut server = Crashy::open(storage.clone(), std::vec![0; 2048], crashy_config(), at(0))
        .unwrap()
        .0;
    let names: [&[u8]; 3] = [b"a", b"bb", b"ccc"];
    let mut answered_max = 0u64;
    let mut checked = 0;
    for round in 0..60u64 {
        // Every lease has ended and its guard passed by the next round.
        let now = at(round * 2000);
        let name = names[(round % 3) as usize];
        let holder = NodeId(round as u32);
        let grant = server.acquire(now, name, holder, secs(1)).unwrap();
        assert!(grant.token > answered_max, "round {round}");
        if round % 2 == 0 {
            server.release(now, name, grant.token).unwrap();
        }
        storage.0.borrow_mut().syncs.clear();
        server.commit().unwrap();
        answered_max = grant.token;
        // A power cut during any sync of the commit, or after it, landing any one unsynced
        // operation alone or all but one: the next token is above every token answered before
        // the commit, and above this one once the commit returned.
        let syncs = core::mem::take(&mut storage.0.borrow_mut().syncs);
        for image in &syncs {
            for cut in 0..image.pending.len() {
                for only in [true, false] {
                    let crashed = Unordered(std::rc::Rc::new(core::cell::RefCell::new(
                        image.crash(|index| (index == cut) == only),
                    )));
                    let mut recovered =
                        Crashy::open(crashed, std::vec![0; 2048], crashy_config(), now)
                            .unwrap()
                            .0;
                    assert!(recovered.next_token() + 1 > answered_max, "round {round}");
                    let later = now.saturating_add(secs(30));
                    let again = recovered.acquire(later, name, NodeId(2), secs(1)).unwrap();
                    assert!(again.token >= answered_max, "round {round}");
                    checked += 1;
                }
            }
        }
        let after = reopen_crashed(&storage, |_| true, now);
        assert!(after.next_token() > answered_max, "round {round}");
        // A lock held when the power went is still held, by the same holder and token.
        let status = after.status(now, name);
        let held = (round % 2 == 1).then_some(holder);
        assert_eq!(status.holder, held, "round {round}");
        if held.is_some() {
            assert_eq!(status.token, grant.token, "round {round}");
        }
    }
    assert!(checked > 0);
    assert!(server.stats().checkpoints > 0);
}

#[test]
fn a_held_lock_is_refused_to_another_holder_until_ttl_times_one_plus_epsilon_after_the_last_renewal(
) {
    let mut server = fresh();
    let first = server.acquire(at(0), b"x", NodeId(1), secs(1)).unwrap();
    server.commit().unwrap();
    assert_eq!(
        server.acquire(at(500), b"x", NodeId(2), secs(1)),
        Err(Refusal::Held)
    );
    // Renewed at 900 ms for 1 s: the lease ends at 1900 ms, the guard at 1910 ms (ε = 1 %).
    assert_eq!(
        server.renew(at(900), b"x", first.token, secs(1)),
        Ok(at(1900))
    );
    assert_eq!(
        server.acquire(at(1900), b"x", NodeId(2), secs(1)),
        Err(Refusal::Held)
    );
    assert_eq!(
        server.acquire(at(1909), b"x", NodeId(2), secs(1)),
        Err(Refusal::Held)
    );
    let second = server.acquire(at(1910), b"x", NodeId(2), secs(1)).unwrap();
    assert!(second.token > first.token);
    assert_eq!(server.stats().held, 3);
    // The guard grows with the ttl: 8 s at 1 % is 80 ms past the lease.
    server.commit().unwrap();
    server.renew(at(2000), b"x", second.token, secs(8)).unwrap();
    assert_eq!(
        server.acquire(at(10_079), b"x", NodeId(3), secs(1)),
        Err(Refusal::Held)
    );
    assert!(server.acquire(at(10_080), b"x", NodeId(3), secs(1)).is_ok());
}

#[test]
fn a_stale_tokens_renew_and_release_are_refused() {
    let mut server = fresh();
    let first = server.acquire(at(0), b"x", NodeId(1), secs(1)).unwrap();
    // The lease has ended: a renewal with the still-current token is refused.
    assert_eq!(
        server.renew(at(1000), b"x", first.token, secs(1)),
        Err(Refusal::StaleToken)
    );
    let second = server.acquire(at(2000), b"x", NodeId(2), secs(1)).unwrap();
    assert_eq!(
        server.renew(at(2001), b"x", first.token, secs(1)),
        Err(Refusal::StaleToken)
    );
    assert_eq!(
        server.release(at(2001), b"x", first.token),
        Err(Refusal::StaleToken)
    );
    assert_eq!(
        server.release(at(2001), b"nope", second.token),
        Err(Refusal::StaleToken)
    );
    assert_eq!(server.status(at(2001), b"x").holder, Some(NodeId(2)));
    server.release(at(2002), b"x", second.token).unwrap();
    // A retry of that release (its answer lost) gets the same answer, and changes nothing.
    assert_eq!(server.release(at(2003), b"x", second.token), Ok(()));
    assert_eq!(server.stats().releases_repeated, 1);
    assert_eq!(server.stats().stale, 4);
    // Released: free at once, and durably so.
    server.commit().unwrap();
    let mut server = reopen(server, at(2004));
    assert!(server.locks().is_empty());
    assert!(server.acquire(at(2004), b"x", NodeId(3), secs(1)).is_ok());
}

#[test]
fn after_a_restart_no_lock_is_granted_before_one_max_ttl() {
    let mut server = fresh();
    let grant = server.acquire(at(0), b"x", NodeId(1), secs(1)).unwrap();
    server.commit().unwrap();
    // The restart comes long after the lease ended, but the server cannot know that.
    let open = at(60_000);
    let mut server = reopen(server, open);
    let guard = guarded(TTL_MAX, 10_000);
    assert_eq!(guard, Duration::from_millis(10_100));
    // The holder keeps its lock meanwhile, under the same token.
    let status = server.status(open, b"x");
    assert_eq!(
        (status.holder, status.token),
        (Some(NodeId(1)), grant.token)
    );
    assert_eq!(
        server.renew(open.saturating_add(secs(9)), b"x", grant.token, secs(1)),
        Ok(open.saturating_add(secs(10)))
    );
    let just_before = open.saturating_add(guard - Duration::from_micros(1));
    assert_eq!(
        server.acquire(just_before, b"x", NodeId(2), secs(1)),
        Err(Refusal::Held)
    );
    let later = server
        .acquire(open.saturating_add(guard), b"x", NodeId(2), secs(1))
        .unwrap();
    assert!(later.token > grant.token);
}

#[test]
fn the_holder_asking_again_gets_its_grant_back_renewed() {
    let mut server = fresh();
    let first = server.acquire(at(0), b"x", NodeId(1), secs(1)).unwrap();
    let again = server.acquire(at(500), b"x", NodeId(1), secs(1)).unwrap();
    assert_eq!(again.token, first.token);
    assert_eq!(again.expires, at(1500));
    assert_eq!(server.stats().grants, 1);
}

#[test]
fn bad_names_and_ttls_are_refused_and_a_full_table_evicts_only_ended_locks() {
    let mut server = fresh();
    assert_eq!(
        server.acquire(at(0), b"", NodeId(1), secs(1)),
        Err(Refusal::Invalid)
    );
    assert_eq!(
        server.acquire(at(0), &[b'n'; 33], NodeId(1), secs(1)),
        Err(Refusal::Invalid)
    );
    assert_eq!(
        server.acquire(at(0), b"x", NodeId(1), Duration::ZERO),
        Err(Refusal::Invalid)
    );
    assert_eq!(
        server.acquire(at(0), b"x", NodeId(1), TTL_MAX + Duration::from_millis(1)),
        Err(Refusal::Invalid)
    );
    for name in [b"a", b"b", b"c", b"d"] {
        server.acquire(at(0), name, NodeId(1), secs(1)).unwrap();
    }
    assert_eq!(
        server.acquire(at(1), b"e", NodeId(1), secs(1)),
        Err(Refusal::Full)
    );
    // Once a guard has passed its lock is released (recorded) to make room; replay of the log
    // therefore never needs more than LOCKS entries.
    server.renew(at(900), b"a", 1, secs(5)).unwrap();
    for (index, name) in [b"e", b"f", b"g"].into_iter().enumerate() {
        server
            .acquire(at(2000 + index as u64), name, NodeId(2), secs(1))
            .unwrap();
    }
    assert_eq!(
        server.acquire(at(2010), b"h", NodeId(2), secs(1)),
        Err(Refusal::Full)
    );
    server.commit().unwrap();
    let server = reopen(server, at(3000));
    let mut names: HeapVec<&[u8]> = server.locks().iter().map(|lock| &lock.name[..]).collect();
    names.sort();
    assert_eq!(names, [&b"a"[..], b"e", b"f", b"g"]);
}

#[test]
fn answers_wait_for_the_commit_and_a_held_refusal_says_when_to_retry() {
    let mut server = fresh();
    send(
        &mut server,
        at(0),
        client(1),
        &Message::Acquire {
            request: 1,
            name: b"x",
            ttl_ms: 1000,
        },
    );
    send(
        &mut server,
        at(0),
        client(2),
        &Message::Acquire {
            request: 2,
            name: b"x",
            ttl_ms: 1000,
        },
    );
    // The refusal needs no sync and says when to retry: the guard, 1010 ms.
    assert_eq!(
        answers(&mut server, at(0)),
        [Message::Refused {
            request: 2,
            reason: Refusal::Held,
            retry_ms: 1010
        }]
    );
    send(
        &mut server,
        at(10),
        client(3),
        &Message::Status {
            request: 3,
            name: b"x",
        },
    );
    assert!(answers(&mut server, at(10)).is_empty());
    server.commit().unwrap();
    let mut got = answers(&mut server, at(10));
    got.sort_by_key(|message| match message {
        Message::Granted { request, .. } | Message::State { request, .. } => *request,
        _ => u64::MAX,
    });
    assert_eq!(
        got,
        [
            Message::Granted {
                request: 1,
                token: 1,
                lease_ms: 990
            },
            Message::State {
                request: 3,
                holder: Some(1),
                token: 1,
                lease_ms: 990,
                free_ms: 1000
            }
        ]
    );
    assert_eq!(server.poll_timeout(), None);
}

#[test]
fn requests_beyond_the_pending_answers_are_refused_busy() {
    let mut server = fresh();
    let acquire = Message::Acquire {
        request: 0,
        name: b"x",
        ttl_ms: 1000,
    };
    send(&mut server, at(0), client(1), &acquire);
    for request in 1..=8 {
        let status = Message::Status {
            request,
            name: b"x",
        };
        send(&mut server, at(0), client(2), &status);
    }
    assert_eq!(
        answers(&mut server, at(0)),
        [Message::Refused {
            request: 8,
            reason: Refusal::Busy,
            retry_ms: 0
        }]
    );
    server.commit().unwrap();
    assert_eq!(answers(&mut server, at(0)).len(), 8);
}

#[test]
fn message_layouts_match_the_spec_examples() {
    let mut buffer = [0u8; 64];
    let acquire = Message::Acquire {
        request: 1,
        name: b"db",
        ttl_ms: 300,
    };
    let len = encode(&acquire, &mut buffer).unwrap();
    assert_eq!(&buffer[..len], [0x00, 0x01, 0x02, b'd', b'b', 0xac, 0x02]);
    let refused = Message::Refused {
        request: 1,
        reason: Refusal::Held,
        retry_ms: 5,
    };
    let len = encode(&refused, &mut buffer).unwrap();
    assert_eq!(&buffer[..len], [0x08, 0x01, 0x00, 0x05]);
    let grant = Record::Grant(GrantRecord {
        name: b"db",
        holder: 4,
        token: 5,
    });
    let len = grant.emit(&mut buffer).unwrap();
    assert_eq!(&buffer[..len], [0x02, b'd', b'b', 0x04, 0x05]);
}

#[test]
fn a_name_longer_than_the_limit_is_malformed() {
    let mut buffer = [0u8; 128];
    let long = [b'n'; NAME_LEN_MAX + 1];
    let message = Message::Status {
        request: 1,
        name: &long,
    };
    let len = encode(&message, &mut buffer).unwrap();
    assert_eq!(decode(&buffer[..len]), Err(Malformed));
    let mut server = fresh();
    server.handle_message(at(0), client(1), &buffer[..len]);
    assert_eq!(server.stats().malformed, 1);
    assert!(answers(&mut server, at(0)).is_empty());
}

fn name_strategy() -> impl Strategy<Value = HeapVec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=NAME_LEN_MAX)
}

fn refusal_strategy() -> impl Strategy<Value = Refusal> {
    prop_oneof![
        Just(Refusal::Held),
        Just(Refusal::Invalid),
        Just(Refusal::StaleToken),
        Just(Refusal::Full),
        Just(Refusal::Busy),
        Just(Refusal::Unavailable),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(
        variant in 0u8..9,
        request: u64,
        token: u64,
        millis: u64,
        other: u64,
        holder: Option<u32>,
        name in name_strategy(),
        reason in refusal_strategy(),
    ) {
        let message = match variant {
            0 => Message::Acquire { request, name: &name, ttl_ms: millis },
            1 => Message::Granted { request, token, lease_ms: millis },
            2 => Message::Renew { request, name: &name, token, ttl_ms: millis },
            3 => Message::Renewed { request, lease_ms: millis },
            4 => Message::Release { request, name: &name, token },
            5 => Message::Released { request },
            6 => Message::Status { request, name: &name },
            7 => Message::State { request, holder, token, lease_ms: millis, free_ms: other },
            _ => Message::Refused { request, reason, retry_ms: millis },
        };
        let mut buffer = [0u8; 128];
        let len = encode(&message, &mut buffer).unwrap();
        prop_assert_eq!(decode(&buffer[..len]), Ok(message));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        let mut server = fresh();
        let _ = decode(&bytes);
        server.handle_message(at(1), client(1), &bytes);
        server.commit().unwrap();
        let _ = answers(&mut server, at(2));
        server.handle_timeout(at(3), &mut SplitMix64::new(1));
        for kind in [KIND_GRANT, KIND_RELEASE] {
            let _ = Record::decode(kind, &bytes);
        }
        let mut index = record::Index::<4>::new();
        let _ = index.apply_checkpoint(&bytes);
    }
}

#[test]
fn a_failed_commit_answers_unavailable_and_refuses_every_later_write() {
    type FlakyServer = LockServer<Flaky, [u8; 2048], 4, 8>;
    let flaky = Flaky {
        inner: RamStorage::new(8, 512, 0xFF).unwrap(),
        fail_writes: false,
    };
    let mut server = FlakyServer::open(flaky, [0; 2048], config(), at(0))
        .unwrap()
        .0;
    let acquire = Message::Acquire {
        request: 1,
        name: b"x",
        ttl_ms: 1000,
    };
    send(&mut server, at(0), client(1), &acquire);
    server.log.storage_mut().fail_writes = true;
    assert!(server.commit().is_err());
    assert_eq!(
        answers(&mut server, at(0)),
        [Message::Refused {
            request: 1,
            reason: Refusal::Unavailable,
            retry_ms: 0
        }]
    );
    assert_eq!(
        server.acquire(at(5000), b"y", NodeId(2), secs(1)),
        Err(Refusal::Unavailable)
    );
    // A restart recovers: the grant never reached the medium, so the lock is free.
    let (mut storage, buffer) = server.into_parts();
    storage.fail_writes = false;
    let server = FlakyServer::open(storage, buffer, config(), at(6000))
        .unwrap()
        .0;
    assert!(server.locks().is_empty());
}

#[test]
fn close_makes_staged_grants_and_releases_durable() {
    let storage = Unordered::new(6);
    let (mut server, _) =
        Crashy::open(storage.clone(), std::vec![0; 2048], crashy_config(), at(0)).unwrap();
    let held = server
        .acquire(at(0), b"db", NodeId(4), Duration::from_secs(1))
        .unwrap();
    // Enough records for a checkpoint, so that close also releases the segments before it.
    for round in 0..6u8 {
        let name = [b'a' + round];
        let granted = server
            .acquire(at(0), &name, NodeId(5), Duration::from_secs(1))
            .unwrap();
        server.release(at(0), &name, granted.token).unwrap();
    }
    assert!(server.stats().checkpoints > 0);
    let next = server.next_token();
    server.close().unwrap();
    // A power cut now loses nothing: nothing unsynced is left to land or not.
    let reopened = reopen_crashed(&storage, |_| false, at(0));
    assert_eq!(reopened.next_token(), next);
    let locks: HeapVec<_> = reopened
        .locks()
        .iter()
        .map(|lock| (&lock.name[..], lock.token))
        .collect();
    assert_eq!(locks, [(&b"db"[..], held.token)]);
}

#[test]
fn acquire_at_least_raises_tokens_and_never_shortens_a_lease() {
    let mut server = fresh();
    // A new grant takes the floor when it is above the counter.
    let first = server
        .acquire_at_least(at(0), b"db", NodeId(4), secs(5), 40)
        .unwrap();
    assert_eq!(first.token, 40);
    assert_eq!(server.next_token(), 41);
    // The holder asking with a floor at or below its token: a renewal, same token.
    let same = server
        .acquire_at_least(at(100), b"db", NodeId(4), secs(1), 40)
        .unwrap();
    assert_eq!(same.token, 40);
    assert_eq!(
        same.expires,
        at(5_000),
        "a renewal never shortens the lease"
    );
    // Above it: granted again under the floor, the lease it had still standing.
    let raised = server
        .acquire_at_least(at(200), b"db", NodeId(4), secs(1), 70)
        .unwrap();
    assert_eq!(raised.token, 70);
    assert_eq!(raised.expires, at(5_000));
    assert_eq!(server.status(at(4_000), b"db").holder, Some(NodeId(4)));
    assert_eq!(
        server.acquire(at(4_000), b"db", NodeId(5), secs(1)),
        Err(Refusal::Held)
    );
    // Another client's floor does not get it the lock.
    assert_eq!(
        server.acquire_at_least(at(300), b"db", NodeId(5), secs(1), 500),
        Err(Refusal::Held)
    );
    // The old token is stale now; the raised one renews.
    assert_eq!(
        server.renew(at(300), b"db", 40, secs(1)),
        Err(Refusal::StaleToken)
    );
    assert!(server.renew(at(300), b"db", 70, secs(1)).is_ok());
    assert_eq!(
        server.acquire_at_least(at(300), b"x", NodeId(5), secs(1), FLOOR_MAX + 1),
        Err(Refusal::Invalid)
    );
    // Replay keeps the raised token and the counter above it.
    server.commit().unwrap();
    let server = reopen(server, at(10_000));
    assert_eq!(server.locks()[0].token, 70);
    assert_eq!(server.next_token(), 71);
}

#[test]
fn acquire_at_least_travels_on_the_wire() {
    let mut server = fresh();
    let message = Message::AcquireAtLeast {
        request: 5,
        name: b"db",
        ttl_ms: 1_000,
        floor: 9,
    };
    send(&mut server, at(0), client(1), &message);
    server.commit().unwrap();
    assert_eq!(
        answers(&mut server, at(0)),
        [Message::Granted {
            request: 5,
            token: 9,
            lease_ms: 1_000
        }]
    );
    let mut buffer = [0u8; 64];
    let len = encode(&message, &mut buffer).unwrap();
    assert_eq!(
        &buffer[..len],
        [0x09, 0x05, 0x02, b'd', b'b', 0xe8, 0x07, 0x09]
    );
}

#[test]
fn a_retried_release_gets_its_answer_again_and_a_stale_one_does_not() {
    let mut server = fresh();
    let first = server.acquire(at(0), b"db", NodeId(4), secs(1)).unwrap();
    server.commit().unwrap();
    let release = Message::Release {
        request: 9,
        name: b"db",
        token: first.token,
    };
    send(&mut server, at(10), client(4), &release);
    server.commit().unwrap();
    assert_eq!(
        answers(&mut server, at(10)),
        [Message::Released { request: 9 }]
    );
    // The answer was lost: the client sends the same request again, after another client got
    // the lock.
    let second = server.acquire(at(20), b"db", NodeId(5), secs(1)).unwrap();
    server.commit().unwrap();
    send(&mut server, at(30), client(4), &release);
    server.commit().unwrap();
    assert_eq!(
        answers(&mut server, at(30)),
        [Message::Released { request: 9 }]
    );
    assert_eq!(server.stats().releases_repeated, 1);
    assert_eq!(
        server.status(at(30), b"db").token,
        second.token,
        "nothing changed"
    );
    // A token whose lease ended without a release is still stale.
    let lapsed = server.acquire(at(0), b"x", NodeId(6), secs(1)).unwrap();
    server.commit().unwrap();
    let _ = server.acquire(at(3_000), b"x", NodeId(7), secs(1)).unwrap();
    server.commit().unwrap();
    assert_eq!(
        server.release(at(3_001), b"x", lapsed.token),
        Err(Refusal::StaleToken)
    );
}
