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
    Body, Dropped, Shared, SimAnswer, answer_with_faults, lock, read_body, response, text,
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
    answer.to_response(0)
}

impl SimAnswer for V1Answer {
    fn result_code(&self) -> &str {
        V1Answer::result_code(self)
    }

    fn lengthen_result_msg(&mut self) {
        let msg = self.body["resultMsg"].as_str().unwrap_or("").to_owned();
        let filler = "가".repeat(500usize.saturating_sub(msg.chars().count()));
        self.body["resultMsg"] = format!("{msg}{filler}").into();
    }

    fn to_response(&self, padding: usize) -> Response<Body> {
        let mut body = vec![b' '; padding];
        body.extend_from_slice(&serde_json::to_vec(&self.body).unwrap_or_default());
        response(
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK),
            "application/json;charset=utf-8",
            body.into(),
        )
    }
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
    let fault_api = call.fault_api();
    answer_with_faults(
        &shared,
        &stop,
        call.counter(),
        |faults| fault_api.and_then(|api| faults.choose_v1(api)),
        move |state, fault| {
            let bad_signature = matches!(
                fault,
                Some(FaultMode::BadSignature | FaultMode::BadCancelSignature)
            );
            calls::handle(state, shop, &call, &fields, bad_signature)
        },
    )
    .await
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
