//! The real `nicebill` binary's operator commands over the database: `subscription add|list|
//! show|pause|resume|cancel`, `charges list`, `events list`. On SQLite, and on PostgreSQL when
//! `NICEBILL_TEST_POSTGRES_URL` is set. None of these commands calls NICEPAY.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use nicebill::billing::model::{
    ChargeId, ChargeState, EventKind, SubscriptionId, SubscriptionStatus,
};
use nicebill::schedule::Cycle;
use nicebill::storage::models::NewSubscription;
use nicebill::storage::{
    Bookkeeping, ChargeResult, Event, Outcome, Reschedule, StartAttempt, Store,
};
use serde_json::Value;
use support::*;

const BID: &str = "BIKYnictest04m2611251200001234";

/// One database, with a configuration file pointing at it.
struct Env {
    label: &'static str,
    store: Store,
    config: PathBuf,
    _dir: tempfile::TempDir,
    _db: TestDb,
}

async fn envs(test: &str) -> Vec<Env> {
    databases(test)
        .await
        .into_iter()
        .map(|db| {
            let dir = tempfile::tempdir().unwrap();
            let config = write_config(dir.path(), &db.url);
            Env {
                label: db.label,
                store: db.store.clone(),
                config,
                _dir: dir,
                _db: db,
            }
        })
        .collect()
}

fn write_config(dir: &Path, db_url: &str) -> PathBuf {
    ConfigFile::new("http://127.0.0.1:9")
        .database(db_url)
        .sections("[scheduler]\ntimezone = \"Asia/Seoul\"\n")
        .write(dir)
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `nicebill ARGS --config …`, checks the exit code and that the output (stdout and
/// stderr) holds every string in `want`; never the merchant key.
fn check(env: &Env, args: &[&str], code: i32, want: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_nicebill"))
        .env("RUST_LOG", "warn")
        .env_remove("NICEBILL_CONFIG")
        .args(args)
        .arg("--config")
        .arg(&env.config)
        .output()
        .unwrap();
    let out = Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let label = env.label;
    assert_eq!(
        out.code,
        Some(code),
        "{label}: {args:?}\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let all = format!("{}{}", out.stdout, out.stderr);
    for w in want {
        assert!(all.contains(w), "{label}: {args:?}: no {w:?} in\n{all}");
    }
    assert!(
        !all.contains(&KEY[..16]),
        "{label}: {args:?} printed the key"
    );
    out
}

/// `subscription add` with the required flags, `extra` replacing or adding flags.
fn add_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["subscription", "add"];
    for (flag, value) in [
        ("--external-id", "cust-new"),
        ("--bid", BID),
        ("--amount", "9900"),
        ("--goods-name", "월간 구독"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend(extra);
    args
}

async fn row_json(store: &Store, id: i64) -> Value {
    let row = store.subscription(id).await.unwrap().expect("row exists");
    serde_json::to_value(row).unwrap()
}

async fn count(store: &Store) -> usize {
    store.subscriptions().await.unwrap().len()
}

fn new_row(
    external_id: &str,
    status: &str,
    edit: impl FnOnce(&mut NewSubscription),
) -> NewSubscription {
    let bid = nicebill::domain::Bid::new(BID).unwrap();
    let mut row = monthly(external_id, &bid, 9_900, kst("2027-01-31 09:00"));
    row.status = status.into();
    edit(&mut row);
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_inserts_the_merchant_row_after_the_daemons_checks() {
    for env in envs("admin_add").await {
        let label = env.label;
        let store = &env.store;

        // Every merchant column from a flag; the anchor is local to --timezone.
        let out = check(
            &env,
            &add_args(&[
                "--external-id",
                "cust-1",
                "--goods-name",
                "월간 구독 (프리미엄)",
                "--interval",
                "2week",
                "--timezone",
                "Asia/Tokyo",
                "--anchor",
                "2027-01-31 09:00",
                "--max-cycles",
                "26",
                "--ends-at",
                "2028-01-31 09:00",
                "--buyer-name",
                "홍길동",
                "--buyer-email",
                "buyer@example.com",
                "--buyer-tel",
                "010-1234-5678",
                "--quota",
                "03",
                "--interest-free",
                "--cancel-at-period-end",
            ]),
            0,
            &[],
        );
        let id: i64 = out.stdout.trim().parse().expect("prints the new id");
        let row = store.subscription(id).await.unwrap().unwrap();
        assert_eq!(
            (
                row.external_id.as_str(),
                row.bid.as_str(),
                row.amount,
                row.goods_name.as_str()
            ),
            ("cust-1", BID, Some(9900), "월간 구독 (프리미엄)"),
            "{label}"
        );
        assert_eq!(
            (
                row.buyer_name.as_deref(),
                row.buyer_email.as_deref(),
                row.buyer_tel.as_deref()
            ),
            (
                Some("홍길동"),
                Some("buyer@example.com"),
                Some("010-1234-5678")
            )
        );
        assert_eq!(
            (row.card_quota.as_str(), row.card_interest.as_str()),
            ("03", "1")
        );
        assert_eq!(
            (
                row.interval_unit.as_str(),
                row.interval_count,
                row.cron.as_deref()
            ),
            ("week", Some(2), None)
        );
        assert_eq!(row.timezone.as_deref(), Some("Asia/Tokyo"));
        assert_eq!(
            row.anchor_at.map(|t| t.to_string()).as_deref(),
            Some("2027-01-31 00:00:00"),
            "{label}"
        );
        assert_eq!(
            row.ends_at.map(|t| t.to_string()).as_deref(),
            Some("2028-01-31 00:00:00")
        );
        assert_eq!(row.max_cycles, Some(26));
        assert_eq!(row.status, "active");
        assert_eq!(row.cancel_at_period_end, Some(true));
        // nicebill's state is left to nicebill: it has none yet.
        assert_eq!(
            (
                row.next_cycle,
                row.next_charge_at,
                row.status_reason.as_deref()
            ),
            (None, None, None),
            "{label}"
        );
        assert_eq!(store.billing_state(SubscriptionId(id)).await.unwrap(), None);

        // A cron schedule, the anchor defaulting to now, the row printed as JSON.
        let before = Utc::now().naive_utc() - chrono::Duration::seconds(2);
        let out = check(
            &env,
            &add_args(&["--external-id", "cust-2", "--cron", "0 9 1 * *", "--json"]),
            0,
            &[],
        );
        let json = out.json();
        assert_eq!(json["external_id"], "cust-2", "{label}");
        assert_eq!(json["cron"], "0 9 1 * *");
        assert_eq!(json["timezone"], Value::Null);
        assert_eq!(json["status"], "active");
        let row = store
            .subscription(json["id"].as_i64().unwrap())
            .await
            .unwrap()
            .unwrap();
        let anchor = row.anchor_at.unwrap();
        assert!(
            anchor >= before && anchor <= Utc::now().naive_utc(),
            "{label}: anchor {anchor} is not now"
        );

        // Rows the daemon would mark invalid are refused, naming the field; nothing inserted.
        let long_name = format!("{}x", "가".repeat(20)); // 41 EUC-KR bytes
        let cases: &[(&[&str], &str)] = &[
            (&["--amount", "0"], "amount"),
            (&["--amount", "-5"], "amount"),
            (&["--amount", "12a"], "amount"),
            (&["--goods-name", &long_name], "goods_name"),
            (&["--goods-name", "구독 🎉"], "goods_name"),
            (&["--goods-name", " "], "goods_name"),
            (&["--cron", "61 * * * *"], "cron"),
            (&["--cron", "every day"], "cron"),
            (&["--timezone", "Mars/Olympus"], "timezone"),
            (&["--interval", "1fortnight"], "--interval"),
            (&["--interval", "0month"], "interval_count"),
            (&["--interval", "1001day"], "interval_count"),
            (&["--max-cycles", "0"], "max_cycles"),
            (&["--quota", "01"], "card_quota"),
            (&["--bid", ""], "bid"),
            (&["--buyer-name", "Café ☕"], "buyer_name"),
            (&["--anchor", "tomorrow"], "--anchor"),
            (&["--ends-at", "never"], "--ends-at"),
            (&["--external-id", " "], "external_id"),
            (&["--interval", "1month", "--cron", "0 9 1 * *"], "--cron"),
        ];
        let n = count(store).await;
        for (extra, field) in cases {
            let out = check(&env, &add_args(extra), 2, &[*field]);
            assert!(out.stdout.is_empty(), "{label}: {extra:?}: {}", out.stdout);
        }
        assert_eq!(count(store).await, n, "{label}: a refused row was inserted");

        // A taken external_id: a clear error naming the row that has it.
        check(
            &env,
            &add_args(&["--external-id", "cust-1", "--amount", "100"]),
            2,
            &["external_id", "\"cust-1\"", &format!("subscription {id}")],
        );
        assert_eq!(count(store).await, n, "{label}");
    }
}

/// Two subscriptions with a charge each, settled through the engine's store calls: `a` approved
/// and moved to cycle 2, `b` declined. Returns their ids.
async fn seed(store: &Store) -> (i64, i64) {
    let a = store
        .insert_subscription(new_row("cust-a", "active", |_| {}))
        .await
        .unwrap();
    let b = store
        .insert_subscription(new_row("cust-b", "active", |r| {
            r.amount = 1_234_567;
            r.goods_name = "정기 배송".into();
            r.cron = Some("0 9 1 * *".into());
        }))
        .await
        .unwrap();
    let now = Utc::now();
    store.notice(now).await.unwrap();
    let claimed = store
        .claim_due("admin-test", now, Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let attempts = [(a, 9_900), (b, 1_234_567)]
        .into_iter()
        .map(|(id, amount)| StartAttempt {
            subscription_id: SubscriptionId(id),
            cycle: Cycle(1),
            attempt: 1,
            moid: format!("S{id}-C1-A1"),
            amount,
            bid: BID.into(),
            due_at: kst("2027-01-31 09:00"),
            check_after: now,
            events: vec![Event::sub(
                SubscriptionId(id),
                EventKind::CycleSkipped,
                "cycle 1 attempt 1",
            )],
        })
        .collect();
    let tids = std::sync::Mutex::new(vec![
        "nictest04m01162701310900000002",
        "nictest04m01162701310900000001",
    ]);
    let started = store
        .start_attempts(
            "admin-test",
            now,
            attempts,
            &Default::default(),
            "webapi",
            move |_| Some(tids.lock().unwrap().pop().unwrap().to_owned()),
        )
        .await
        .unwrap();
    assert_eq!(started.len(), 2);
    let outcome = |charge_id: ChargeId, id: i64, approved: bool| Outcome {
        charge_id,
        subscription_id: SubscriptionId(id),
        cycle: Cycle(1),
        result: if approved {
            ChargeResult {
                result_code: Some("3001".into()),
                result_msg: Some("신용카드 정상처리".into()),
                auth_code: Some("30012345".into()),
                ..ChargeResult::new(ChargeState::Approved)
            }
        } else {
            ChargeResult {
                result_code: Some("3095".into()),
                result_msg: Some("잔액부족".into()),
                ..ChargeResult::new(ChargeState::Declined)
            }
        },
        bookkeeping: Some(if approved {
            Bookkeeping {
                next_cycle: Cycle(2),
                next_charge_at: Some(kst("2027-02-28 09:00")),
                cycle_attempts: 0,
                cycle_declines: 0,
                status: None,
            }
        } else {
            Bookkeeping {
                next_cycle: Cycle(1),
                next_charge_at: Some(kst("2027-02-01 09:00")),
                cycle_attempts: 1,
                cycle_declines: 1,
                status: None,
            }
        }),
        events: vec![Event::sub(
            SubscriptionId(id),
            if approved {
                EventKind::ApprovedLate
            } else {
                EventKind::Declined
            },
            "cycle 1",
        )],
        remove_billkey: None,
    };
    let outcomes = vec![
        outcome(started[0].1, a, true),
        outcome(started[1].1, b, false),
    ];
    assert_eq!(
        store
            .record_outcomes(now, outcomes, &Default::default())
            .await
            .unwrap(),
        2
    );
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_charges_and_events() {
    for env in envs("admin_list").await {
        let label = env.label;
        let (a, b) = seed(&env.store).await;
        let b_s = b.to_string();

        // Subscriptions: a table for people (local times), the rows as JSON for scripts.
        check(
            &env,
            &["subscription", "list"],
            0,
            &[
                "cust-a",
                "cust-b",
                "9,900",
                "1,234,567",
                "정기 배송",
                "1 month",
                "0 9 1 * *",
                "next charge (Asia/Seoul)",
                "2027-02-28 09:00",
                "2027-02-01 09:00",
            ],
        );
        let json = check(&env, &["subscription", "list", "--json"], 0, &[]).json();
        let ids: Vec<i64> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, vec![b, a], "{label}: newest first");
        assert_eq!(json[1]["next_cycle"], 2);
        let json = check(
            &env,
            &["subscription", "list", "--limit", "1", "--json"],
            0,
            &[],
        )
        .json();
        assert_eq!(json.as_array().unwrap().len(), 1, "{label}");
        let json = check(
            &env,
            &["subscription", "list", "--status", "paused", "--json"],
            0,
            &[],
        )
        .json();
        assert_eq!(json, Value::Array(vec![]), "{label}");
        check(
            &env,
            &["subscription", "list", "--status", "paused"],
            0,
            &["no subscriptions"],
        );

        // One subscription with its charges and events, by external_id or by id.
        check(
            &env,
            &["subscription", "show", "cust-a"],
            0,
            &[
                "cust-a",
                BID,
                "9,900 KRW",
                "2027-02-28 09:00:00 KST",
                "last 1 charge(s)",
                &format!("S{a}-C1-A1"),
                "3001 신용카드 정상처리",
                "approved",
            ],
        );
        let json = check(&env, &["subscription", "show", &b_s, "--json"], 0, &[]).json();
        assert_eq!(json["subscription"]["external_id"], "cust-b", "{label}");
        assert_eq!(json["charges"].as_array().unwrap().len(), 1);
        assert_eq!(json["charges"][0]["state"], "declined");
        let kinds: Vec<&str> = json["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["declined", "cycle_skipped"],
            "{label}: newest first"
        );
        assert_eq!(json["billkey_removal"], Value::Null);

        // Charges.
        check(
            &env,
            &["charges", "list"],
            0,
            &[
                &format!("S{a}-C1-A1"),
                &format!("S{b}-C1-A1"),
                "nictest04m01162701310900000001",
                "3095 잔액부족",
                "30012345",
                "declined",
                "created (Asia/Seoul)",
            ],
        );
        let json = check(&env, &["charges", "list", "--json"], 0, &[]).json();
        let charges = json.as_array().unwrap();
        assert_eq!(charges.len(), 2, "{label}");
        assert!(
            charges[0]["id"].as_i64() > charges[1]["id"].as_i64(),
            "newest first"
        );
        for (args, want) in [
            (vec!["--state", "declined"], vec![b]),
            (vec!["--state", "approved"], vec![a]),
            (vec!["--state", "unknown"], vec![]),
            (vec!["--subscription", "cust-a"], vec![a]),
            (vec!["--subscription", b_s.as_str()], vec![b]),
            (vec!["--limit", "1"], vec![b]),
        ] {
            let mut cmd = vec!["charges", "list", "--json"];
            cmd.extend(&args);
            let json = check(&env, &cmd, 0, &[]).json();
            let subs: Vec<i64> = json
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["subscription_id"].as_i64().unwrap())
                .collect();
            assert_eq!(subs, want, "{label}: {args:?}");
        }

        // Events.
        check(
            &env,
            &["events", "list"],
            0,
            &[
                "approved",
                "declined",
                "cycle_skipped",
                "cycle 1 attempt 1",
                "at (Asia/Seoul)",
            ],
        );
        let json = check(
            &env,
            &["events", "list", "--subscription", "cust-a", "--json"],
            0,
            &[],
        )
        .json();
        let events = json.as_array().unwrap();
        assert_eq!(events.len(), 2, "{label}");
        assert!(events.iter().all(|e| e["subscription_id"] == a));
        assert_eq!(events[0]["kind"], "approved_late", "newest first");
        let json = check(&env, &["events", "list", "--limit", "3", "--json"], 0, &[]).json();
        assert_eq!(json.as_array().unwrap().len(), 3, "{label}");

        // Bad filters are usage errors.
        let bad: &[&[&str]] = &[
            &["charges", "list", "--subscription", "nope"],
            &["events", "list", "--subscription", "999999"],
            &["subscription", "show", "nope"],
            &["charges", "list", "--state", "bogus"],
            &["subscription", "list", "--status", "bogus"],
            &["subscription", "list", "--limit", "0"],
        ];
        for args in bad {
            check(&env, args, 2, &[]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_cancel_write_only_the_status() {
    for env in envs("admin_status").await {
        let label = env.label;
        let store = &env.store;
        let id = store
            .insert_subscription(new_row("cust-s", "active", |_| {}))
            .await
            .unwrap();
        let ids = id.to_string();

        // (command, key, exit code, status afterwards, expected output)
        let steps: &[(&str, &str, i32, &str, &str)] = &[
            ("pause", "cust-s", 0, "paused", "active -> paused"),
            ("pause", &ids, 2, "paused", "already paused"),
            ("resume", &ids, 0, "active", "paused -> active"),
            ("resume", "cust-s", 2, "active", "already active"),
            ("cancel", "cust-s", 0, "cancelled", "active -> cancelled"),
            ("resume", "cust-s", 2, "cancelled", "cannot be resumed"),
            ("pause", "cust-s", 2, "cancelled", "cancelled"),
            ("cancel", "cust-s", 2, "cancelled", "already cancelled"),
        ];
        for (cmd, key, code, status, want) in steps {
            let before = row_json(store, id).await;
            check(&env, &["subscription", *cmd, *key], *code, &[*want]);
            let after = row_json(store, id).await;
            assert_eq!(after["status"], *status, "{label}: {cmd} {key}");
            assert_only_status_changed(&before, &after, &format!("{label}: {cmd} {key}"));
        }

        // Statuses nicebill sets: what resuming, pausing and cancelling them does.
        let ended = store
            .insert_subscription(new_row("cust-ended", "active", |r| r.max_cycles = Some(1)))
            .await
            .unwrap();
        let past_due = store
            .insert_subscription(new_row("cust-past-due", "active", |_| {}))
            .await
            .unwrap();
        let card_invalid = store
            .insert_subscription(new_row("cust-card", "active", |_| {}))
            .await
            .unwrap();
        let invalid = store
            .insert_subscription(new_row("cust-invalid", "active", |r| r.amount = 0))
            .await
            .unwrap();
        store.notice(Utc::now()).await.unwrap();
        let claimed = store
            .claim_due("admin-test", Utc::now(), Duration::from_secs(60), 10)
            .await
            .unwrap();
        assert_eq!(
            claimed.iter().map(|r| r.id.0).collect::<Vec<_>>(),
            [ended, past_due, card_invalid, invalid]
        );
        let verdict = |id: i64, status: SubscriptionStatus, next_cycle: u32| Reschedule {
            subscription_id: SubscriptionId(id),
            bookkeeping: Bookkeeping {
                next_cycle: Cycle(next_cycle),
                next_charge_at: None,
                cycle_attempts: 0,
                cycle_declines: 0,
                status: Some((status, format!("set by the test: {status}"))),
            },
            consumed_pause: None,
            events: vec![],
            remove_billkey: None,
        };
        let n = store
            .reschedule(
                "admin-test",
                Utc::now(),
                vec![
                    verdict(ended, SubscriptionStatus::Ended, 2),
                    verdict(past_due, SubscriptionStatus::PastDue, 1),
                    verdict(card_invalid, SubscriptionStatus::CardInvalid, 1),
                    verdict(invalid, SubscriptionStatus::Invalid, 1),
                ],
            )
            .await
            .unwrap();
        assert_eq!(n, 4);
        let steps: &[(&str, i64, i32, &str, &str)] = &[
            ("pause", ended, 2, "ended", "nothing to pause"),
            ("resume", ended, 2, "ended", "no cycle left"),
            ("cancel", ended, 0, "cancelled", "ended -> cancelled"),
            ("pause", past_due, 2, "past_due", "not being charged"),
            ("resume", past_due, 0, "active", "past_due -> active"),
            (
                "resume",
                card_invalid,
                0,
                "active",
                "permanent card failure",
            ),
            ("resume", invalid, 2, "invalid", "amount"),
            ("cancel", invalid, 0, "cancelled", "invalid -> cancelled"),
        ];
        for (cmd, id, code, status, want) in steps {
            let before = row_json(store, *id).await;
            check(
                &env,
                &["subscription", *cmd, &id.to_string()],
                *code,
                &[*want],
            );
            let after = row_json(store, *id).await;
            assert_eq!(after["status"], *status, "{label}: {cmd} {id}");
            assert_only_status_changed(&before, &after, &format!("{label}: {cmd} {id}"));
        }

        // --json, and keys that name no row or two rows.
        let other = store
            .insert_subscription(new_row("cust-json", "active", |_| {}))
            .await
            .unwrap();
        let json = check(
            &env,
            &["subscription", "pause", "cust-json", "--json"],
            0,
            &[],
        )
        .json();
        assert_eq!(
            json,
            serde_json::json!({
                "id": other,
                "external_id": "cust-json",
                "previous_status": "active",
                "status": "paused",
            }),
            "{label}"
        );
        check(
            &env,
            &["subscription", "cancel", "nope"],
            2,
            &["no subscription"],
        );
        store
            .insert_subscription(new_row(&other.to_string(), "active", |_| {}))
            .await
            .unwrap();
        check(
            &env,
            &["subscription", "resume", &other.to_string()],
            2,
            &["ambiguous"],
        );
        assert_eq!(row_json(store, other).await["status"], "paused", "{label}");
    }
}

/// The merchant's columns other than `status` are untouched (nicebill's own state may move:
/// resuming a subscription nicebill stopped is done in nicebill's state).
fn assert_only_status_changed(before: &Value, after: &Value, context: &str) {
    let (Value::Object(b), Value::Object(a)) = (before, after) else {
        panic!("rows are objects");
    };
    for k in nicebill::storage::merchant::COLUMNS {
        if k != "status" {
            assert_eq!(b.get(k), a.get(k), "{context}: column {k} changed");
        }
    }
}

#[test]
fn every_command_and_flag_has_help() {
    let commands: &[&[&str]] = &[
        &["subscription", "add"],
        &["subscription", "list"],
        &["subscription", "show"],
        &["subscription", "pause"],
        &["subscription", "resume"],
        &["subscription", "cancel"],
        &["charges", "list"],
        &["charges", "doubles"],
        &["events", "list"],
    ];
    for cmd in commands {
        let out = Command::new(env!("CARGO_BIN_EXE_nicebill"))
            .args(*cmd)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--json"), "{cmd:?}: {help}");
        // A flag's help follows it on the same line, or (in the long layout) on the next one.
        let lines: Vec<&str> = help.lines().map(str::trim).collect();
        for (i, t) in lines.iter().enumerate() {
            if !t.starts_with("--") || t.starts_with("--help") {
                continue;
            }
            let words = t.split_whitespace().count();
            let inline = words > if t.contains('<') { 2 } else { 1 };
            let next = lines.get(i + 1).copied().unwrap_or("");
            let below = !next.is_empty() && !next.starts_with('-');
            assert!(inline || below, "{cmd:?}: no help for {t:?}");
        }
    }
}
