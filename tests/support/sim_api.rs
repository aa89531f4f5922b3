//! The simulator's control endpoints (`/_sim/…`) and a client for a simulator process.

use std::collections::HashMap;
use std::sync::Arc;

use nicebill::gateway::nicepay::{Charset, EdiType, NicepayClient};
use nicebill::sim::{LedgerEntry, RemovalEntry};

/// A client (EUC-KR, JSON) of the simulator at `url`, as the tests' merchant.
pub fn client_at(url: &str) -> NicepayClient {
    NicepayClient::new(
        super::settings(url, Charset::EucKr, EdiType::Json),
        Arc::new(nicebill::clock::SystemClock),
    )
    .unwrap()
}

/// Every approval the simulator recorded.
pub async fn ledger(sim_url: &str) -> Vec<LedgerEntry> {
    let body = reqwest::get(format!("{sim_url}/_sim/ledger"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Every billkey removal the simulator carried out.
pub async fn removals(sim_url: &str) -> Vec<RemovalEntry> {
    let body = reqwest::get(format!("{sim_url}/_sim/removals"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Replaces the simulator's fault rules (a JSON array of `{"mode", "api", …}`).
pub async fn set_faults(sim_url: &str, rules: &str) {
    let response = reqwest::Client::new()
        .post(format!("{sim_url}/_sim/faults"))
        .body(rules.to_owned())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{rules}: {response:?}");
}

/// Ledgers of two simulator lifetimes, as one: each TID once (TIDs are unique, so a TID in
/// both must be the same approval).
pub fn union_ledgers(before: Vec<LedgerEntry>, after: Vec<LedgerEntry>) -> Vec<LedgerEntry> {
    let mut seen: HashMap<String, LedgerEntry> = HashMap::new();
    let mut all = Vec::new();
    for entry in before.into_iter().chain(after) {
        match seen.get(&entry.tid) {
            Some(prior) => assert_eq!(prior, &entry, "TID {} differs", entry.tid),
            None => {
                seen.insert(entry.tid.clone(), entry.clone());
                all.push(entry);
            }
        }
    }
    all
}

/// Requests the simulator received for `api` (`billkey_remove`, `approve`, …).
pub async fn requests(sim_url: &str, api: &str) -> u64 {
    let body = reqwest::get(format!("{sim_url}/_sim/requests"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let counts: std::collections::BTreeMap<String, u64> = serde_json::from_slice(&body).unwrap();
    counts.get(api).copied().unwrap_or(0)
}
