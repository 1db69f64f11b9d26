//! `mpirun -np 2 orrery generate --cfg-parallel`: the guidance branches on two processes give
//! the single-process tensors and MP4 bit for bit; `--tp 2` and `--sp 2` on two processes
//! (each with its shard of the transformer's heads or tokens), and `--cfg-parallel --tp 2` on
//! four, give them within 1e-5; a launch without a parallel layout, or
//! with one of another size, is refused instead of running the job twice. Needs the `mpi` feature and mpirun (skipped
//! without mpirun unless `ORRERY_REQUIRE_MPI=1`, as in CI).

#![cfg(feature = "mpi")]

mod common;

use common::{orrery, read_f32, stderr, tmp_dir};
use std::path::Path;
use std::process::Command;

fn mpirun_available() -> bool {
    if Command::new("mpirun").arg("--version").output().is_ok() {
        return true;
    }
    assert!(std::env::var_os("ORRERY_REQUIRE_MPI").is_none(), "mpirun is missing but ORRERY_REQUIRE_MPI is set");
    eprintln!("skipping: mpirun is not installed");
    false
}

#[test]
fn two_processes_give_the_single_process_video() {
    if !mpirun_available() {
        return;
    }
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../orrery-pipeline/tests/fixtures/cosmos_t2w_tiny");
    let dir = tmp_dir("mpi");
    let args = |tag: &str| -> Vec<String> {
        let mut a: Vec<String> = ["generate", "--model", model.to_str().unwrap(), "--prompt", "a red cube"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["--height", "32", "--width", "48", "--frames", "9", "--steps", "2", "--seed", "5"].map(String::from));
        a.extend(["--threads".into(), "1".into(), "--json".into()]);
        a.extend(["--dump-tensors".into(), dir.join(format!("{tag}.safetensors")).display().to_string()]);
        a.extend(["--out".into(), dir.join(format!("{tag}.mp4")).display().to_string()]);
        a
    };
    let one = orrery(&args("one").iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(one.status.success(), "{}", stderr(&one));
    let mpirun_np = |np: &str, extra: &[&str], tag: &str| {
        Command::new("mpirun")
            .args(["--allow-run-as-root", "--oversubscribe", "-np", np, env!("CARGO_BIN_EXE_orrery")])
            .args(args(tag))
            .args(extra)
            .env("ORRERY_PLAN_CACHE", std::env::temp_dir().join("orrery-cli-test-plans"))
            .output()
            .unwrap()
    };
    let mpirun = |extra: &[&str], tag: &str| mpirun_np("2", extra, tag);
    let two = mpirun(&["--cfg-parallel"], "two");
    let log = format!("{}{}", String::from_utf8_lossy(&two.stdout), stderr(&two));
    assert!(two.status.success(), "{log}");
    // One report, from rank 0, naming both ranks.
    let v: serde_json::Value = serde_json::from_slice(&two.stdout).unwrap();
    assert_eq!((v["ranks"].as_u64(), v["cfg_parallel"].as_bool()), (Some(2), Some(true)), "{v}");
    assert!(log.contains("rank 1 ran the unconditional branch"), "{log}");
    for name in ["decoded_raw", "step0.latents", "step1.latents"] {
        let bits = |tag: &str| {
            read_f32(&dir.join(format!("{tag}.safetensors")), name).1.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(bits("one"), bits("two"), "{name}");
    }
    assert_eq!(std::fs::read(dir.join("one.mp4")).unwrap(), std::fs::read(dir.join("two.mp4")).unwrap());
    // Tensor and sequence parallelism over the two processes, and under each guidance branch
    // over four (ranks 0-1 the conditional branch's group, 2-3 the unconditional one's).
    for (np, flag, tag, kind) in
        [("2", "--tp", "tp", "tensor"), ("2", "--sp", "sp", "sequence"), ("4", "--tp", "cfg_tp", "tensor")]
    {
        let cfg = if np == "4" { &["--cfg-parallel"][..] } else { &[] };
        let out = mpirun_np(np, &[&[flag, "2"][..], cfg].concat(), tag);
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(out.status.success(), "{log}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ranks: u64 = np.parse().unwrap();
        assert_eq!((v["ranks"].as_u64(), v[&flag[2..]].as_u64()), (Some(ranks), Some(2)), "{v}");
        assert!(log.contains(&format!("rank 1 ran its {kind}-parallel shard")), "{log}");
        if np == "4" {
            assert!(log.contains("rank 2 ran the unconditional branch"), "{log}");
            assert!(log.contains(&format!("rank 3 ran its {kind}-parallel shard")), "{log}");
        }
        for name in ["decoded_raw", "step1.latents"] {
            let one = read_f32(&dir.join("one.safetensors"), name).1;
            let got = read_f32(&dir.join(format!("{tag}.safetensors")), name).1;
            let err = common::rel_err(&got, &one);
            println!("{flag} 2 over MPI, {name}: {err:.2e}");
            // The latents carry the guidance's ×13 (see orrery-pipeline/tests/model_parallel.rs).
            assert!(err <= if name == "decoded_raw" { 1e-5 } else { 13e-5 }, "{name}: {err:e}");
        }
        assert!(dir.join(format!("{tag}.mp4")).exists());
    }
    let wrong = mpirun(&["--tp", "2", "--cfg-parallel"], "wrong");
    assert!(!wrong.status.success() && stderr(&wrong).contains("mpirun -np 4"), "{}", stderr(&wrong));
    // Without a parallel layout both processes would run the whole job: refused, nothing written.
    let refused = mpirun(&[], "refused");
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("no parallel layout"), "{}", stderr(&refused));
    assert!(!dir.join("refused.mp4").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The processes `mpirun` (pid `parent`) started, by MPI rank.
fn ranks_of(parent: u32) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
        if ppid != Some(parent) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let rank = env
            .split(|&b| b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok()?.strip_prefix("OMPI_COMM_WORLD_RANK="))
            .find_map(|r| r.parse().ok());
        if let Some(rank) = rank {
            found.push((rank, pid));
        }
    }
    found
}

#[test]
fn killing_one_rank_mid_run_stops_the_other_naming_it() {
    if !mpirun_available() {
        return;
    }
    // The medium pipeline at 200 steps: rank 1 is killed once rank 0 reports its third step.
    let dir = tmp_dir("mpi-kill");
    let model = dir.join("medium");
    let made = orrery(&["make-pipeline", "--out", model.to_str().unwrap(), "--seed", "0"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let out = dir.join("video.mp4");
    let started = std::time::Instant::now();
    let mut job = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2", env!("CARGO_BIN_EXE_orrery"), "generate"])
        .args(["--model", model.to_str().unwrap(), "--prompt", "a red cube", "--height", "64", "--width", "96"])
        .args(["--frames", "17", "--steps", "200", "--threads", "1", "--cfg-parallel", "--yes"])
        .args(["--out", out.to_str().unwrap()])
        .env("ORRERY_PLAN_CACHE", std::env::temp_dir().join("orrery-cli-test-plans"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mpirun_pid = job.id();
    let mut log = String::new();
    let mut killed = false;
    for line in std::io::BufRead::lines(std::io::BufReader::new(job.stderr.take().unwrap())) {
        let line = line.unwrap();
        if !killed && line.contains("step 3/200") {
            let victim = ranks_of(mpirun_pid).into_iter().find(|(r, _)| *r == 1).expect("rank 1 runs").1;
            assert!(Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap().success());
            killed = true;
        }
        log.push_str(&line);
        log.push('\n');
    }
    let status = job.wait().unwrap();
    println!("{log}");
    assert!(killed, "rank 0 never reported step 3: {log}");
    assert!(!status.success(), "{log}");
    // mpirun names the lost process: rank 1, killed by signal 9.
    assert!(log.contains("rank 1") && log.contains("signal 9"), "{log}");
    assert!(!log.contains("step 200/200"), "the run went on without rank 1: {log}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "stopped by the timeout, not the loss");
    assert!(!out.exists(), "rank 0 must not write a video after losing rank 1");
    std::fs::remove_dir_all(&dir).unwrap();
}
