//! Child processes: the `nicebill` binary, the simulator as a process, daemons.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGTERM, then the exit status (the test fails if it takes more than 30 s).
pub fn terminate(mut run: Killed) -> ExitStatus {
    let term = Command::new("kill")
        .args(["-TERM", &run.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "nicebill run ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `nicebill` binary with `RUST_LOG` as given (`None`: unset) and nothing inherited that
/// would change its configuration or log format.
/// Runs `nicebill ARGS --config CONFIG` with `stdin` fed to it; its output.
pub fn run_fed(
    rust_log: Option<&str>,
    config: &Path,
    args: &[&str],
    stdin: &str,
) -> std::process::Output {
    use std::io::Write;
    let mut child = nicebill(rust_log)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn nicebill(rust_log: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nicebill"));
    cmd.env_remove("NICEBILL_CONFIG")
        .env_remove("JOURNAL_STREAM");
    match rust_log {
        Some(level) => cmd.env("RUST_LOG", level),
        None => cmd.env_remove("RUST_LOG"),
    };
    cmd
}

/// `nicebill sim` on a free loopback port with `extra` arguments: the process and its base URL.
pub fn spawn_sim(extra: &[&str]) -> (Killed, String) {
    let mut child = nicebill(Some("warn"))
        .args(["sim", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nicebill sim starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("the simulator prints its address");
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("unexpected first line from nicebill sim: {line:?}"))
        .to_owned();
    (Killed(child), url)
}

/// A child process, SIGKILLed and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then its exit status (SIGKILLed after `patience`).
    pub async fn terminate(mut self, patience: Duration) -> ExitStatus {
        let term = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(term.success(), "kill -TERM {}", self.name);
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {patience:?} of SIGTERM",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary with `RUST_LOG` set, no colour, and nothing inherited that would change its
/// behaviour.
pub fn bin(rust_log: &str) -> Command {
    let mut cmd = nicebill(Some(rust_log));
    cmd.env("NO_COLOR", "1");
    cmd
}

/// A file to send a child's output to.
pub fn log_file(path: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(path).unwrap())
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `nicebill sim` on `listen` (logging at debug into `log`, if given); returns it and
/// its base URL, or `None` when it did not come up (the port was taken, say).
pub fn try_start_sim(
    listen: &str,
    latency_ms: u64,
    faults: &[&str],
    log: Option<&Path>,
) -> Option<(Proc, String)> {
    let mut cmd = bin(if log.is_some() { "debug" } else { "warn" });
    cmd.args([
        "sim",
        "--listen",
        listen,
        "--seed",
        "7",
        "--latency-ms",
        &latency_ms.to_string(),
    ]);
    for f in faults {
        cmd.args(["--fault", f]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(log.map_or_else(Stdio::null, log_file))
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let proc = Proc {
        name: format!("nicebill sim {listen}"),
        child,
    };
    let url = line.trim().rsplit(' ').next()?.to_owned();
    url.starts_with("http://127.0.0.1:").then_some((proc, url))
}

/// Starts `nicebill sim` on a free loopback port.
pub fn start_sim(latency_ms: u64, faults: &[&str], log: Option<&Path>) -> (Proc, String) {
    for _ in 0..5 {
        let listen = format!("127.0.0.1:{}", free_port());
        if let Some(started) = try_start_sim(&listen, latency_ms, faults, log) {
            return started;
        }
    }
    panic!("nicebill sim did not start");
}

/// Starts `nicebill run` (with `args`, e.g. `--once`) logging into `log`.
pub fn spawn_run(config: &Path, log: &Path, rust_log: &str, name: &str) -> Proc {
    let child = bin(rust_log)
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log_file(log))
        .spawn()
        .unwrap();
    Proc {
        name: name.into(),
        child,
    }
}

/// Runs `cmd` to the end and returns its output; kills it and fails the test if it takes
/// longer than `patience`.
pub fn output_within(mut cmd: Command, patience: Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + patience;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not end within {patience:?}: {}",
                String::from_utf8_lossy(&stderr.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}
