//! An idle pool parks: no CPU once spinning ended, also after helping.
//! Alone in its binary so other tests' threads do not add CPU time.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::*;
use raptors_runtime::{JobStop, Pool, PoolConfig, SubmitOptions};
use rayon::prelude::*;

/// User + system CPU time of this process, in clock ticks (10 ms here).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn idle_pools_use_no_cpu() {
    let pool = pool("idle", 2, 8);
    let spin_zero = Pool::new(PoolConfig {
        spin: Duration::ZERO,
        ..PoolConfig::new("idle-nospin", 2, 8)
    })
    .unwrap();
    for p in [&pool, &spin_zero] {
        let job = p
            .submit(
                SubmitOptions::default(),
                |ctx| -> Result<u64, JobStop<()>> {
                    ctx.wake_helpers();
                    Ok((0..1_000_000u64).into_par_iter().sum())
                },
            )
            .unwrap();
        assert!(job.wait(Some(Duration::from_secs(10))));
        assert_eq!(job.status(), raptors_runtime::JobStatus::Done);
    }
    std::thread::sleep(Duration::from_millis(50));
    let before = cpu_ticks();
    std::thread::sleep(Duration::from_millis(500));
    let used = cpu_ticks() - before;
    // 4 workers spinning would use ~100 ticks; parked ones use none.
    assert!(used <= 3, "idle pools used {used} ticks of CPU in 500 ms");
    assert_invariant(&pool.stats());
}
