//! The in-process collectives: results against sums and concatenations written out here, the
//! same bits on every rank, and failures instead of hangs when a rank dies, hangs or calls a
//! different collective.

use orrery_parallel::{Collective, CollectiveError, InProcessComm, InProcessGroup};
use std::time::{Duration, Instant};

/// Runs `body(comm)` on one thread per rank and returns the results in rank order.
fn on_ranks<T: Send>(comms: Vec<InProcessComm>, body: impl Fn(InProcessComm) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = comms.into_iter().map(|c| s.spawn(|| body(c))).collect();
        handles.into_iter().map(|h| h.join().expect("rank thread panicked")).collect()
    })
}

/// Rank r's values: chosen so that the order of the additions changes the float result.
fn values(rank: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| if rank.is_multiple_of(2) { 1e8 * (i as f32 + 1.0) } else { 1.0 + rank as f32 * 0.37 + i as f32 })
        .collect()
}

#[test]
fn collectives_give_the_rank_order_results_on_every_rank() {
    for size in [2, 3, 4] {
        let n = 6 * size;
        let results = on_ranks(InProcessGroup::ranks(size), |mut c| {
            let r = c.rank();
            let mut sum = values(r, n);
            c.all_reduce_sum(&mut sum).unwrap();
            let gathered = c.all_gather(&vec![r as f32; r + 1]).unwrap();
            let mine: Vec<f32> = (0..n).map(|i| (r * 1000 + i) as f32).collect();
            let exchanged = c.all_to_all(&mine).unwrap();
            let mut b = if r == size - 1 { vec![7.0, 8.0, 9.0] } else { vec![0.0] };
            c.broadcast(&mut b, size - 1).unwrap();
            c.barrier().unwrap();
            (sum, gathered, exchanged, b)
        });
        // The sum, added in rank order exactly as written here.
        let want: Vec<f32> = (0..n)
            .map(|i| {
                let mut s = values(0, n)[i];
                for r in 1..size {
                    s += values(r, n)[i];
                }
                s
            })
            .collect();
        let gathered: Vec<f32> = (0..size).flat_map(|r| vec![r as f32; r + 1]).collect();
        let part = n / size;
        for (r, (sum, g, x, b)) in results.iter().enumerate() {
            assert_eq!(
                sum.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "size {size}, rank {r}"
            );
            assert_eq!(g, &gathered);
            let expect: Vec<f32> =
                (0..size).flat_map(|src| (r * part..(r + 1) * part).map(move |i| (src * 1000 + i) as f32)).collect();
            assert_eq!(x, &expect, "all_to_all on rank {r} of {size}");
            assert_eq!(b, &[7.0, 8.0, 9.0]);
        }
    }
}

#[test]
fn many_rounds_never_overwrite_a_contribution_before_everyone_read_it() {
    let results = on_ranks(InProcessGroup::ranks(4), |mut c| {
        let mut last = 0.0;
        for round in 0..500 {
            let mut x = vec![(c.rank() + round) as f32];
            c.all_reduce_sum(&mut x).unwrap();
            assert_eq!(x[0], (4 * round + 6) as f32, "round {round}");
            last = x[0];
        }
        last
    });
    assert!(results.iter().all(|&v| v == (4 * 499 + 6) as f32));
}

#[test]
fn a_rank_that_dies_fails_the_others_naming_it() {
    let started = Instant::now();
    let results = on_ranks(InProcessGroup::with_timeout(3, Duration::from_secs(30)), |mut c| {
        let mut x = vec![1.0];
        c.all_reduce_sum(&mut x).unwrap();
        if c.rank() == 1 {
            // The rank's work fails: its handle is dropped without another collective.
            return Ok(());
        }
        c.all_reduce_sum(&mut x)
    });
    for r in [0, 2] {
        match &results[r] {
            Err(CollectiveError::RankLost { rank: 1, me, .. }) => assert_eq!(*me, r),
            other => panic!("rank {r}: {other:?}"),
        }
        assert!(results[r].as_ref().unwrap_err().to_string().contains("rank 1 of 3 was lost"));
    }
    assert!(started.elapsed() < Duration::from_secs(5), "failed fast, not at the timeout");
}

#[test]
fn a_panicking_rank_is_reported_as_such() {
    let mut comms = InProcessGroup::with_timeout(2, Duration::from_secs(30));
    let mut survivor = comms.remove(0);
    let doomed = comms.remove(0);
    let panicked = std::thread::spawn(move || {
        let _held = doomed;
        panic!("a kernel failed");
    })
    .join();
    assert!(panicked.is_err());
    let err = survivor.barrier().unwrap_err();
    assert!(matches!(&err, CollectiveError::RankLost { rank: 1, reason, .. } if reason.contains("panicked")), "{err}");
}

#[test]
fn a_hanging_rank_times_the_others_out_naming_it() {
    let timeout = Duration::from_millis(200);
    let results = on_ranks(InProcessGroup::with_timeout(2, timeout), |mut c| {
        if c.rank() == 1 {
            std::thread::sleep(Duration::from_millis(600));
            return (Ok(()), Duration::ZERO);
        }
        let t = Instant::now();
        (c.barrier(), t.elapsed())
    });
    let (result, waited) = &results[0];
    match result {
        Err(CollectiveError::Timeout { waiting_for, .. }) => assert_eq!(waiting_for, &[1]),
        other => panic!("{other:?}"),
    }
    assert!(*waited >= timeout && *waited < Duration::from_millis(550), "{waited:?}");
}

#[test]
fn ranks_calling_different_collectives_fail_instead_of_mixing_data() {
    let results = on_ranks(InProcessGroup::with_timeout(2, Duration::from_secs(30)), |mut c| {
        if c.rank() == 0 {
            c.all_gather(&[1.0]).map(|_| ())
        } else {
            c.barrier()
        }
    });
    assert!(matches!(results[0], Err(CollectiveError::Mismatch { rank: 1, other: "barrier", .. })), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(CollectiveError::Mismatch { rank: 0, other: "all_gather", .. })),
        "{:?}",
        results[1]
    );
}

#[test]
fn bad_arguments_are_errors_that_release_the_other_ranks() {
    let results = on_ranks(InProcessGroup::with_timeout(2, Duration::from_secs(30)), |mut c| {
        let len = if c.rank() == 0 { 3 } else { 4 };
        c.all_to_all(&vec![0.0; len]).map(|_| ())
    });
    assert!(
        matches!(&results[0], Err(CollectiveError::Invalid { reason, .. }) if reason.contains("3 values")),
        "{:?}",
        results[0]
    );
    assert!(matches!(results[1], Err(CollectiveError::RankLost { rank: 0, .. })), "{:?}", results[1]);
}
