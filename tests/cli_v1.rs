//! The operator commands on NICEPAY v1, through the real binary against `nicebill sim`, with
//! Basic and with Bearer authentication: `check-config --gateway`, `billkey issue`, `approve`,
//! `status TID`, `status --order-id`, `refund` (partial, then the rest), `billkey remove` and
//! `charge-now`. Their `--json` has the web API's shape plus `api = "v1"`. Every command runs at
//! trace level, and nothing it prints holds the secret key, the Basic credentials, the bearer
//! token or the card details.

mod support;

use std::path::Path;
use std::process::Output;

use nicebill::gateway::ApiKind;
use support::*;

const CARD: &str = "CardNo=5361234512345678\nExpYear=28\nExpMonth=07\nIDNo=880229\nCardPw=37\n";

/// What must never be printed.
struct Secrets(Vec<String>);

impl Secrets {
    fn check(&self, what: &str, out: &Output) {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for s in &self.0 {
            assert!(!all.contains(s.as_str()), "output of {what} holds a secret");
        }
    }
}

fn run(secrets: &Secrets, config: &Path, args: &[&str], stdin: &str) -> Output {
    let out = support::process::run_fed(Some("trace"), config, args, stdin);
    secrets.check(&format!("{args:?}"), &out);
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `--json` answer: the shape both APIs share, `api = "v1"`, and the call's legacy name.
fn json(out: &Output, call: &str) -> serde_json::Value {
    assert!(out.status.success(), "{call}: {}", text(out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{call}: not JSON ({e}): {}", text(out)));
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "api",
            "call",
            "class",
            "data",
            "response",
            "result_code",
            "result_msg"
        ],
        "{call}"
    );
    assert_eq!(
        (v["api"].as_str(), v["call"].as_str()),
        (Some("v1"), Some(call))
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_on_v1() {
    for auth in ["basic", "bearer"] {
        let (_sim, sim_url) = spawn_sim(&[]);
        // The simulator hands out one token per shop while it is valid: the one the binary
        // gets is this one.
        let (basic, token) = v1_credentials(&sim_url).await;
        let secrets = Secrets(vec![
            V1_SECRET_KEY.into(),
            V1_SECRET_KEY[..16].into(),
            basic.trim_start_matches("Basic ").into(),
            token,
            "5361234512345678".into(),
            "880229".into(),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let db_url = format!("sqlite://{}", dir.path().join("nb.db").display());
        let config = ConfigFile::new(&sim_url)
            .api(ApiKind::V1)
            .nicepay(&format!("auth = \"{auth}\"\n"))
            .database(&db_url)
            .write(dir.path());

        let out = run(&secrets, &config, &["check-config", "--gateway"], "");
        assert!(out.status.success(), "{auth}: {}", text(&out));
        assert!(text(&out).contains("NICEPAY v1 API"), "{}", text(&out));

        let issued = json(
            &run(&secrets, &config, &["billkey", "issue", "--json"], CARD),
            "billkey_issue",
        );
        assert_eq!(issued["class"], "approved", "{issued}");
        let bid = issued["data"]["bid"].as_str().unwrap().to_owned();

        let approved = json(
            &run(
                &secrets,
                &config,
                &[
                    "approve",
                    "--bid",
                    &bid,
                    "--amount",
                    "9900",
                    "--goods-name",
                    "월간 구독 (프리미엄)",
                    "--moid",
                    &format!("cli-{auth}-1"),
                    "--json",
                ],
                "",
            ),
            "approve",
        );
        assert_eq!(
            (approved["result_code"].as_str(), approved["class"].as_str()),
            (Some("0000"), Some("approved")),
            "{approved}"
        );
        assert_eq!(approved["response"]["status"], "paid", "{approved}");
        let tid = approved["data"]["tid"].as_str().unwrap().to_owned();

        let out = run(&secrets, &config, &["status", &tid], "");
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).starts_with("approved TID="), "{}", text(&out));
        let by_order = json(
            &run(
                &secrets,
                &config,
                &["status", "--order-id", &format!("cli-{auth}-1"), "--json"],
                "",
            ),
            "status",
        );
        assert_eq!(
            (
                by_order["data"]["state"].as_str(),
                by_order["data"]["tid"].as_str()
            ),
            (Some("approved"), Some(tid.as_str())),
            "{by_order}"
        );

        let out = run(
            &secrets,
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
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("RemainAmt=9000"), "{}", text(&out));
        let rest = json(
            &run(
                &secrets,
                &config,
                &[
                    "refund",
                    &tid,
                    "--amount",
                    "9000",
                    "--reason",
                    "고객요청",
                    "--json",
                ],
                "",
            ),
            "cancel",
        );
        assert_eq!(
            (
                rest["data"]["cancel_amount"].as_i64(),
                rest["data"]["remain_amount"].as_i64()
            ),
            (Some(9000), Some(0)),
            "{rest}"
        );
        let after = json(
            &run(&secrets, &config, &["status", &tid, "--json"], ""),
            "status",
        );
        assert_eq!(after["data"]["state"], "cancelled", "{after}");

        // charge-now on a subscription of this card: charged once, then nothing due.
        let store =
            nicebill::storage::Store::open(nicebill::storage::DbUrl::parse(&db_url).unwrap(), 1)
                .unwrap();
        store.migrate().await.unwrap();
        let id = store
            .insert_subscription(monthly(
                "cli-v1-sub",
                &nicebill::domain::Bid::new(bid.as_str()).unwrap(),
                4_900,
                chrono::Utc::now() - chrono::Duration::minutes(5),
            ))
            .await
            .unwrap();
        let out = run(&secrets, &config, &["charge-now", "cli-v1-sub"], "");
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("approved"), "{}", text(&out));
        let out = run(&secrets, &config, &["charge-now", "cli-v1-sub"], "");
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("nothing due now"), "{}", text(&out));
        let charges = store.charges(Some(id)).await.unwrap();
        assert_eq!(charges.len(), 1, "{charges:?}");
        assert_eq!(
            (charges[0].state.as_str(), charges[0].api.as_str()),
            ("approved", "v1")
        );
        assert!(charges[0].tid.is_some());

        let removed = json(
            &run(
                &secrets,
                &config,
                &["billkey", "remove", &bid, "--json"],
                "",
            ),
            "billkey_remove",
        );
        assert_eq!(removed["class"], "approved", "{removed}");

        // The ledger: the two approvals, the first refunded in full.
        let ledger = ledger(&sim_url).await;
        assert_eq!(ledger.len(), 2, "{ledger:?}");
        assert!(ledger.iter().all(|l| l.mid == V1_SHOP));

        // A wrong secret: check-config --gateway fails, naming what NICEPAY said.
        let wrong = tempfile::tempdir().unwrap();
        let bad = ConfigFile::new(&sim_url)
            .api(ApiKind::V1)
            .key("0123456789abcdef0123456789abcdef")
            .nicepay(&format!("auth = \"{auth}\"\n"))
            .write(wrong.path());
        let out = run(&secrets, &bad, &["check-config", "--gateway"], "");
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("FAIL NICEPAY"), "{}", text(&out));
    }
}
