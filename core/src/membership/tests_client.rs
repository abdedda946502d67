//! The client query (`Members` / `MembersPage`): SPEC.md 12.2's golden bytes, paging through a
//! table larger than one datagram, and clients kept out of the table.

use super::*;
use crate::net::{MTU_DEFAULT, MTU_MIN};
use crate::rng::SplitMix64;
use crate::service::{Peer, Service};
use core::net::{IpAddr, Ipv4Addr};
use std::vec::Vec as HeapVec;

type Node = Membership<64, 0, 0>;

fn addr(index: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, index)), 7000)
}

fn ping(incarnation: u32) -> HeapVec<u8> {
    let mut buffer = [0u8; 64];
    let head = Head {
        incarnation,
        message: Message::Ping { seq: 1 },
        updates: 0,
    };
    let len = finish(&head, &mut buffer, HEAD_LEN_MAX).unwrap();
    buffer[..len].to_vec()
}

/// Node 1 at 10.0.0.1 that heard a ping from each of nodes 2 to `count` + 1.
fn node_with_members(count: u8) -> Node {
    let mut node = Node::new(Config::default(), NodeId(1), addr(1), 3, &[]);
    for index in 2..count + 2 {
        let peer = Peer {
            addr: addr(index),
            node: NodeId(u32::from(index)),
            incarnation: 1,
        };
        node.handle_message(Instant::from_millis(10), peer, &ping(1));
        // The ack.
        let mut buffer = [0u8; MTU_DEFAULT];
        let ack = node.poll_transmit(Instant::from_millis(10), &mut buffer);
        assert_eq!(ack.map(|ack| ack.to), Some(peer.addr));
    }
    node
}

fn client() -> Peer {
    Peer {
        addr: addr(200),
        node: NodeId(CLIENT_ID_BIT | 77),
        incarnation: 9,
    }
}

/// Asks `node` for the page after `after` through a buffer of `mtu` bytes: the records, and
/// whether more remain.
fn page(node: &mut Node, after: u32, mtu: usize) -> (HeapVec<MemberRecord>, bool) {
    let mut request = [0u8; 64];
    let len = members_request(42, NodeId(after), &mut request).unwrap();
    node.handle_message(Instant::from_millis(1000), client(), &request[..len]);
    let mut buffer = std::vec![0u8; mtu];
    let transmit = node
        .poll_transmit(Instant::from_millis(1500), &mut buffer)
        .expect("a page");
    assert_eq!(transmit.to, client().addr, "the page goes to the asker");
    assert!(transmit.len <= mtu);
    let mut records = HeapVec::new();
    let head = walk(&buffer[..transmit.len], 0, &mut |item| {
        if let Item::Record(record) = item {
            records.push(record);
        }
    })
    .unwrap();
    let Message::MembersPage {
        request,
        node: answering,
        records: count,
        more,
    } = head.message
    else {
        panic!("not a page: {head:?}");
    };
    assert_eq!((request, answering, head.updates), (42, NodeId(1), 0));
    assert_eq!(usize::from(count), records.len());
    (records, more)
}

#[test]
fn golden_client_query_matches_spec_section_12() {
    // SPEC.md 12.5: a client asks for the records after node 0, request 7.
    let mut buffer = [0u8; 64];
    let len = members_request(7, NodeId(0), &mut buffer).unwrap();
    assert_eq!(buffer[..len], [0x00, 0x06, 0x07, 0x00, 0x00]);
    // Node 1 (incarnation 3) answers with itself (alive, incarnation 3, no phi, not heard)
    // and node 2 (suspect at 5, phi 2.5, heard 1.2 s ago), both on port 7000; no more.
    let records = [
        MemberRecord {
            node: NodeId(1),
            address: Address::V4([10, 0, 0, 1], 7000),
            state: State::Alive,
            incarnation: 3,
            phi_milli: None,
            heard_ms: None,
        },
        MemberRecord {
            node: NodeId(2),
            address: Address::V4([10, 0, 0, 2], 7000),
            state: State::Suspect,
            incarnation: 5,
            phi_milli: Some(2500),
            heard_ms: Some(1200),
        },
    ];
    let mut buffer = [0u8; 128];
    let mut at = HEAD_LEN_MAX;
    for record in &records {
        at = put(record, &mut buffer, at, 128).unwrap();
    }
    let head = Head {
        incarnation: 3,
        message: Message::MembersPage {
            request: 7,
            node: NodeId(1),
            records: 2,
            more: false,
        },
        updates: 0,
    };
    let len = finish(&head, &mut buffer, at).unwrap();
    let expected = [
        0x03, 0x07, 0x07, 0x01, 0x02, 0x00, 0x00, // head
        0x01, 0x00, 0x0a, 0x00, 0x00, 0x01, 0xd8, 0x36, 0x00, 0x03, 0x00, 0x00, // node 1
        0x02, 0x00, 0x0a, 0x00, 0x00, 0x02, 0xd8, 0x36, 0x01, 0x05, 0x01, 0xc4, 0x13, 0x01, 0xb0,
        0x09, // node 2
    ];
    assert_eq!(buffer[..len], expected);
    let mut decoded = HeapVec::new();
    let checked = walk(&buffer[..len], 0, &mut |item| {
        if let Item::Record(record) = item {
            decoded.push(record);
        }
    });
    assert_eq!(checked, Ok(head));
    assert_eq!(decoded, records);
}

#[test]
fn non_canonical_pages_and_queries_are_malformed() {
    let mut buffer = [0u8; 128];
    let record = |node| MemberRecord {
        node: NodeId(node),
        address: Address::V4([10, 0, 0, 1], 7000),
        state: State::Alive,
        incarnation: 1,
        phi_milli: None,
        heard_ms: None,
    };
    let page = |buffer: &mut [u8], nodes: &[u32], more: bool| {
        let mut at = HEAD_LEN_MAX;
        for &node in nodes {
            at = put(&record(node), buffer, at, 128).unwrap();
        }
        let message = Message::MembersPage {
            request: 1,
            node: NodeId(1),
            records: nodes.len() as u8,
            more,
        };
        let head = Head {
            incarnation: 1,
            message,
            updates: 0,
        };
        finish(&head, buffer, at).unwrap()
    };
    let len = page(&mut buffer, &[1, 2], false);
    assert!(walk(&buffer[..len], 0, &mut |_| {}).is_ok());
    // Ids out of order or repeated, and "more" with an empty page, are malformed.
    let len = page(&mut buffer, &[2, 1], false);
    assert_eq!(walk(&buffer[..len], 0, &mut |_| {}), Err(Malformed));
    let len = page(&mut buffer, &[2, 2], false);
    assert_eq!(walk(&buffer[..len], 0, &mut |_| {}), Err(Malformed));
    let len = page(&mut buffer, &[], true);
    assert_eq!(walk(&buffer[..len], 0, &mut |_| {}), Err(Malformed));
    // A query carrying updates, and a trailing byte, are malformed.
    assert_eq!(
        walk(&[0x00, 0x06, 0x07, 0x00, 0x01], 0, &mut |_| {}),
        Err(Malformed)
    );
    assert_eq!(
        walk(&[0x00, 0x06, 0x07, 0x00, 0x00, 0x00], 0, &mut |_| {}),
        Err(Malformed)
    );
}

#[test]
fn a_client_pages_through_the_whole_table_and_never_enters_it() {
    for mtu in [MTU_MIN, MTU_DEFAULT] {
        let mut node = node_with_members(40);
        assert_eq!(node.members().len(), 40);
        let mut seen = HeapVec::new();
        let mut pages = 0;
        let mut after = 0;
        loop {
            let (records, more) = page(&mut node, after, mtu);
            pages += 1;
            assert!(!records.is_empty() || !more);
            for record in &records {
                assert!(record.node.0 > after);
                after = record.node.0;
                seen.push(*record);
            }
            if !more {
                break;
            }
        }
        let ids: HeapVec<u32> = seen.iter().map(|record| record.node.0).collect();
        assert_eq!(ids, (1..=41).collect::<HeapVec<u32>>(), "mtu {mtu}");
        assert_eq!(pages > 1, mtu == MTU_MIN, "mtu {mtu}: {pages} pages");
        let own = seen[0];
        assert_eq!(
            (own.address, own.incarnation, own.state),
            (addr(1).into(), 3, State::Alive)
        );
        assert_eq!((own.phi_milli, own.heard_ms), (None, None));
        // The others were heard once, 10 ms into the run; the page was built at 1.5 s.
        assert!(seen[1..]
            .iter()
            .all(|record| record.heard_ms == Some(1490) && record.state == State::Alive));
        // The client is in no record, and the node answers nobody else.
        assert_eq!(node.members().len(), 40);
        assert!(node.member(client().node).is_none());
        let mut buffer = [0u8; MTU_DEFAULT];
        assert!(node
            .poll_transmit(Instant::from_millis(1500), &mut buffer)
            .is_none());
    }
}

#[test]
fn a_client_id_is_never_taken_as_a_member_and_pages_sent_to_nodes_are_dropped() {
    let mut node = node_with_members(2);
    node.handle_message(Instant::from_millis(20), client(), &ping(1));
    assert!(node.member(client().node).is_none());
    assert_eq!(node.stats().malformed, 1);
    let mut buffer = [0u8; 64];
    let head = Head {
        incarnation: 1,
        message: Message::MembersPage {
            request: 1,
            node: NodeId(2),
            records: 0,
            more: false,
        },
        updates: 0,
    };
    let len = finish(&head, &mut buffer, HEAD_LEN_MAX).unwrap();
    let peer = Peer {
        addr: addr(2),
        node: NodeId(2),
        incarnation: 1,
    };
    node.handle_message(Instant::from_millis(20), peer, &buffer[..len]);
    assert_eq!(node.stats().malformed, 2);
    let mut rng = SplitMix64::new(1);
    node.handle_timeout(Instant::from_millis(30), &mut rng);
    assert!(node.member(client().node).is_none());
}
