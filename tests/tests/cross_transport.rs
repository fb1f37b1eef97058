//! One hub served at once over WebSocket, QUIC (native and WebTransport) and HTTP long-poll/SSE. Three users in
//! one group, each on a different transport, exchange messages; then users switch transports mid-conversation and
//! resume with `sub` + `since`: exactly the missed messages, then live ones, no gap, no duplicate; a resend by
//! `cid` after a switch is stored once.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use herald::core::HubConfig;
use herald::core::testkit::protocol::{TestTokens, text, unique};
use herald_tests::xport::{Peer, Servers, Via};
use serde_json::{Value, json};

/// The group's log as the test expects it, and what each user has received.
struct Conversation {
    group: String,
    /// (sender, cid) of seq i + 1.
    log: Vec<(String, String)>,
    /// The server's `mid` of each seq, from the sender's reply or the first delivery.
    mids: HashMap<u64, String>,
    /// Every seq each user received, over all of its connections, in order.
    received: HashMap<String, Vec<u64>>,
}

impl Conversation {
    fn new(group: String) -> Self {
        Self { group, log: Vec::new(), mids: HashMap::new(), received: HashMap::new() }
    }

    fn last_seq(&self) -> u64 {
        self.log.len() as u64
    }

    /// `p` sends a new message with `cid`: it gets the next seq.
    async fn send(&mut self, p: &mut Peer, cid: &str) -> u64 {
        let reply = p.ok(text(&self.group, cid, &format!("{cid} from {} over {}", p.user, p.via))).await;
        let seq = self.last_seq() + 1;
        assert_eq!(reply["seq"], json!(seq), "{} over {}: {reply}", p.user, p.via);
        assert_eq!(reply["dup"], json!(false), "{reply}");
        self.log.push((p.user.clone(), cid.to_owned()));
        self.mids.insert(seq, reply["mid"].as_str().expect("reply.mid").to_owned());
        seq
    }

    /// Checks that `got` is exactly the messages `range`, in order, with the expected senders, cids and mids,
    /// and records them as received by `user`.
    fn check(&mut self, user: &str, via: Via, got: &[Value], range: RangeInclusive<u64>) {
        let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().expect("message.seq")).collect();
        let want: Vec<u64> = range.collect();
        assert_eq!(seqs, want, "{user} over {via}: the messages received, by seq");
        for m in got {
            let seq = m["seq"].as_u64().expect("message.seq");
            let (from, cid) = &self.log[usize::try_from(seq - 1).expect("a small seq")];
            assert_eq!(m["from"], json!(from), "{user} over {via}: sender of {m}");
            assert_eq!(m["cid"], json!(cid), "{user} over {via}: cid of {m}");
            assert_eq!(m["channel"], json!(self.group), "{m}");
            let mid = m["mid"].as_str().expect("message.mid").to_owned();
            assert_eq!(self.mids.entry(seq).or_insert_with(|| mid.clone()), &mid, "{user}: mid of seq {seq}");
        }
        self.received.entry(user.to_owned()).or_default().extend(seqs);
    }

    /// `p` receives exactly the messages `range` live.
    async fn deliver(&mut self, p: &mut Peer, range: RangeInclusive<u64>) {
        let got = p.messages_through(&self.group, *range.end()).await;
        self.check(&p.user.clone(), p.via, &got, range);
    }

    /// `p`, a fresh connection, subscribes with `since`: the replay must be exactly `since + 1 ..= last seq`,
    /// before the reply, whose seq is the last seq.
    async fn resume(&mut self, p: &mut Peer, since: u64) {
        let reply = p.ok(json!({"type": "sub", "channel": self.group, "since": since})).await;
        let last = self.last_seq();
        assert_eq!(reply["seq"], json!(last), "{} over {}: the switch point is the last seq: {reply}", p.user, p.via);
        let replayed = p.take_buffered(&self.group);
        self.check(&p.user.clone(), p.via, &replayed, since + 1..=last);
    }

    /// `p` sends `cid` again (after a transport switch): the reply names the original message, nothing is stored
    /// or delivered.
    async fn resend(&mut self, p: &mut Peer, cid: &str, original: u64) {
        let reply = p.ok(text(&self.group, cid, "resent after switching transports")).await;
        assert_eq!(reply["dup"], json!(true), "{} over {}: {reply}", p.user, p.via);
        assert_eq!(reply["seq"], json!(original), "{reply}");
        assert_eq!(reply["mid"], json!(self.mids[&original]), "{reply}");
    }
}

async fn sub(p: &mut Peer, group: &str) {
    let reply = p.ok(json!({"type": "sub", "channel": group})).await;
    assert_eq!(reply["seq"], json!(0), "a new group is empty: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_on_three_transports_and_transport_switches_lose_and_repeat_nothing() {
    let tokens = TestTokens::default();
    let hub = herald_tests::memory_hub(&tokens, HubConfig::default());
    let servers = Servers::start(hub, tokens).await;
    let (a, b, c) = (unique("alice"), unique("bob"), unique("carol"));
    let mut conv = Conversation::new(format!("group:{}", unique("xport")));
    let group = conv.group.clone();

    // Leg 0: alice over WebSocket, bob over native QUIC, carol over long-poll.
    let mut alice = Peer::connect(&servers, Via::WebSocket, &a).await;
    let mut bob = Peer::connect(&servers, Via::Quic, &b).await;
    let mut carol = Peer::connect(&servers, Via::LongPoll, &c).await;
    alice.ok(json!({"type": "create", "channel": group, "members": [b, c]})).await;
    for p in [&mut alice, &mut bob, &mut carol] {
        sub(p, &group).await;
    }
    for round in 0..3 {
        for p in [&mut alice, &mut bob, &mut carol] {
            conv.send(p, &format!("{}-{round}", p.via)).await;
        }
    }
    for p in [&mut alice, &mut bob, &mut carol] {
        conv.deliver(p, 1..=9).await;
    }

    // Bob sends over QUIC, and his connection drops before he reads the reply or the message: it is stored (the
    // others receive it as seq 10), but bob cannot know. He has seen up to 9.
    bob.send_only(text(&group, "bob-lost-reply", "sent just before the drop")).await;
    conv.log.push((b.clone(), "bob-lost-reply".into()));
    conv.deliver(&mut alice, 10..=10).await;
    conv.deliver(&mut carol, 10..=10).await;
    drop(bob);
    let bob_seen = 9;

    // Messages keep flowing while bob is offline.
    conv.send(&mut alice, "alice-while-bob-away-1").await;
    conv.send(&mut carol, "carol-while-bob-away").await;
    conv.send(&mut alice, "alice-while-bob-away-2").await;
    conv.deliver(&mut alice, 11..=13).await;
    conv.deliver(&mut carol, 11..=13).await;

    // Leg 1: bob comes back over long-poll read as SSE: exactly 10..=13 replayed, then the resend of the message
    // whose reply he lost is recognised, then live messages.
    let mut bob = Peer::connect(&servers, Via::Sse, &b).await;
    conv.resume(&mut bob, bob_seen).await;
    conv.resend(&mut bob, "bob-lost-reply", 10).await;
    conv.send(&mut carol, "carol-live-1").await;
    let bob_over_sse = conv.send(&mut bob, "bob-over-sse").await;
    conv.send(&mut alice, "alice-live-1").await;
    for p in [&mut alice, &mut bob, &mut carol] {
        // Starting at 14: the resend was not delivered again.
        conv.deliver(p, 14..=16).await;
    }

    // Bob abandons the SSE session (no DELETE: as if the network went away); two messages while he is away.
    drop(bob);
    let bob_seen = 16;
    conv.send(&mut alice, "alice-while-bob-away-3").await;
    conv.send(&mut carol, "carol-while-bob-away-2").await;
    conv.deliver(&mut alice, 17..=18).await;
    conv.deliver(&mut carol, 17..=18).await;

    // Leg 2: bob comes back over WebTransport and resends what he sent over SSE (stored once), then live.
    let mut bob = Peer::connect(&servers, Via::WebTransport, &b).await;
    conv.resume(&mut bob, bob_seen).await;
    conv.resend(&mut bob, "bob-over-sse", bob_over_sse).await;
    conv.send(&mut bob, "bob-over-webtransport").await;
    conv.send(&mut alice, "alice-live-2").await;
    conv.send(&mut carol, "carol-live-2").await;
    for p in [&mut alice, &mut bob, &mut carol] {
        conv.deliver(p, 19..=21).await;
    }

    // Leg 3: carol leaves long-poll normally (DELETE) and comes back over native QUIC; alice goes from WebSocket
    // to long-poll at the same time. Bob, on WebTransport, keeps talking meanwhile.
    carol.close().await;
    alice.close().await;
    let both_seen = 21;
    conv.send(&mut bob, "bob-while-both-away").await;
    conv.deliver(&mut bob, 22..=22).await;
    let mut carol = Peer::connect(&servers, Via::Quic, &c).await;
    let mut alice = Peer::connect(&servers, Via::LongPoll, &a).await;
    conv.resume(&mut carol, both_seen).await;
    conv.resume(&mut alice, both_seen).await;
    conv.resend(&mut alice, "alice-live-2", 20).await;
    conv.send(&mut carol, "carol-over-quic").await;
    conv.send(&mut alice, "alice-over-longpoll").await;
    conv.send(&mut bob, "bob-last").await;
    for p in [&mut alice, &mut bob, &mut carol] {
        conv.deliver(p, 23..=25).await;
        p.assert_no_more_messages(&group).await;
    }

    // Over all their connections, every user received every message exactly once, in seq order.
    let all: Vec<u64> = (1..=conv.last_seq()).collect();
    for user in [&a, &b, &c] {
        assert_eq!(conv.received[user.as_str()], all, "{user}: every seq once, in order, across transports");
    }
    // The log holds each message once: the resends stored nothing.
    let history = bob.ok(json!({"type": "history", "channel": group, "limit": 200})).await;
    let stored: Vec<(String, String)> = history["messages"]
        .as_array()
        .expect("history.messages")
        .iter()
        .map(|m| (m["from"].as_str().unwrap_or_default().to_owned(), m["cid"].as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(stored, conv.log, "the stored log");
    assert_eq!(history["more"], json!(false));
}
