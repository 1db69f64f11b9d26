//! The MPI backend across processes on this machine. Each test runs its own binary under
//! `mpirun -np 2` (the ranks see `ORRERY_MPI_RANK_TEST` and run the test's rank body); without
//! `mpirun` the tests skip, unless `ORRERY_REQUIRE_MPI=1` (CI) makes that a failure.

#![cfg(feature = "mpi")]

use orrery_parallel::{Collective, MpiComm};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// True in a rank started by [`mpirun`].
fn is_rank() -> bool {
    std::env::var_os("ORRERY_MPI_RANK_TEST").is_some()
}

/// Runs test `name` of this binary as `ranks` MPI processes; `None` (skip) without mpirun.
fn mpirun(name: &str, ranks: usize) -> Option<(Output, Duration)> {
    if Command::new("mpirun").arg("--version").output().is_err() {
        assert!(std::env::var_os("ORRERY_REQUIRE_MPI").is_none(), "mpirun is missing but ORRERY_REQUIRE_MPI is set");
        eprintln!("skipping {name}: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)");
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let out = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &ranks.to_string()])
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("ORRERY_MPI_RANK_TEST", "1")
        .output()
        .unwrap();
    Some((out, started.elapsed()))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn collectives_across_two_processes_match_the_in_process_results() {
    if is_rank() {
        let mut c = MpiComm::init().unwrap();
        let (r, n) = (c.rank(), c.size());
        // Order-sensitive values: the sum must be rank 0's plus rank 1's, in that order.
        let mine: Vec<f32> = (0..6).map(|i| if r == 0 { 1e8 * (i as f32 + 1.0) } else { 1.37 + i as f32 }).collect();
        let mut sum = mine.clone();
        c.all_reduce_sum(&mut sum).unwrap();
        let want: Vec<f32> = (0..6).map(|i| 1e8 * (i as f32 + 1.0) + (1.37 + i as f32)).collect();
        assert_eq!(sum, want);
        assert_eq!(c.all_gather(&vec![r as f32; r + 1]).unwrap(), [0.0, 1.0, 1.0]);
        let parts: Vec<f32> = (0..4).map(|i| (r * 10 + i) as f32).collect();
        let expect: Vec<f32> = if r == 0 { vec![0.0, 1.0, 10.0, 11.0] } else { vec![2.0, 3.0, 12.0, 13.0] };
        assert_eq!(c.all_to_all(&parts).unwrap(), expect);
        let mut b = if r == 1 { vec![7.0, 8.0] } else { Vec::new() };
        c.broadcast(&mut b, 1).unwrap();
        assert_eq!(b, [7.0, 8.0]);
        // A wrong length is an error on every rank, not a corrupted exchange.
        let bad = c.all_to_all(&vec![0.0; 4 + 2 * r]).unwrap_err();
        assert!(bad.to_string().contains("equal parts"), "{bad}");
        c.barrier().unwrap();
        // Split: each rank alone in a group of its own (a sum over itself is itself), and a
        // rank passing no colour joins nothing.
        let mut alone = c.split(Some(r as u16)).unwrap().expect("a group");
        assert_eq!((alone.rank(), alone.size()), (0, 1));
        let mut v = vec![r as f32 + 0.5];
        alone.all_reduce_sum(&mut v).unwrap();
        assert_eq!(v, [r as f32 + 0.5]);
        let only_rank_0 = c.split((r == 0).then_some(7)).unwrap();
        assert_eq!(only_rank_0.map(|g| g.size()), (r == 0).then_some(1));
        c.barrier().unwrap();
        println!("rank {r} of {n}: collectives ok");
        return;
    }
    let Some((out, _)) = mpirun("collectives_across_two_processes_match_the_in_process_results", 2) else { return };
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("rank 0 of 2: collectives ok") && log.contains("rank 1 of 2: collectives ok"), "{log}");
}

#[test]
fn a_rank_that_dies_stops_the_job_naming_it() {
    if is_rank() {
        let mut c = MpiComm::init_with_timeout(Duration::from_secs(60)).unwrap();
        let mut x = vec![1.0];
        c.all_reduce_sum(&mut x).unwrap();
        if c.rank() == 1 {
            // Killed mid-run: no goodbye, no MPI_Finalize.
            std::process::exit(3);
        }
        c.barrier().unwrap();
        println!("rank 0 finished although rank 1 died");
        return;
    }
    let Some((out, took)) = mpirun("a_rank_that_dies_stops_the_job_naming_it", 2) else { return };
    let log = text(&out);
    println!("{log}");
    assert!(!out.status.success(), "{log}");
    assert!(!log.contains("rank 0 finished"), "{log}");
    // mpirun names the process that failed first: rank 1 of job [[id,1]], with its exit code.
    let flat = log.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("],1] Exit code: 3"), "{log}");
    assert!(took < Duration::from_secs(50), "the job stopped at the timeout, not on the death: {took:?}");
}

#[test]
fn a_hanging_rank_times_the_others_out() {
    if is_rank() {
        let mut c = MpiComm::init_with_timeout(Duration::from_secs(2)).unwrap();
        if c.rank() == 1 {
            std::thread::sleep(Duration::from_secs(60));
        }
        c.barrier().unwrap();
        println!("rank {} passed the barrier", c.rank());
        return;
    }
    let Some((out, took)) = mpirun("a_hanging_rank_times_the_others_out", 2) else { return };
    let log = text(&out);
    println!("{log}");
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("rank 0 of 2 waited 2.0 s in barrier"), "{log}");
    assert!(took < Duration::from_secs(30), "{took:?}");
}
