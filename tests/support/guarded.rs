//! Child processes for tests that die with the test: each runs under a small `sh` guard that
//! signals it when asked (a line on the guard's stdin) and SIGKILLs it once that stdin (a
//! pipe from the test process) closes, so a test that panics or is killed leaves nothing
//! running. Output goes to a log file in the given directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a stopped process gets to exit after SIGTERM before it is SIGKILLed.
pub const STOP_LIMIT: Duration = Duration::from_secs(15);

/// Runs `"$@"` in the background and signals it once this shell's stdin (a pipe from the
/// test process) yields a line or reaches EOF: the signal named on the line (`TERM` for a
/// graceful stop), or SIGKILL at EOF, i.e. when the test process died without cleaning up.
/// Exits with the program's status. `$1` is a file that receives the program's pid.
const GUARD: &str = r#"pidfile=$1; shift
exec 3<&0 0</dev/null
"$@" 3<&- &
pid=$!
echo "$pid" > "$pidfile"
( sig=KILL; read -r sig <&3; kill -"${sig:-KILL}" "$pid" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$pid"
status=$?
kill "$watcher" 2>/dev/null
exit "$status""#;

/// One process under the [`GUARD`].
#[derive(Debug)]
pub struct Guarded {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    pidfile: PathBuf,
    log: PathBuf,
}

impl Guarded {
    pub fn spawn(name: &'static str, dir: &Path, program: &Path, args: &[String]) -> Guarded {
        Self::spawn_env(name, dir, program, args, &[])
    }

    /// [`Guarded::spawn`] with extra environment variables.
    pub fn spawn_env(
        name: &'static str,
        dir: &Path,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
    ) -> Guarded {
        let log = dir.join(format!("{name}.log"));
        let pidfile = dir.join(format!("{name}.pid"));
        let _ = std::fs::remove_file(&pidfile);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg("sh")
            .arg(&pidfile)
            .arg(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let stdin = child.stdin.take();
        Guarded {
            name,
            child,
            stdin,
            pidfile,
            log,
        }
    }

    /// The name it was spawned under (its log is `<name>.log`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `Some(status)` once the program has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the guard to send `signal` ("TERM", "KILL") to the program; does not wait.
    pub fn signal(&mut self, signal: &str) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{signal}");
        }
    }

    /// Waits up to [`STOP_LIMIT`] for the program to exit after [`Self::signal`], then
    /// SIGKILLs it and its guard.
    pub fn wait_stopped(&mut self) {
        self.signal("KILL");
        let start = Instant::now();
        while start.elapsed() < STOP_LIMIT {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            let _ = Command::new("kill")
                .args(["-KILL", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (SIGKILL after [`STOP_LIMIT`]).
    pub fn stop_gracefully(&mut self) {
        self.signal("TERM");
        self.wait_stopped();
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!(
        "--- last {} lines of {} ---\n{}",
        all.len() - from,
        path.display(),
        all[from..].join("\n")
    )
}
