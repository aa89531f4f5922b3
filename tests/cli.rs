//! The real `nicebill` binary against `nicebill sim`: billkey issue → approve → status →
//! refund → remove, exit codes, and bad input refused before anything is sent.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::{ConfigFile, KEY};

fn write_config(dir: &Path, base_url: &str, key: &str) -> PathBuf {
    ConfigFile::new(base_url).key(key).write(dir)
}

fn run(config: &Path, args: &[&str], stdin: &str) -> Output {
    let out = support::process::run_fed(Some("trace"), config, args, stdin);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in [
        KEY,
        &KEY[..16],
        "5361234512345678",
        "CardPw=00",
        "1234567890\n",
    ] {
        assert!(!all.contains(secret), "output of {args:?} holds a secret");
    }
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const CARD: &str = "CardNo=5361234512345678\nExpYear=28\nExpMonth=07\nIDNo=1234567890\nCardPw=00\n";

#[test]
fn operator_flow_against_the_simulator() {
    let (_sim, sim_url) = support::spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim_url, KEY);

    let out = run(&config, &["billkey", "issue"], CARD);
    assert!(out.status.success(), "{}", stderr(&out));
    let bid = stdout(&out);
    assert_eq!(bid.len(), 30, "BID {bid:?}");

    let out = run(
        &config,
        &[
            "approve",
            "--bid",
            &bid,
            "--amount",
            "9900",
            "--goods-name",
            "월간 구독 (프리미엄)",
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["result_code"], "3001");
    let tid = json["data"]["tid"].as_str().unwrap().to_owned();

    let out = run(&config, &["status", &tid], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("approved"), "{}", stdout(&out));

    let out = run(
        &config,
        &[
            "refund",
            &tid,
            "--amount",
            "900",
            "--partial",
            "--reason",
            "고객요청",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("RemainAmt=9000"), "{}", stdout(&out));
    let out = run(
        &config,
        &["refund", &tid, "--amount", "9000", "--reason", "고객요청"],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let out = run(&config, &["status", &tid, "--json"], "");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["data"]["state"], "cancelled");

    // A refund whose answer carries a wrong Signature is never reported as a refund: exit 3,
    // "NOT confirmed", whatever the simulator did.
    let out = run(
        &config,
        &[
            "approve",
            "--bid",
            &bid,
            "--amount",
            "5000",
            "--goods-name",
            "구독",
            "--json",
        ],
        "",
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let second_tid = json["data"]["tid"].as_str().unwrap().to_owned();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(
            reqwest::Client::new()
                .post(format!("{}/_sim/faults", sim_url))
                .body(r#"[{"mode":"bad_cancel_signature","api":"cancel","count":1}]"#)
                .send(),
        )
        .unwrap()
        .error_for_status()
        .unwrap();
    let out = run(
        &config,
        &[
            "refund",
            &second_tid,
            "--amount",
            "5000",
            "--reason",
            "고객요청",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("NOT confirmed"), "{}", stderr(&out));
    assert!(!stdout(&out).contains("refunded"), "{}", stdout(&out));

    let out = run(&config, &["billkey", "remove", &bid], "");
    assert!(out.status.success(), "{}", stderr(&out));

    // Charging the removed billkey fails with one line naming the code and what to do.
    let out = run(
        &config,
        &[
            "approve",
            "--bid",
            &bid,
            "--amount",
            "9900",
            "--goods-name",
            "구독",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("nicebill: "))
        .expect("one error line");
    assert!(
        line.contains("ResultCode=A124") && line.contains("permanent_card"),
        "{line}"
    );

    // A declined card: exit 1, ResultCode and advice.
    let out = run(
        &config,
        &["billkey", "issue"],
        "CardNo=4000000000000002\nExpYear=30\nExpMonth=01\n",
    );
    let declining = stdout(&out);
    let out = run(
        &config,
        &[
            "approve",
            "--bid",
            &declining,
            "--amount",
            "1000",
            "--goods-name",
            "구독",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("ResultCode=3095"), "{}", stderr(&out));
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    let (_sim, sim_url) = support::spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim_url, KEY);
    let bid = "BIKYnictest04m2611251200001234";
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &[
                "approve",
                "--bid",
                bid,
                "--amount",
                "12a",
                "--goods-name",
                "x",
            ],
            "",
            "amount",
        ),
        (
            &[
                "approve",
                "--bid",
                bid,
                "--amount",
                "0",
                "--goods-name",
                "x",
            ],
            "",
            "amount",
        ),
        (
            &[
                "approve",
                "--bid",
                bid,
                "--amount",
                "-5",
                "--goods-name",
                "x",
            ],
            "",
            "amount",
        ),
        (
            &[
                "approve",
                "--bid",
                bid,
                "--amount",
                "100",
                "--goods-name",
                &"가".repeat(21),
            ],
            "",
            "GoodsName",
        ),
        (
            &[
                "approve",
                "--bid",
                bid,
                "--amount",
                "100",
                "--goods-name",
                "구독 🎉",
            ],
            "",
            "GoodsName",
        ),
        (
            &[
                "approve",
                "--bid",
                bid,
                "--amount",
                "100",
                "--goods-name",
                "x",
                "--quota",
                "1",
            ],
            "",
            "CardQuota",
        ),
        (
            &[
                "refund",
                "nictest04m01162612250900001234",
                "--amount",
                "100",
                "--reason",
                "Café ☕",
            ],
            "",
            "reason",
        ),
        (&["status", "short-tid"], "", "TID"),
        (
            &["billkey", "issue"],
            "CardNo=12\nExpYear=30\nExpMonth=01\n",
            "CardNo",
        ),
        (
            &["billkey", "issue"],
            "CardNo=4000000000000001\nExpYear=30\n",
            "ExpMonth",
        ),
    ];
    for (args, stdin, field) in cases {
        let out = run(&config, args, stdin);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(field), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn bad_configuration_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing_key = dir.path().join("missing.toml");
    std::fs::write(&missing_key, "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_file = \"/nonexistent/merchant.key\"\nbase_url = \"http://127.0.0.1:9\"\n").unwrap();
    let short_key_dir = tempfile::tempdir().unwrap();
    let short_key = write_config(short_key_dir.path(), "http://127.0.0.1:9", "too-short");
    let http_dir = tempfile::tempdir().unwrap();
    let http = write_config(http_dir.path(), "http://webapi.nicepay.co.kr", KEY);
    let cases: [(&Path, &str); 4] = [
        (&missing_key, "nicepay.merchant_key_file"),
        (&short_key, "at least 16"),
        (&http, "nicepay.base_url"),
        (
            Path::new("/nonexistent/nicebill.toml"),
            "/nonexistent/nicebill.toml",
        ),
    ];
    for (config, want) in cases {
        let out = run(config, &["status", "nictest04m01162612250900001234"], "");
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(want), "{want}: {}", stderr(&out));
    }
}
