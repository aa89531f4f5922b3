//! The billing demo: months of subscriptions charged by the real engine against the built-in
//! simulator, on a temporary SQLite database and a fast clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};

use super::CliError;
use super::demo::{DemoArgs, demo_gateway};
use crate::billing::engine::{Engine, EngineSettings, PassReport};
use crate::billing::plan::Policy;
use crate::clock::{Clock, ManualClock};
use crate::domain::{CardDetails, Moid};
use crate::gateway::nicepay::{Buyer, IssueRequest};
use crate::sim::{SimConfig, SimHandle};
use crate::storage::models::NewSubscription;
use crate::storage::{DbUrl, Store};

/// One demo subscription: who it is, which test card, what happens to it.
struct Plan {
    external_id: &'static str,
    card: &'static str,
    story: &'static str,
    goods_name: &'static str,
    amount: i64,
    /// Anchor, Korea time.
    anchor: &'static str,
    /// Cancelled by the "merchant" on this day of the simulation.
    cancel_on_day: Option<i64>,
}

const PLANS: &[Plan] = &[
    Plan {
        external_id: "demo-basic",
        card: "9410123456780000",
        story: "approves",
        goods_name: "월간 구독 (베이직)",
        amount: 9_900,
        anchor: "2027-01-03 09:00",
        cancel_on_day: None,
    },
    Plan {
        external_id: "demo-month-end",
        card: "5361234512345678",
        story: "approves; anchored on Jan 31",
        goods_name: "월간 구독 (프리미엄)",
        amount: 19_900,
        anchor: "2027-01-31 09:00",
        cancel_on_day: None,
    },
    Plan {
        external_id: "demo-recovers",
        card: "4000000000000005",
        story: "declines, recovers in dunning",
        goods_name: "정기 배송",
        amount: 14_500,
        anchor: "2027-01-10 09:00",
        cancel_on_day: None,
    },
    Plan {
        external_id: "demo-lost-card",
        card: "4000000000000004",
        story: "lost/stolen: permanent",
        goods_name: "월간 구독",
        amount: 4_900,
        anchor: "2027-01-12 09:00",
        cancel_on_day: None,
    },
    Plan {
        external_id: "demo-no-funds",
        card: "4000000000000002",
        story: "insufficient balance",
        goods_name: "월간 구독",
        amount: 29_000,
        anchor: "2027-01-15 09:00",
        cancel_on_day: None,
    },
    Plan {
        external_id: "demo-cancelled",
        card: "9410123456780011",
        story: "cancelled in March",
        goods_name: "월간 구독",
        amount: 7_000,
        anchor: "2027-01-20 09:00",
        cancel_on_day: Some(70),
    },
];

fn kst(text: &str) -> Result<DateTime<Utc>, CliError> {
    let naive = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M")
        .map_err(|e| CliError::Usage(format!("demo anchor {text:?}: {e}")))?;
    chrono_tz::Asia::Seoul
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| CliError::Usage(format!("demo anchor {text:?} is ambiguous")))
}

fn fail(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("demo: {what}: {e}"))
}

fn won(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

pub async fn run(args: &DemoArgs) -> Result<(), CliError> {
    let months = args.months;
    let started = std::time::Instant::now();
    let start = kst("2027-01-01 00:00")?;
    let clock = ManualClock::new(start);
    let mut sim_config = SimConfig::new(([127, 0, 0, 1], 0).into());
    sim_config.clock = Arc::new(clock.clone());
    let sim = SimHandle::start(sim_config).await?;
    let result = simulate(&sim, &clock, months, args).await;
    sim.shutdown().await;
    result?;
    println!("\n(finished in {:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

async fn simulate(
    sim: &SimHandle,
    clock: &ManualClock,
    months: u32,
    args: &DemoArgs,
) -> Result<(), CliError> {
    // Declared first, so dropped (and deleted) after everything that uses the database.
    let dir = tempfile::Builder::new()
        .prefix("nicebill-demo-")
        .tempdir()?;
    let url = DbUrl::Sqlite(dir.path().join("demo.db"));
    let store = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || Store::open(url, 4))
            .await
            .map_err(|e| fail("database", e))?
            .map_err(|e| fail("database", e))?
    };
    store.migrate().await.map_err(|e| fail("migrations", e))?;

    let shared_clock: crate::clock::SharedClock = Arc::new(clock.clone());
    let (client, who) = demo_gateway(sim, args, shared_clock.clone())?;

    println!("nicebill demo: {months} months of billing, simulated on a fast clock");
    println!("  database   {url} (temporary)");
    println!(
        "  NICEPAY    built-in simulator at {} ({who})",
        sim.base_url()
    );
    println!("  dunning    retry after 1, 3 and 5 days, then past_due\n");

    let mut ids = Vec::new();
    for plan in PLANS {
        let card = CardDetails::new(plan.card, "30", "12", "880229", "37")?;
        let issued = client
            .issue_billkey(&IssueRequest {
                moid: Moid::new(format!("{}-billkey", plan.external_id))?,
                card,
                buyer: Buyer::default(),
            })
            .await
            .map_err(|e| fail("billkey issue", e))?;
        let bid = issued
            .data
            .map(|d| d.bid)
            .ok_or_else(|| fail("billkey issue", issued.result_msg))?;
        let id = store
            .insert_subscription(NewSubscription::monthly(
                plan.external_id,
                bid.as_str(),
                plan.amount,
                plan.goods_name,
                kst(plan.anchor)?.naive_utc(),
            ))
            .await
            .map_err(|e| fail("insert subscription", e))?;
        ids.push(id);
    }

    let mut engine_settings =
        EngineSettings::new("demo".into(), Policy::default(), Duration::from_secs(7));
    engine_settings.concurrency = 4;
    engine_settings.batch = 4;
    let engine = Engine::new(store.clone(), client, shared_clock, engine_settings);

    // One pass every six simulated hours.
    let start = clock.now();
    let end = start
        .checked_add_months(chrono::Months::new(months))
        .unwrap_or(start);
    let mut month_rows: Vec<(String, PassReport)> = Vec::new();
    let mut step = 0i64;
    loop {
        let now = start + chrono::Duration::hours(6 * step);
        if now >= end {
            break;
        }
        clock.set(now);
        for (plan, id) in PLANS.iter().zip(&ids) {
            if plan.cancel_on_day.is_some_and(|d| step == d * 4) {
                store
                    .set_status(*id, "cancelled")
                    .await
                    .map_err(|e| fail("cancel", e))?;
            }
        }
        let report = engine.pass().await.map_err(|e| fail("pass", e))?;
        let month = now
            .with_timezone(&chrono_tz::Asia::Seoul)
            .format("%Y-%m")
            .to_string();
        match month_rows.last_mut() {
            Some((m, r)) if *m == month => r.merge(&report),
            _ => month_rows.push((month, report)),
        }
        step += 1;
    }

    let mut by_month = Table::new();
    by_month.load_preset(UTF8_FULL_CONDENSED).set_header([
        "month",
        "charged",
        "declined",
        "card failures",
        "billkeys removed",
    ]);
    for (month, r) in &month_rows {
        by_month.add_row([
            month.clone(),
            r.charged.to_string(),
            r.declined.to_string(),
            r.failed.to_string(),
            r.removed.to_string(),
        ]);
    }
    println!("{by_month}\n");

    let charges = store.charges(None).await.map_err(|e| fail("charges", e))?;
    let removals = store.removals().await.map_err(|e| fail("removals", e))?;
    let subs = store
        .subscriptions()
        .await
        .map_err(|e| fail("subscriptions", e))?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "subscription",
        "card",
        "charges",
        "declines",
        "retries",
        "charged KRW",
        "status",
        "billkey",
    ]);
    let (mut total_charges, mut total_declines, mut total_retries, mut total_won) = (0, 0, 0, 0i64);
    for (plan, id) in PLANS.iter().zip(&ids) {
        let mine: Vec<_> = charges
            .iter()
            .filter(|c| c.subscription_id == *id)
            .collect();
        let approved = mine.iter().filter(|c| c.state == "approved").count();
        let declined = mine.iter().filter(|c| c.state == "declined").count();
        let retries = mine.iter().filter(|c| c.attempt > 1).count();
        let amount: i64 = mine
            .iter()
            .filter(|c| c.state == "approved")
            .map(|c| c.amount)
            .sum();
        let status = subs
            .iter()
            .find(|s| s.id == *id)
            .map(|s| s.status.clone())
            .unwrap_or_default();
        let billkey = match removals.iter().find(|r| r.subscription_id == *id) {
            Some(r) if r.state == "done" => {
                format!("removed ({})", r.result_code.as_deref().unwrap_or("-"))
            }
            Some(_) => "removal pending".into(),
            None => "kept".into(),
        };
        total_charges += approved;
        total_declines += declined;
        total_retries += retries;
        total_won += amount;
        table.add_row(vec![
            Cell::new(plan.external_id),
            Cell::new(plan.story),
            Cell::new(approved).set_alignment(CellAlignment::Right),
            Cell::new(declined).set_alignment(CellAlignment::Right),
            Cell::new(retries).set_alignment(CellAlignment::Right),
            Cell::new(won(amount)).set_alignment(CellAlignment::Right),
            Cell::new(status),
            Cell::new(billkey),
        ]);
    }
    table.add_row(vec![
        Cell::new("total"),
        Cell::new(""),
        Cell::new(total_charges).set_alignment(CellAlignment::Right),
        Cell::new(total_declines).set_alignment(CellAlignment::Right),
        Cell::new(total_retries).set_alignment(CellAlignment::Right),
        Cell::new(won(total_won)).set_alignment(CellAlignment::Right),
        Cell::new(""),
        Cell::new(""),
    ]);
    println!("{table}");

    // The simulator's ledger is the gateway's truth: it must match the charges table.
    let ledger = sim.ledger();
    let approved = charges.iter().filter(|c| c.state == "approved").count();
    println!(
        "\nsimulator ledger: {} approvals; charges table: {approved} approved, {} attempts in all; {}",
        ledger.len(),
        charges.len(),
        if ledger.len() == approved {
            "they agree"
        } else {
            "THEY DISAGREE"
        }
    );
    if ledger.len() != approved {
        return Err(CliError::Usage(
            "demo: the ledger and the charges table disagree".into(),
        ));
    }
    let month_end: Vec<String> = ledger
        .iter()
        .filter(|l| l.moid.starts_with(&format!("S{}-", ids[1])))
        .map(|l| {
            l.approved_at
                .with_timezone(&chrono_tz::Asia::Seoul)
                .format("%b %d")
                .to_string()
        })
        .collect();
    println!("demo-month-end was charged on: {}", month_end.join(", "));
    println!(
        "try: nicebill demo --months 12, nicebill demo --api v1, nicebill demo --protocol, nicebill --help"
    );
    Ok(())
}
