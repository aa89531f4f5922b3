//! The systemd pieces in `systemd/`: the unit passes `systemd-analyze verify` without a word,
//! its sandbox rates an exposure of at most 2.0 in `systemd-analyze security`, and the unit,
//! sysusers and tmpfiles files agree with each other and with what the daemon needs.
//!
//! The `systemd-analyze` checks need no running systemd (they work in a container) and are
//! skipped, with a line saying so, where `systemd-analyze` is not installed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
/// Where the unit expects the binary; the copies under test point at the one cargo built.
const INSTALLED_BIN: &str = "/usr/local/bin/nicebill";
/// The largest overall exposure `systemd-analyze security` may rate the unit at, and the same
/// as its `--threshold` (which counts tenths).
const MAX_EXPOSURE: f64 = 2.0;
const THRESHOLD: &str = "--threshold=20";

fn read(name: &str) -> String {
    let path = Path::new(DIR).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `systemd-analyze`'s path when it is on PATH.
fn find_on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

fn systemd_analyze() -> Option<PathBuf> {
    let found = find_on_path("systemd-analyze");
    if found.is_none() {
        println!("systemd_unit: skipped (systemd-analyze not found)");
    }
    found
}

/// The unit, with its `ExecStart=`/`ExecStartPre=` pointing at the freshly built binary, as
/// `nicebill.service` in a fresh directory (`systemd-analyze` names the unit after the file).
fn unit_copy() -> (tempfile::TempDir, PathBuf) {
    let unit = read("nicebill.service");
    for key in ["ExecStart=", "ExecStartPre="] {
        assert!(
            unit.lines()
                .any(|l| l.starts_with(&format!("{key}{INSTALLED_BIN} "))),
            "the unit has no {key}{INSTALLED_BIN} line"
        );
    }
    let copy = unit.replace(INSTALLED_BIN, env!("CARGO_BIN_EXE_nicebill"));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("nicebill.service");
    std::fs::write(&path, copy).expect("the unit copy is written");
    (dir, path)
}

fn run(cmd: &mut Command) -> Output {
    // Plain, untranslated output on stderr at the default level, whatever the environment
    // says (a log target of "journal" would hide verify's warnings from this test).
    cmd.env("SYSTEMD_LOG_TARGET", "console")
        .env("SYSTEMD_LOG_LEVEL", "info")
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "cat")
        .env("LC_ALL", "C.UTF-8");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn unit_verifies_without_a_word() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let (_dir, unit) = unit_copy();
    // --man=no: the unit names no man pages, and `man` need not be installed. verify checks
    // the syntax, every setting's value, the Exec*= binaries and the referenced units; it
    // needs no running systemd and does not look the user up, so the missing `nicebill` user
    // on a build machine is no problem (and this test creates none).
    let output = run(Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit));
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "systemd-analyze verify {} is not silent: {}",
        unit.display(),
        describe(&output)
    );
}

#[test]
fn unit_exposure_is_at_most_2() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let (_dir, unit) = unit_copy();
    // --offline judges the file itself, not a loaded unit, so no running systemd is needed;
    // --threshold makes the exit status fail above 2.0 too.
    let output = run(Command::new(&analyze)
        .args(["security", "--offline=true", "--no-pager", THRESHOLD])
        .arg(&unit));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // "→ Overall exposure level for nicebill.service: 1.1 OK 🙂"
    let exposure: f64 = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for nicebill.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level: {}", describe(&output)));
    println!("systemd_unit: overall exposure level {exposure:.1}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}; what is not sandboxed:\n{}",
        stdout
            .lines()
            .filter(|l| l.starts_with('✗'))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        output.status.success(),
        "systemd-analyze security failed: {}",
        describe(&output)
    );
}

/// The value of `Key=` in the unit (the last assignment, which is the one that counts for
/// single-valued settings; the unit repeats no key across sections).
fn setting(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .filter(|l| !l.starts_with(['#', ';']))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .next_back()
}

fn seconds(value: &str) -> u64 {
    let (number, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("{value:?}: not a time span"));
    match unit {
        "" | "s" => n,
        "min" => n * 60,
        _ => panic!("{value:?}: unexpected unit {unit:?}"),
    }
}

#[test]
fn unit_gives_the_daemon_what_it_needs() {
    let unit = read("nicebill.service");
    let get = |key: &str| setting(&unit, key).unwrap_or_else(|| panic!("the unit sets no {key}="));

    // The daemon speaks sd_notify: READY=1, STOPPING=1, WATCHDOG=1 from its main process.
    assert_eq!(get("Type"), "notify");
    assert_eq!(get("NotifyAccess"), "main");
    assert!(seconds(&get("WatchdogSec")) >= 10);
    assert_eq!(get("Restart"), "on-failure");
    assert_eq!(get("KillSignal"), "SIGTERM");
    // After SIGTERM an approval already sent may take connect (15 s) + read (25 s) to finish.
    assert!(seconds(&get("TimeoutStopSec")) >= 15 + 25);
    assert_eq!(
        get("ExecStart"),
        format!("{INSTALLED_BIN} --config /etc/nicebill/nicebill.toml run")
    );

    // Where README.md and the config point.
    assert_eq!(get("StateDirectory"), "nicebill");
    assert_eq!(get("WorkingDirectory"), "/var/lib/nicebill");
    assert_eq!(get("RuntimeDirectory"), "nicebill");
    assert_eq!(get("ConfigurationDirectory"), "nicebill");
    assert_eq!(
        get("LoadCredential"),
        "merchant.key:/etc/nicebill/merchant.key"
    );
    assert_eq!(get("EnvironmentFile"), "-/etc/nicebill/nicebill.env");

    // Outbound TCP to NICEPAY and PostgreSQL, AF_UNIX for sd_notify and /run/postgresql.
    let families = get("RestrictAddressFamilies");
    for family in ["AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(
            families.split_whitespace().any(|f| f == family),
            "{family} is not allowed"
        );
    }
    for key in ["PrivateNetwork", "IPAddressDeny", "DynamicUser"] {
        assert!(
            setting(&unit, key).is_none(),
            "{key}= would break the service"
        );
    }

    // One user and group, created by the sysusers file, owning what tmpfiles creates.
    assert_eq!(get("User"), "nicebill");
    assert_eq!(get("Group"), "nicebill");
    let sysusers = read("nicebill.sysusers");
    let user: Vec<&str> = sysusers
        .lines()
        .find(|l| l.starts_with('u'))
        .expect("the sysusers file creates a user")
        .split_whitespace()
        .collect();
    assert_eq!(user[1], "nicebill");
    assert_eq!(user.last(), Some(&"-"), "the user gets no login shell");
    assert!(sysusers.contains(" /var/lib/nicebill "));

    // /etc/nicebill: root:nicebill 0750, and the unit says the same mode (otherwise systemd
    // warns at every start that the mode differs).
    let tmpfiles = read("nicebill.tmpfiles");
    let etc: Vec<&str> = tmpfiles
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split_whitespace().nth(1) == Some("/etc/nicebill"))
        .expect("tmpfiles creates /etc/nicebill")
        .split_whitespace()
        .collect();
    assert_eq!(etc[..5], ["d", "/etc/nicebill", "0750", "root", "nicebill"]);
    assert_eq!(get("ConfigurationDirectoryMode"), "0750");
}

/// sysusers and tmpfiles applied to a scratch root (never the real one): the user, its group
/// and /etc/nicebill come out as documented. Needs root (tmpfiles chowns).
#[test]
fn sysusers_and_tmpfiles_apply_to_a_scratch_root() {
    let (Some(sysusers), Some(tmpfiles)) = (
        find_on_path("systemd-sysusers"),
        find_on_path("systemd-tmpfiles"),
    ) else {
        println!("systemd_unit: skipped (systemd-sysusers/systemd-tmpfiles not found)");
        return;
    };
    // /proc/self belongs to the effective user.
    if std::fs::metadata("/proc/self").map_or(1, |m| m.uid()) != 0 {
        println!("systemd_unit: skipped (applying tmpfiles needs root)");
        return;
    }
    let root = tempfile::tempdir().expect("a temporary directory");
    for (dir, from) in [
        ("usr/lib/sysusers.d", "nicebill.sysusers"),
        ("usr/lib/tmpfiles.d", "nicebill.tmpfiles"),
    ] {
        let dir = root.path().join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("nicebill.conf"), read(from)).unwrap();
    }
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let mut root_arg = std::ffi::OsString::from("--root=");
    root_arg.push(root.path());
    for (tool, args) in [(&sysusers, &[][..]), (&tmpfiles, &["--create"][..])] {
        let output = run(Command::new(tool).arg(&root_arg).args(args));
        assert!(
            output.status.success(),
            "{}: {}",
            tool.display(),
            describe(&output)
        );
    }

    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let fields: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("nicebill:"))
        .expect("the nicebill user was created")
        .split(':')
        .collect();
    let (uid, gid) = (
        fields[2].parse::<u32>().unwrap(),
        fields[3].parse::<u32>().unwrap(),
    );
    assert!(uid != 0 && uid < 1000, "a system user, not uid {uid}");
    assert_eq!(fields[5], "/var/lib/nicebill");
    assert!(fields[6].ends_with("/nologin"), "shell {}", fields[6]);
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with(&format!("nicebill:x:{gid}:")))
    );

    let etc = std::fs::metadata(root.path().join("etc/nicebill")).unwrap();
    assert!(etc.is_dir());
    assert_eq!(etc.mode() & 0o7777, 0o750);
    assert_eq!((etc.uid(), etc.gid()), (0, gid));
}
