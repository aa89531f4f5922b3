//! The simulator's HTTP/1 server: routes API posts to [`SimState`], injects faults and
//! latency, and serves the `/_sim/` control endpoints.
//!
//! Faults are decided here, not in the protocol logic, because they model the network and
//! NICEPAY's front end: what is processed is always processed by the same rules; only whether
//! and how the answer travels back changes. A dropped connection is made by returning an
//! error from the service, which makes hyper close the connection without answering.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::state::{LedgerEntry, RemovalEntry, SimState, Tamper};
use super::{FaultMode, FaultRule, SimConfig, Throttle, ThrottleAnswer};
use crate::gateway::nicepay::Api;

/// Larger bodies are refused: real requests are a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;
/// How long a connection may take to finish its request once shutdown began.
const DRAIN: Duration = Duration::from_secs(1);

/// The body of a [`FaultMode::Garbage`] answer: what a proxy error page looks like, neither
/// JSON nor `Key=Value`.
pub(super) const GARBAGE: &str =
    "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>";
pub(super) const ERROR_PAGE: &str = "<html><head><title>500 Internal Server Error</title></head>\
     <body><h1>Internal Server Error</h1></body></html>";

pub(super) type Body = Full<Bytes>;

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // State stays consistent between statements, so a panic elsewhere leaves nothing half done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fault rules and the seeded draws that decide them.
pub(super) struct FaultPlan {
    rules: Vec<FaultRule>,
    rng: StdRng,
}

impl FaultPlan {
    pub(super) fn new(rules: Vec<FaultRule>, seed: u64) -> Self {
        Self {
            rules,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The fault for one request to `api`, if any: the first rule that matches the API, has
    /// count left and wins its draw. Firing uses up one of its count.
    pub(super) fn choose(&mut self, api: Api) -> Option<FaultMode> {
        self.choose_for(api, false)
    }

    /// As [`FaultPlan::choose`], for a v1 call mapped onto `api` (see [`super::v1`]): there
    /// `bad_signature` applies to every call whose answer is signed (approve, cancel and
    /// netcancel, lookups), where for the legacy API it applies to cancel only.
    pub(super) fn choose_v1(&mut self, api: Api) -> Option<FaultMode> {
        self.choose_for(api, true)
    }

    fn choose_for(&mut self, api: Api, v1: bool) -> Option<FaultMode> {
        for rule in &mut self.rules {
            let signed = match rule.mode {
                FaultMode::BadCancelSignature => api == Api::Cancel,
                FaultMode::BadSignature if v1 => {
                    matches!(api, Api::Approve | Api::Cancel | Api::Status)
                }
                FaultMode::BadSignature => api == Api::Cancel,
                _ => true,
            };
            let applies = rule.api.is_none_or(|a| a == api) && signed && rule.count != Some(0);
            if !applies {
                continue;
            }
            if self.rng.random::<f64>() < rule.probability {
                if let Some(count) = rule.count.as_mut() {
                    *count -= 1;
                }
                return Some(rule.mode);
            }
        }
        None
    }
}

/// What the server task and the handle share.
pub(super) struct Shared {
    pub(super) state: Mutex<SimState>,
    pub(super) faults: Mutex<FaultPlan>,
    pub(super) latency: Mutex<Duration>,
    pub(super) hold: Mutex<Duration>,
    pub(super) counts: Mutex<BTreeMap<String, u64>>,
    throttle: Mutex<Option<(Throttle, VecDeque<std::time::Instant>)>>,
}

impl Shared {
    pub(super) fn new(config: &SimConfig) -> Self {
        // Distinct streams for ids and faults, so that adding a fault rule does not change
        // the BIDs and TIDs of a seeded run.
        let mut state = SimState::new(&config.merchants, Arc::clone(&config.clock), config.seed);
        state.v1 = super::v1::V1State::new(config.v1_shops.clone(), config.v1_token_lifetime);
        Self {
            state: Mutex::new(state),
            faults: Mutex::new(FaultPlan::new(
                config.faults.clone(),
                config.seed ^ 0x5eed_fa17,
            )),
            latency: Mutex::new(config.latency),
            hold: Mutex::new(config.hold),
            counts: Mutex::new(BTreeMap::new()),
            throttle: Mutex::new(config.throttle.map(|t| (t, VecDeque::new()))),
        }
    }

    pub(super) fn set_throttle(&self, throttle: Option<Throttle>) {
        *lock(&self.throttle) = throttle.map(|t| (t, VecDeque::new()));
    }

    /// Whether a request arriving now is over the rate (then counted as `throttled`), and
    /// how it is refused. A request let through takes a place in the window.
    pub(super) fn over_rate(&self) -> Option<ThrottleAnswer> {
        let mut throttle = lock(&self.throttle);
        let (limit, window) = throttle.as_mut()?;
        let now = std::time::Instant::now();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            window.pop_front();
        }
        if window.len() < limit.per_second as usize {
            window.push_back(now);
            return None;
        }
        let answer = limit.answer;
        drop(throttle);
        *lock(&self.counts).entry("throttled".into()).or_default() += 1;
        Some(answer)
    }

    pub(super) fn ledger(&self) -> Vec<LedgerEntry> {
        lock(&self.state).ledger().to_vec()
    }

    pub(super) fn removals(&self) -> Vec<RemovalEntry> {
        lock(&self.state).removals().to_vec()
    }

    pub(super) fn set_faults(&self, rules: Vec<FaultRule>) {
        lock(&self.faults).rules = rules;
    }

    pub(super) fn set_latency(&self, latency: Duration) {
        *lock(&self.latency) = latency;
    }

    pub(super) fn set_hold(&self, hold: Duration) {
        *lock(&self.hold) = hold;
    }

    pub(super) fn request_counts(&self) -> BTreeMap<String, u64> {
        lock(&self.counts).clone()
    }

    pub(super) fn seed_foreign_approval(
        &self,
        tid: &str,
        moid: &str,
        amount: i64,
    ) -> Result<(), String> {
        lock(&self.state).seed_foreign_approval(tid, moid, amount)
    }

    pub(super) fn set_v1_token_lifetime(&self, lifetime: Duration) {
        lock(&self.state).v1.set_token_lifetime(lifetime);
    }

    pub(super) fn reset(&self) {
        lock(&self.state).reset();
        lock(&self.faults).rules.clear();
    }

    fn count(&self, api: Api) {
        *lock(&self.counts)
            .entry(api.as_str().to_owned())
            .or_default() += 1;
    }
}

/// Resolves once shutdown has been asked for (or the handle is gone).
pub(super) async fn stopped(mut stop: watch::Receiver<bool>) {
    // An error means the sender is gone: that is a stop as well.
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts connections until stopped, then waits for every connection to end.
pub(super) async fn run(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    let stop_signal = stopped(stop.clone());
    tokio::pin!(stop_signal);
    loop {
        tokio::select! {
            () = &mut stop_signal => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, Arc::clone(&shared), stop.clone()));
                }
                Err(e) => {
                    // Running out of file descriptors, for instance: wait a little rather than
                    // spin.
                    tracing::warn!("simulator accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    tracing::info!("nicepay simulator stopped");
}

async fn connection(stream: TcpStream, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let service_stop = stop.clone();
    let service = service_fn(move |req| respond(Arc::clone(&shared), service_stop.clone(), req));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(stop) => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(DRAIN, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        // Expected for dropped-connection faults and clients that hang up.
        tracing::debug!("simulator connection ended: {e}");
    }
}

/// Returned by the service to make hyper close the connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("simulated fault: {0}")]
pub(super) struct Dropped(pub(super) &'static str);

async fn respond(
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Dropped> {
    let path = req.uri().path().to_owned();
    if let Some(name) = path.strip_prefix("/_sim/") {
        let name = name.to_owned();
        return Ok(control(&shared, &name, req).await);
    }
    if path.starts_with("/v1/") || path == "/v1" {
        return super::v1::http::respond(shared, stop, req).await;
    }
    let Some(api) = Api::from_path(&path) else {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    };
    shared.count(api);
    if req.method() != Method::POST {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return Ok(response);
    }
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(response) => return Ok(response),
    };
    match shared.over_rate() {
        None => {}
        Some(ThrottleAnswer::Http429) => {
            return Ok(text(StatusCode::TOO_MANY_REQUESTS, "too many requests\n"));
        }
        Some(ThrottleAnswer::V003) => {
            let answer = SimState::too_many_requests(&body);
            return Ok(response(
                StatusCode::OK,
                &answer.content_type(),
                answer.body().into(),
            ));
        }
    }
    answer_with_faults(
        &shared,
        &stop,
        api.as_str(),
        |faults| faults.choose(api),
        move |state, fault| {
            let tamper = match fault {
                Some(FaultMode::BadCancelSignature | FaultMode::BadSignature) => {
                    Tamper::CancelSignature
                }
                _ => Tamper::None,
            };
            state.handle(api, &body, tamper)
        },
    )
    .await
}

/// An answer the fault modes act on: the legacy API's form answer, v1's JSON answer.
pub(super) trait SimAnswer: Send + 'static {
    fn result_code(&self) -> &str;
    /// `long_result_msg`: the message padded to 500 characters.
    fn lengthen_result_msg(&mut self);
    /// The answer as sent, its body after `padding` spaces (`oversized`).
    fn to_response(&self, padding: usize) -> Response<Body>;
}

impl SimAnswer for super::state::Answer {
    fn result_code(&self) -> &str {
        super::state::Answer::result_code(self)
    }

    fn lengthen_result_msg(&mut self) {
        let msg = self.result_msg().to_owned();
        let filler = "가".repeat(500usize.saturating_sub(msg.chars().count()));
        self.fields
            .insert("ResultMsg".into(), format!("{msg}{filler}"));
    }

    fn to_response(&self, padding: usize) -> Response<Body> {
        let mut body = vec![b' '; padding];
        body.extend_from_slice(&self.body());
        response(StatusCode::OK, &self.content_type(), body.into())
    }
}

/// One call of either API through the simulator's latency and faults: the latency, then the
/// fault `choose` picks (a 500 or a dropped request ends there), then `process` makes the answer
/// (after the hold, for `hold_before`, in a task of its own: the request is processed when the
/// hold is over even if the client has hung up by then, which ends this connection and drops
/// this future), then the faults that act on the answer.
pub(super) async fn answer_with_faults<A: SimAnswer>(
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    call: &'static str,
    choose: impl FnOnce(&mut FaultPlan) -> Option<FaultMode>,
    process: impl FnOnce(&mut SimState, Option<FaultMode>) -> A + Send + 'static,
) -> Result<Response<Body>, Dropped> {
    let latency = *lock(&shared.latency);
    if !latency.is_zero() {
        tokio::select! {
            () = super::delay::delay(latency) => {}
            () = stopped(stop.clone()) => return Err(Dropped("shutting down")),
        }
    }
    let fault = choose(&mut lock(&shared.faults));
    if let Some(mode) = fault {
        tracing::debug!(call, fault = mode.as_str(), "simulator fault");
    }
    match fault {
        Some(FaultMode::Http500) => {
            return Ok(response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/html",
                ERROR_PAGE.into(),
            ));
        }
        Some(FaultMode::DropBefore) => return Err(Dropped("drop_before")),
        _ => {}
    }
    let mut answer = if fault == Some(FaultMode::HoldBefore) {
        let hold = *lock(&shared.hold);
        let held = Arc::clone(shared);
        let stop = stop.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(hold) => {}
                () = stopped(stop) => return None,
            }
            let answer = process(&mut lock(&held.state), fault);
            tracing::debug!(
                call,
                result_code = answer.result_code(),
                "held request processed"
            );
            Some(answer)
        });
        match task.await {
            Ok(Some(answer)) => answer,
            _ => return Err(Dropped("hold_before: shutting down")),
        }
    } else {
        process(&mut lock(&shared.state), fault)
    };
    if fault == Some(FaultMode::LongResultMsg) {
        answer.lengthen_result_msg();
    }
    match fault {
        Some(FaultMode::DropAfter) => Err(Dropped("drop_after")),
        Some(FaultMode::Oversized) => Ok(answer.to_response(super::OVERSIZED_PADDING)),
        Some(FaultMode::HangAfter) => {
            stopped(stop.clone()).await;
            Err(Dropped("hang_after"))
        }
        Some(FaultMode::Garbage) => Ok(response(StatusCode::OK, "text/html", GARBAGE.into())),
        _ => Ok(answer.to_response(0)),
    }
}

pub(super) async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("cannot read the request body: {e}\n"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Latency {
    ms: u64,
}

/// The body of `POST /_sim/hold`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hold {
    ms: u64,
}

/// The body of `POST /_sim/foreign_approval`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForeignApproval {
    tid: String,
    moid: String,
    amount: i64,
}

async fn control(shared: &Shared, name: &str, req: Request<Incoming>) -> Response<Body> {
    let ok = || json(StatusCode::OK, &serde_json::json!({ "ok": true }));
    match (req.method().clone(), name) {
        (Method::GET, "health") => ok(),
        (Method::GET, "ledger") => json(StatusCode::OK, &shared.ledger()),
        (Method::GET, "removals") => json(StatusCode::OK, &shared.removals()),
        (Method::GET, "requests") => json(StatusCode::OK, &shared.request_counts()),
        (Method::POST, "faults") => {
            let rules = match read_json::<Vec<FaultRule>>(req).await {
                Ok(rules) => rules,
                Err(response) => return response,
            };
            if let Some((i, e)) = rules
                .iter()
                .enumerate()
                .find_map(|(i, r)| r.validate().err().map(|e| (i, e)))
            {
                return bad_request(&format!("rule {i}: {e}"));
            }
            tracing::info!(rules = ?rules, "simulator fault rules replaced");
            shared.set_faults(rules);
            ok()
        }
        (Method::POST, "throttle") => {
            let throttle = match read_json::<Option<Throttle>>(req).await {
                Ok(throttle) => throttle,
                Err(response) => return response,
            };
            if throttle.is_some_and(|t| t.per_second == 0) {
                return bad_request("per_second must be at least 1 (send null for no limit)");
            }
            tracing::info!(?throttle, "simulator rate limit set");
            shared.set_throttle(throttle);
            ok()
        }
        (Method::POST, "latency") => {
            let latency = match read_json::<Latency>(req).await {
                Ok(latency) => latency,
                Err(response) => return response,
            };
            shared.set_latency(Duration::from_millis(latency.ms));
            ok()
        }
        (Method::POST, "hold") => {
            let hold = match read_json::<Hold>(req).await {
                Ok(hold) => hold,
                Err(response) => return response,
            };
            let hold = Duration::from_millis(hold.ms);
            if hold > super::MAX_HOLD {
                return bad_request(&format!(
                    "hold {} ms is longer than {} ms",
                    hold.as_millis(),
                    super::MAX_HOLD.as_millis()
                ));
            }
            shared.set_hold(hold);
            ok()
        }
        (Method::POST, "v1_token_lifetime") => {
            let lifetime = match read_json::<Latency>(req).await {
                Ok(lifetime) => lifetime,
                Err(response) => return response,
            };
            shared.set_v1_token_lifetime(Duration::from_millis(lifetime.ms));
            ok()
        }
        (Method::POST, "reset") => {
            shared.reset();
            ok()
        }
        (Method::POST, "foreign_approval") => {
            let seed = match read_json::<ForeignApproval>(req).await {
                Ok(seed) => seed,
                Err(response) => return response,
            };
            match shared.seed_foreign_approval(&seed.tid, &seed.moid, seed.amount) {
                Ok(()) => {
                    tracing::info!(tid = seed.tid, moid = seed.moid, "foreign approval seeded");
                    ok()
                }
                Err(e) => bad_request(&e),
            }
        }
        (
            _,
            "health" | "ledger" | "removals" | "requests" | "faults" | "latency" | "hold" | "reset"
            | "foreign_approval" | "v1_token_lifetime",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "wrong method\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let body = read_body(req).await?;
    serde_json::from_slice(&body).map_err(|e| bad_request(&format!("bad JSON: {e}")))
}

fn bad_request(message: &str) -> Response<Body> {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "ok": false, "error": message }),
    )
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", body.into()),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot serialise: {e}\n"),
        ),
    }
}

pub(super) fn text(status: StatusCode, body: &str) -> Response<Body> {
    response(
        status,
        "text/plain; charset=utf-8",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

pub(super) fn response(status: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let content_type = HeaderValue::from_str(content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimHandle;

    fn rule(mode: FaultMode, api: Option<Api>, count: Option<u32>, p: f64) -> FaultRule {
        FaultRule {
            mode,
            api,
            count,
            probability: p,
        }
    }

    #[test]
    fn fault_selection() {
        use FaultMode::*;
        // (rules, requests, expected faults)
        type Case = (Vec<FaultRule>, Vec<Api>, Vec<Option<FaultMode>>);
        let cases: Vec<Case> = vec![
            (vec![], vec![Api::Approve], vec![None]),
            (
                vec![rule(DropAfter, Some(Api::Approve), Some(2), 1.0)],
                vec![Api::Status, Api::Approve, Api::Approve, Api::Approve],
                vec![None, Some(DropAfter), Some(DropAfter), None],
            ),
            (
                vec![rule(Garbage, None, None, 1.0)],
                vec![Api::Status, Api::Cancel],
                vec![Some(Garbage), Some(Garbage)],
            ),
            (
                vec![rule(Http500, None, None, 0.0)],
                vec![Api::Approve; 3],
                vec![None; 3],
            ),
            (
                // Bad signature only ever hits cancel, even as an "any API" rule.
                vec![rule(BadCancelSignature, None, Some(1), 1.0)],
                vec![Api::Approve, Api::Status, Api::Cancel, Api::Cancel],
                vec![None, None, Some(BadCancelSignature), None],
            ),
            (
                // The first matching rule with count left wins; then the next one.
                vec![
                    rule(DropBefore, Some(Api::Approve), Some(1), 1.0),
                    rule(HangAfter, None, Some(1), 1.0),
                ],
                vec![Api::Approve, Api::Approve, Api::Approve],
                vec![Some(DropBefore), Some(HangAfter), None],
            ),
            (
                // A rule that loses its draw lets the next rule try.
                vec![
                    rule(DropBefore, None, None, 0.0),
                    rule(Garbage, None, None, 1.0),
                ],
                vec![Api::Status],
                vec![Some(Garbage)],
            ),
        ];
        for (i, (rules, requests, want)) in cases.into_iter().enumerate() {
            let mut plan = FaultPlan::new(rules, 0);
            let got: Vec<_> = requests.into_iter().map(|a| plan.choose(a)).collect();
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn bad_signature_hits_signed_answers_only() {
        let calls = [
            Api::BillkeyIssue,
            Api::Approve,
            Api::BillkeyRemove,
            Api::Cancel,
            Api::Status,
        ];
        let fired = |v1: bool| {
            calls
                .iter()
                .map(|api| {
                    let mut plan =
                        FaultPlan::new(vec![rule(FaultMode::BadSignature, None, None, 1.0)], 0);
                    if v1 {
                        plan.choose_v1(*api).is_some()
                    } else {
                        plan.choose(*api).is_some()
                    }
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(fired(false), [false, false, false, true, false]);
        assert_eq!(fired(true), [false, true, false, true, true]);
    }

    #[test]
    fn fault_probability_is_seeded() {
        let draw = |seed| {
            let mut plan = FaultPlan::new(vec![rule(FaultMode::Garbage, None, None, 0.25)], seed);
            (0..4000)
                .map(|_| plan.choose(Api::Approve).is_some())
                .collect::<Vec<_>>()
        };
        let a = draw(1);
        assert_eq!(a, draw(1), "same seed, same faults");
        assert_ne!(a, draw(2));
        let fired = a.iter().filter(|f| **f).count();
        assert!((800..1200).contains(&fired), "{fired} of 4000 at p=0.25");
        // With a count, the probability applies until the count is used up.
        let mut plan = FaultPlan::new(vec![rule(FaultMode::Garbage, None, Some(5), 0.5)], 3);
        let fired = (0..1000)
            .filter(|_| plan.choose(Api::Status).is_some())
            .count();
        assert_eq!(fired, 5);
    }

    async fn get(client: &reqwest::Client, url: String) -> (u16, String) {
        let r = client.get(url).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn post(client: &reqwest::Client, url: String, body: &str) -> (u16, String) {
        let r = client.post(url).body(body.to_owned()).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    #[tokio::test]
    async fn routes_and_control_endpoints() {
        let sim = SimHandle::start(SimConfig::new(([127, 0, 0, 1], 0).into()))
            .await
            .unwrap();
        let base = sim.base_url();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        let http = reqwest::Client::new();

        assert_eq!(get(&http, format!("{base}/nope")).await.0, 404);
        assert_eq!(get(&http, format!("{base}/_sim/nope")).await.0, 404);
        let status_path = Api::Status.path();
        assert_eq!(get(&http, format!("{base}{status_path}")).await.0, 405);
        assert_eq!(
            get(&http, format!("{base}/_sim/health")).await,
            (200, r#"{"ok":true}"#.to_owned())
        );
        assert_eq!(get(&http, format!("{base}/_sim/reset")).await.0, 405);

        // An API answer: EUC-KR JSON by default, Korean message included.
        let r = http
            .post(format!("{base}{status_path}"))
            .body("MID=nictest04m")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            r.headers()[CONTENT_TYPE],
            "application/json; charset=euc-kr"
        );
        let bytes = r.bytes().await.unwrap();
        let text = encoding_rs::EUC_KR.decode(&bytes).0;
        assert!(text.contains("\"ResultCode\":\"A110\""), "{text}");
        assert!(text.contains("필수 파라미터 누락: TID"), "{text}");

        // Faults through the control endpoint.
        let (code, body) = post(&http, format!("{base}/_sim/faults"), "[{").await;
        assert_eq!(code, 400);
        assert!(body.contains("bad JSON"), "{body}");
        let (code, body) = post(
            &http,
            format!("{base}/_sim/faults"),
            r#"[{"mode":"garbage","probability":2}]"#,
        )
        .await;
        assert_eq!(code, 400);
        assert!(body.contains("probability"), "{body}");
        let (code, _) = post(
            &http,
            format!("{base}/_sim/faults"),
            r#"[{"mode":"http500","api":"status","count":1}]"#,
        )
        .await;
        assert_eq!(code, 200);
        let (code, body) = post(&http, format!("{base}{status_path}"), "").await;
        assert_eq!(code, 500, "{body}");
        assert_eq!(post(&http, format!("{base}{status_path}"), "").await.0, 200);

        sim.set_faults(vec![rule(
            FaultMode::Garbage,
            Some(Api::Status),
            Some(1),
            1.0,
        )]);
        let (code, body) = post(&http, format!("{base}{status_path}"), "").await;
        assert_eq!(code, 200);
        assert!(body.starts_with("<html>"), "{body}");

        sim.set_faults(vec![rule(FaultMode::DropBefore, None, Some(1), 1.0)]);
        let dropped = http
            .post(format!("{base}{status_path}"))
            .body("")
            .send()
            .await;
        assert!(dropped.is_err(), "{dropped:?}");

        // Latency, reset, ledger, request counts.
        let (code, _) = post(&http, format!("{base}/_sim/latency"), r#"{"ms":30}"#).await;
        assert_eq!(code, 200);
        assert_eq!(
            post(&http, format!("{base}/_sim/latency"), r#"{"ms":-1}"#)
                .await
                .0,
            400
        );
        let started = std::time::Instant::now();
        post(&http, format!("{base}{status_path}"), "").await;
        assert!(started.elapsed() >= Duration::from_millis(30));
        sim.set_latency(Duration::ZERO);
        let hold = format!("{base}/_sim/hold");
        assert_eq!(post(&http, hold.clone(), r#"{"ms":2500}"#).await.0, 200);
        let (code, body) = post(&http, hold.clone(), r#"{"ms":3600001}"#).await;
        assert_eq!(code, 400);
        assert!(body.contains("longer than"), "{body}");
        assert_eq!(get(&http, hold).await.0, 405);
        sim.set_faults(vec![rule(FaultMode::Http500, None, None, 1.0)]);
        assert_eq!(post(&http, format!("{base}/_sim/reset"), "").await.0, 200);
        assert_eq!(post(&http, format!("{base}{status_path}"), "").await.0, 200);
        assert_eq!(
            get(&http, format!("{base}/_sim/ledger")).await,
            (200, "[]".to_owned())
        );
        assert_eq!(
            get(&http, format!("{base}/_sim/removals")).await,
            (200, "[]".to_owned())
        );
        let counts = sim.request_counts();
        assert_eq!(counts.get("status"), Some(&8), "{counts:?}");

        // Seeding a foreign approval: refused with the reason, then done, then shown.
        let url = format!("{base}/_sim/foreign_approval");
        let tid = "nictest04m01162612250900001234";
        assert_eq!(get(&http, url.clone()).await.0, 405);
        let (code, body) = post(
            &http,
            url.clone(),
            r#"{"tid":"short","moid":"x","amount":1}"#,
        )
        .await;
        assert_eq!(code, 400);
        assert!(body.contains("billing TID"), "{body}");
        let (code, _) = post(&http, url.clone(), r#"{"tid":"x","moid":"x"}"#).await;
        assert_eq!(code, 400);
        let seed = format!(r#"{{"tid":"{tid}","moid":"foreign-1","amount":5000}}"#);
        assert_eq!(post(&http, url.clone(), &seed).await.0, 200);
        let (code, body) = post(&http, url, &seed).await;
        assert_eq!(code, 400);
        assert!(body.contains("already used"), "{body}");
        let ledger = sim.ledger();
        assert_eq!(ledger.len(), 1);
        assert!(ledger[0].seeded && ledger[0].tid == tid && ledger[0].amount == 5000);
        sim.reset();
        assert_eq!(counts.get("approve"), None);
        let (code, body) = get(&http, format!("{base}/_sim/requests")).await;
        assert_eq!((code, body), (200, r#"{"status":8}"#.to_owned()));

        sim.shutdown().await;
    }

    #[tokio::test]
    async fn charges_with_the_real_client_and_lost_answers() {
        use crate::domain::{CardDetails, Krw, MerchantKey, Mid, Moid};
        use crate::gateway::nicepay::client::{BaseUrl, class_of};
        use crate::gateway::nicepay::{
            ApproveRequest, Buyer, Class, ClientSettings, IssueRequest, NicepayClient, TxState,
        };

        let sim = SimHandle::start(SimConfig::new(([127, 0, 0, 1], 0).into()))
            .await
            .unwrap();
        let (mid, key): (Mid, MerchantKey) = SimConfig::default_merchants().remove(0);
        let mut settings = ClientSettings::new(BaseUrl::parse(&sim.base_url()).unwrap(), mid, key);
        settings.read_timeout = Duration::from_millis(300);
        let client = NicepayClient::new(settings, Arc::new(crate::clock::SystemClock)).unwrap();
        let issued = client
            .issue_billkey(&IssueRequest {
                moid: Moid::new("srv-issue").unwrap(),
                card: CardDetails::new("4000000000000001", "30", "01", "", "").unwrap(),
                buyer: Buyer::default(),
            })
            .await
            .unwrap();
        let bid = issued.data.unwrap().bid;
        let approve = |tid, moid: &str| ApproveRequest {
            bid: bid.clone(),
            tid,
            moid: Moid::new(moid).unwrap(),
            amount: Krw::positive(9_900).unwrap(),
            goods_name: "월간 구독".into(),
            card_quota: "00".into(),
            interest_free: false,
            buyer: Buyer::default(),
            mall_reserved: None,
        };
        let ok = client
            .approve(&approve(client.new_tid(), "srv-1"))
            .await
            .unwrap();
        assert_eq!(ok.class, Class::Approved, "{}", ok.result_msg);

        // The answer is lost after the charge, and a hung answer times out: the status
        // lookup finds both charges.
        for (i, mode) in [FaultMode::DropAfter, FaultMode::HangAfter]
            .into_iter()
            .enumerate()
        {
            sim.set_faults(vec![rule(mode, Some(Api::Approve), Some(1), 1.0)]);
            let tid = client.new_tid();
            let result = client
                .approve(&approve(tid.clone(), &format!("srv-lost-{i}")))
                .await;
            assert_eq!(class_of(&result), Class::Unknown, "{mode:?}: {result:?}");
            let status = client.status(&tid).await.unwrap();
            assert_eq!(
                status.data.map(|s| s.state),
                Some(TxState::Approved),
                "{mode:?}"
            );
        }
        assert_eq!(sim.ledger().len(), 3);

        // A held approval lands late: the client gives up, a lookup finds nothing, and once the
        // hold is over the approval is recorded and found.
        sim.set_hold(Duration::from_secs(2));
        sim.set_faults(vec![rule(
            FaultMode::HoldBefore,
            Some(Api::Approve),
            Some(1),
            1.0,
        )]);
        let tid = client.new_tid();
        let result = client.approve(&approve(tid.clone(), "srv-late")).await;
        assert_eq!(class_of(&result), Class::Unknown, "{result:?}");
        let status = client.status(&tid).await.unwrap();
        assert_eq!(status.data.map(|s| s.state), Some(TxState::NotFound));
        assert_eq!(sim.ledger().len(), 3, "nothing recorded during the hold");
        let mut found = None;
        for _ in 0..100 {
            let status = client.status(&tid).await.unwrap();
            if status.data.as_ref().map(|s| s.state) == Some(TxState::Approved) {
                found = status.data;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(found.is_some(), "the held approval was never recorded");
        assert_eq!(sim.ledger().len(), 4);
        assert_eq!(sim.ledger()[3].moid, "srv-late");

        // A request still hanging does not keep shutdown waiting.
        sim.set_faults(vec![rule(FaultMode::HangAfter, None, None, 1.0)]);
        let url = format!("{}{}", sim.base_url(), Api::Status.path());
        let hung = tokio::spawn(async move { reqwest::Client::new().post(url).send().await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::time::timeout(Duration::from_secs(5), sim.shutdown())
            .await
            .expect("shutdown ends hung connections");
        assert!(hung.await.unwrap().is_err());
    }
}
