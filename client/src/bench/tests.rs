//! The load tool end to end at a tiny, bounded scale against an in-process relay: a
//! correctness test of its bookkeeping (no timing is asserted).

use std::time::Duration;

use clap::Parser;

use super::*;

/// Every run here is bounded by this.
const LIMIT: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

async fn run_tiny(options: &str) -> Report {
    let argv = std::iter::once("bench").chain(options.split_whitespace());
    let args = Cli::try_parse_from(argv).expect("options parse").args;
    tokio::time::timeout(LIMIT, run(&args, Target::InProcess))
        .await
        .expect("the run ended in time")
        .expect("the run worked")
}

fn kind(report: &Report, kind: Kind) -> &KindReport {
    report.kinds.iter().find(|k| k.kind == kind).expect("kind reported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_is_delivered_and_accounted_for() {
    // 20 connections in 2 rooms of 10; connections 0-3 send, 2 in each room.
    let report = run_tiny(
        "--in-process --connections 20 --rooms 2 --senders 4 --kind broadcast,barrage,command \
         --rate 300 --duration 1s --per-endpoint 8",
    )
    .await;
    assert_eq!(report.connect.logged_in, 20, "{:?}", report.connect.failures);
    assert_eq!(report.connect.endpoints, 3);
    assert!(report.connect.settled);
    assert_eq!((report.lost, report.duplicates), (0, 0), "{}", report.human());
    assert!(report.ok());
    assert_eq!(report.kinds.len(), 3);
    for k in &report.kinds {
        assert!(k.sent > 0, "{k:?}");
        // No frequency limits in-process: every send has its result.
        let accounted = k.accepted + k.refused.values().sum::<u64>() + k.timeouts + k.errors;
        assert_eq!(accounted, k.sent, "{k:?}");
        let d = &k.delivery;
        // Every accepted message is for the 9 other members of the sender's room.
        assert_eq!(d.expected, k.accepted * 9, "{k:?}");
        assert_eq!(d.delivered + d.missing, d.expected + d.extra, "{k:?}");
        assert_eq!(k.latency.count, d.delivered, "{k:?}");
    }
    for reliable in [Kind::Broadcast, Kind::Command] {
        let k = kind(&report, reliable);
        assert_eq!(k.accepted, k.sent, "{k:?}");
        assert_eq!((k.delivery.delivered, k.lost, k.delivery.extra), (k.delivery.expected, 0, 0));
    }
    let barrage = kind(&report, Kind::Barrage);
    assert_eq!(barrage.dropped, barrage.delivery.missing);
    assert_eq!(report.foreign_messages, 0);
    assert!(report.rooms_closed.is_empty() && report.disconnected == 0, "{}", report.human());
    let counters = report.server.counters.as_ref().expect("in-process counters");
    assert_eq!(counters.broadcasts, kind(&report, Kind::Broadcast).accepted);
    assert_eq!(counters.broadcast_deliveries, kind(&report, Kind::Broadcast).delivery.expected);
    assert_eq!(counters.logins, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_to_one_member_reach_that_member() {
    let report = run_tiny(
        "--in-process --connections 6 --rooms 1 --senders 2 --kind command --command-to one \
         --rate 200 --duration 500ms",
    )
    .await;
    assert!(report.ok(), "{}", report.human());
    let k = kind(&report, Kind::Command);
    assert!(k.accepted > 0);
    // Each command goes to exactly one other member.
    assert_eq!((k.delivery.expected, k.delivery.delivered), (k.accepted, k.accepted));
}

#[tokio::test]
async fn options_out_of_bounds_are_refused() {
    for bad in [
        "--connections 0",
        "--connections 10002",
        "--connections 4 --rooms 5",
        "--connections 4 --senders 5",
        "--payload 15",
        "--payload 1025",
        "--rate 0",
        "--duration 11m",
    ] {
        let argv = std::iter::once("bench").chain(bad.split_whitespace());
        let args = Cli::try_parse_from(argv).expect("options parse").args;
        assert!(validate(&args).is_err(), "{bad} was accepted");
    }
}

#[test]
fn spread_puts_senders_on_the_first_relay_and_receivers_round_robin() {
    // 1 -> 1 over two relays: the sender on the first, the receiver on the second.
    assert_eq!((node_of(0, 1, 2), node_of(1, 1, 2)), (0, 1));
    // 1 -> 999 over three relays: 333 receivers on each.
    let mut per_node = [0; 3];
    for conn in 1..1000 {
        per_node[node_of(conn, 1, 3)] += 1;
    }
    assert_eq!(per_node, [333, 333, 333]);
    // Several senders all on the first; one relay takes everything.
    assert!((0..4).all(|conn| node_of(conn, 4, 3) == 0));
    assert!((0..10).all(|conn| node_of(conn, 1, 1) == 0));
}

#[tokio::test]
async fn spread_needs_external_relays_and_a_pid_per_relay() {
    for bad in ["--spread --in-process", "--server-pid 1,2"] {
        let argv = std::iter::once("bench").chain(bad.split_whitespace());
        let args = Cli::try_parse_from(argv).expect("options parse").args;
        assert!(validate(&args).is_err(), "{bad} was accepted");
    }
    let argv = ["bench", "--spread", "--server-pid", "1,2,3"];
    let args = Cli::try_parse_from(argv).expect("options parse").args;
    assert_eq!(args.server_pid, [1, 2, 3]);
    assert!(validate(&args).is_ok());
}
