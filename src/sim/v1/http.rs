//! The v1 API's HTTP side: routing, authentication before anything else, throttle, latency,
//! faults and hold, as the legacy server does them.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{ALLOW, AUTHORIZATION, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::watch;

use super::calls::{self, Call, Fields, V1Answer};
use crate::sim::FaultMode;
use crate::sim::ThrottleAnswer;
use crate::sim::server::{
    Body, Dropped, ERROR_PAGE, GARBAGE, Shared, lock, read_body, response, stopped, text,
};

/// Routes a `/v1/…` path: the call, or the HTTP status for an unknown path (404) or a wrong
/// method (405, with the allowed one).
fn route(method: &Method, path: &str) -> Result<Call, (u16, Option<&'static str>)> {
    let rest = path.strip_prefix("/v1/").ok_or((404, None))?;
    let segments: Vec<String> = rest
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (call, allowed) = match seg.as_slice() {
        ["access-token"] => (Call::Token, Method::POST),
        ["subscribe", "regist"] => (Call::Regist, Method::POST),
        ["subscribe", bid, "payments"] if !bid.is_empty() => {
            (Call::Approve((*bid).to_owned()), Method::POST)
        }
        ["subscribe", bid, "expire"] if !bid.is_empty() => {
            (Call::Expire((*bid).to_owned()), Method::POST)
        }
        ["payments", "netcancel"] => (Call::Netcancel, Method::POST),
        ["payments", "find", order_id] if !order_id.is_empty() => {
            (Call::LookupOrder((*order_id).to_owned()), Method::GET)
        }
        ["payments", tid, "cancel"] if !tid.is_empty() => {
            (Call::Cancel((*tid).to_owned()), Method::POST)
        }
        ["payments", tid] if !tid.is_empty() => (Call::LookupTid((*tid).to_owned()), Method::GET),
        _ => return Err((404, None)),
    };
    if *method != allowed {
        let allow = if allowed == Method::GET {
            "GET"
        } else {
            "POST"
        };
        return Err((405, Some(allow)));
    }
    Ok(call)
}

fn render(answer: &V1Answer) -> Response<Body> {
    let body = serde_json::to_vec(&answer.body).unwrap_or_default();
    response(
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK),
        "application/json;charset=utf-8",
        body.into(),
    )
}

/// Serves one `/v1/…` request.
pub(crate) async fn respond(
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Dropped> {
    let now = || lock(&shared.state).clock.now();
    let call = match route(req.method(), req.uri().path()) {
        Ok(call) => call,
        Err((status, allow)) => {
            let mut r = render(&calls::routing_error(status, now()));
            if let Some(allow) = allow {
                r.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            return Ok(r);
        }
    };
    *lock(&shared.counts)
        .entry(call.counter().to_owned())
        .or_default() += 1;
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let shop = {
        let state = lock(&shared.state);
        match calls::authenticate(&state, header.as_deref(), call == Call::Token) {
            Ok(shop) => shop,
            Err(answer) => return Ok(render(&answer)),
        }
    };
    let query = req.uri().query().map(str::to_owned);
    let is_get = req.method() == Method::GET;
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(response) => return Ok(response),
    };
    match shared.over_rate() {
        None => {}
        Some(ThrottleAnswer::Http429) => {
            return Ok(text(StatusCode::TOO_MANY_REQUESTS, "too many requests\n"));
        }
        Some(ThrottleAnswer::V003) => return Ok(render(&calls::too_many_requests(now()))),
    }
    let fields = if is_get {
        Fields::from_query(query.as_deref())
    } else {
        match Fields::from_json(&body) {
            Ok(fields) => fields,
            Err(refusal) => return Ok(render(&refusal.answer(now()))),
        }
    };
    let latency = *lock(&shared.latency);
    if !latency.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(latency) => {}
            () = stopped(stop.clone()) => return Err(Dropped("shutting down")),
        }
    }
    let fault = call
        .fault_api()
        .and_then(|api| lock(&shared.faults).choose_v1(api));
    if let Some(mode) = fault {
        tracing::debug!(
            call = call.counter(),
            fault = mode.as_str(),
            "simulator v1 fault"
        );
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
    let bad_signature = matches!(
        fault,
        Some(FaultMode::BadSignature | FaultMode::BadCancelSignature)
    );
    let mut answer = if fault == Some(FaultMode::HoldBefore) {
        // Processed when the hold is over even if the client has hung up by then.
        let hold = *lock(&shared.hold);
        let held = Arc::clone(&shared);
        let stop = stop.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(hold) => {}
                () = stopped(stop) => return None,
            }
            let answer = calls::handle(&mut lock(&held.state), shop, &call, &fields, bad_signature);
            Some(answer)
        });
        match task.await {
            Ok(Some(answer)) => answer,
            _ => return Err(Dropped("hold_before: shutting down")),
        }
    } else {
        calls::handle(
            &mut lock(&shared.state),
            shop,
            &call,
            &fields,
            bad_signature,
        )
    };
    if fault == Some(FaultMode::LongResultMsg) {
        let msg = answer.body["resultMsg"].as_str().unwrap_or("").to_owned();
        let filler = "가".repeat(500usize.saturating_sub(msg.chars().count()));
        answer.body["resultMsg"] = format!("{msg}{filler}").into();
    }
    match fault {
        Some(FaultMode::DropAfter) => Err(Dropped("drop_after")),
        Some(FaultMode::Oversized) => {
            let mut body = vec![b' '; crate::sim::OVERSIZED_PADDING];
            body.extend_from_slice(&serde_json::to_vec(&answer.body).unwrap_or_default());
            Ok(response(
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK),
                "application/json;charset=utf-8",
                body.into(),
            ))
        }
        Some(FaultMode::HangAfter) => {
            stopped(stop).await;
            Err(Dropped("hang_after"))
        }
        Some(FaultMode::Garbage) => Ok(response(StatusCode::OK, "text/html", GARBAGE.into())),
        _ => Ok(render(&answer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(route(&post, "/v1/access-token"), Ok(Call::Token));
        assert_eq!(route(&post, "/v1/subscribe/regist"), Ok(Call::Regist));
        assert_eq!(
            route(&post, "/v1/subscribe/BIKY1/payments"),
            Ok(Call::Approve("BIKY1".into()))
        );
        assert_eq!(
            route(&post, "/v1/subscribe/BIKY1/expire"),
            Ok(Call::Expire("BIKY1".into()))
        );
        assert_eq!(route(&post, "/v1/payments/netcancel"), Ok(Call::Netcancel));
        assert_eq!(
            route(&post, "/v1/payments/T1/cancel"),
            Ok(Call::Cancel("T1".into()))
        );
        assert_eq!(
            route(&get, "/v1/payments/T1"),
            Ok(Call::LookupTid("T1".into()))
        );
        assert_eq!(
            route(&get, "/v1/payments/find/S1-C1-A1"),
            Ok(Call::LookupOrder("S1-C1-A1".into()))
        );
        assert_eq!(
            route(&get, "/v1/payments/T1/cancel"),
            Err((405, Some("POST")))
        );
        assert_eq!(route(&post, "/v1/payments/T1"), Err((405, Some("GET"))));
        assert_eq!(route(&post, "/v1/nope"), Err((404, None)));
        assert_eq!(route(&post, "/v1/subscribe//payments"), Err((404, None)));
    }
}
