//! Returning freed heap memory to the operating system. glibc keeps what a burst freed (a
//! worker taking a hundred relays at once: sessions starting, negentropy frames, status
//! objects) in its arenas, and RSS stays at the burst's high-water mark. At 1,000 relays on 8
//! workers that was a quarter of each worker's RSS: one `malloc_trim(0)` took workers from
//! 58–68 MB to 47–50 MB (docs/benchmarks.md, scale run). So every process trims on a timer.
//! Elsewhere than Linux with glibc there is nothing to call, and it does nothing.

use std::time::Duration;

/// How often the heap is trimmed. A trim of a worker's heap takes a few milliseconds.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Gives free heap pages back to the OS; true when some were released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: `malloc_trim` takes a plain integer, touches only the allocator's own state
    // (under its locks) and may be called from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Gives free heap pages back to the OS; true when some were released.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

/// Trims every `interval`, off the runtime's worker threads (a trim holds the allocator's
/// locks for its duration). Runs until the runtime shuts down.
pub async fn trim_periodically(interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if tokio::task::spawn_blocking(trim).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_after_a_freed_burst_releases_memory() {
        // Many small blocks, then free every other one: holes glibc keeps until trimmed.
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 4096]).collect();
        let kept: Vec<Vec<u8>> = blocks.into_iter().step_by(50).collect();
        assert!(
            trim(),
            "nothing released after freeing ~80 MB of 4 KiB blocks"
        );
        assert_eq!(kept.len(), 400);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_task_keeps_running() {
        let task = tokio::spawn(trim_periodically(Duration::from_secs(1)));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!task.is_finished());
        task.abort();
    }
}
