//! A v1 request as the simulator reads it: authentication, field checks (types, UTF-8 byte
//! limits, EUC-KR, `signData`), and the answers and refusals that come out.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::gateway::nicepay_v1::SecretKey;
use crate::gateway::nicepay_v1::crypto;
use crate::sim::state::SimState;

/// An answer: HTTP status and JSON body.
#[derive(Debug)]
pub(crate) struct V1Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl V1Answer {
    pub(crate) fn result_code(&self) -> &str {
        self.body["resultCode"].as_str().unwrap_or("")
    }
}

/// A refusal: a result code, a message and the HTTP status (200 unless said otherwise).
#[derive(Debug)]
pub(crate) struct Refusal {
    code: &'static str,
    msg: String,
    status: u16,
}

pub(super) fn refuse(code: &'static str, msg: impl Into<String>) -> Refusal {
    Refusal {
        code,
        msg: msg.into(),
        status: 200,
    }
}

impl Refusal {
    pub(super) fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub(crate) fn answer(self, now: DateTime<Utc>) -> V1Answer {
        V1Answer {
            status: self.status,
            body: json!({
                "resultCode": self.code,
                "resultMsg": self.msg,
                "ediDate": crypto::edi_date(now),
            }),
        }
    }
}

pub(super) type Step<T> = Result<T, Refusal>;

/// The error answer for a path or method the v1 API does not have.
pub(crate) fn routing_error(status: u16, now: DateTime<Utc>) -> V1Answer {
    let refusal = if status == 405 {
        refuse("U110", "허용되지 않은 HTTP 메서드 (wrong method)")
    } else {
        refuse("U108", "존재하지 않는 API (unknown path)")
    };
    refusal.with_status(status).answer(now)
}

/// The throttle's `V003` answer (HTTP 200), nothing processed.
pub(crate) fn too_many_requests(now: DateTime<Utc>) -> V1Answer {
    refuse(
        "V003",
        "요청 과다: 잠시 후 다시 시도하세요 (too many requests)",
    )
    .answer(now)
}

/// The shop the `Authorization` header proves, or the 401 answer. The access-token call
/// takes Basic credentials only.
pub(crate) fn authenticate(
    st: &SimState,
    header: Option<&str>,
    basic_only: bool,
) -> Result<usize, V1Answer> {
    let now = st.clock.now();
    let unauthorized = |code, msg: &str| refuse(code, msg).with_status(401).answer(now);
    let Some(header) = header.map(str::trim) else {
        return Err(unauthorized(
            "U101",
            "인증 실패: Authorization 헤더가 없습니다",
        ));
    };
    let v1 = &st.v1;
    if let Some(encoded) = header.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let found = decoded.as_deref().and_then(|text| {
            let (client, secret) = text.split_once(':')?;
            v1.shops
                .iter()
                .position(|s| s.client.as_str() == client && s.secret.expose() == secret)
        });
        return found.ok_or_else(|| {
            unauthorized(
                "U101",
                "인증 실패: clientKey 또는 secretKey가 올바르지 않습니다",
            )
        });
    }
    if let Some(token) = header.strip_prefix("Bearer ") {
        if basic_only {
            return Err(unauthorized(
                "U101",
                "인증 실패: 토큰 발급은 Basic 인증만 받습니다",
            ));
        }
        let token = token.trim();
        return v1
            .tokens
            .iter()
            .find(|(_, (t, expires))| t == token && now < *expires)
            .map(|(shop, _)| *shop)
            .ok_or_else(|| unauthorized("U305", "인증 실패: 액세스 토큰이 없거나 만료되었습니다"));
    }
    Err(unauthorized(
        "U101",
        "인증 실패: Authorization은 Basic 또는 Bearer 입니다",
    ))
}

/// The request fields: a JSON object (posts) or the query string (lookups).
pub(crate) struct Fields(pub(crate) Map<String, Value>);

impl Fields {
    /// A JSON object body; an empty body is an empty object.
    pub(crate) fn from_json(body: &[u8]) -> Step<Fields> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Fields(Map::new()));
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Fields(map)),
            Ok(_) => Err(refuse("U125", "요청 형식 오류: JSON 객체가 아닙니다")),
            Err(e) => Err(refuse("U125", format!("요청 형식 오류: JSON ({e})"))),
        }
    }

    pub(crate) fn from_query(query: Option<&str>) -> Fields {
        let map = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        Fields(map)
    }

    /// A text field: `None` when absent (or null). Checked for type, length in UTF-8 bytes and
    /// EUC-KR.
    pub(super) fn text(&self, name: &str, max: usize) -> Step<Option<&str>> {
        let value = match self.0.get(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(refuse(
                    "U125",
                    format!("파라미터 형식 오류: {name} (문자열이어야 합니다)"),
                ));
            }
        };
        if value.len() > max {
            return Err(refuse(
                "U105",
                format!(
                    "파라미터 길이 오류: {name} ({} bytes, 최대 {max} bytes UTF-8)",
                    value.len()
                ),
            ));
        }
        if encoding_rs::EUC_KR.encode(value).2 {
            return Err(refuse(
                "U125",
                format!("파라미터 형식 오류: {name} (EUC-KR로 표현할 수 없는 문자)"),
            ));
        }
        Ok(Some(value))
    }

    /// A required, non-empty text field.
    pub(super) fn required(&self, name: &str, max: usize) -> Step<&str> {
        match self.text(name, max)? {
            Some(v) if !v.trim().is_empty() => Ok(v),
            _ => Err(refuse("U100", format!("필수 파라미터 누락: {name}"))),
        }
    }

    /// An amount: a JSON integer, 1 to 12 digits. `None` when absent.
    pub(super) fn amount(&self, name: &str) -> Step<Option<i64>> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => match n.as_i64() {
                Some(v) if (1..=999_999_999_999).contains(&v) => Ok(Some(v)),
                _ => Err(refuse(
                    "U127",
                    format!("금액 오류: {name} (1 이상, 12자리 이내)"),
                )),
            },
            Some(_) => Err(refuse(
                "U127",
                format!("금액 오류: {name} (JSON 정수여야 합니다)"),
            )),
        }
    }

    /// `ediDate` and `signData`: both optional; `signData` needs `ediDate` and must be
    /// `hex(sha256(parts… + ediDate + secret))`.
    pub(super) fn check_sign(&self, parts: &[&str], secret: &SecretKey) -> Step<()> {
        let edi = self.text("ediDate", 64)?;
        let sign = self.text("signData", 256)?;
        if let Some(edi) = edi
            && !is_iso8601(edi)
        {
            return Err(refuse(
                "U130",
                format!("날짜 형식 오류: ediDate {edi:?} (ISO 8601)"),
            ));
        }
        match (sign, edi) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(refuse(
                "U100",
                "필수 파라미터 누락: ediDate (signData와 함께 보내야 합니다)",
            )),
            (Some(sign), Some(edi)) => {
                let mut all: Vec<&str> = parts.to_vec();
                all.push(edi);
                let expected = crypto::sign_data(&all, secret);
                if sign.eq_ignore_ascii_case(&expected) {
                    Ok(())
                } else {
                    Err(refuse("U312", "위변조 데이터 검증 실패 (signData)"))
                }
            }
        }
    }

    /// Buyer fields, all optional: `buyerTel` digits only.
    pub(super) fn buyer(&self) -> Step<[Option<String>; 3]> {
        let name = self.text("buyerName", 30)?;
        let email = self.text("buyerEmail", 60)?;
        let tel = self.text("buyerTel", 20)?;
        if let Some(tel) = tel
            && !tel.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(refuse("U125", "파라미터 형식 오류: buyerTel (숫자만)"));
        }
        Ok([name, email, tel].map(|v| v.map(str::to_owned)))
    }

    pub(super) fn mall_reserved(&self) -> Step<Option<String>> {
        let value = self.text("mallReserved", 500)?;
        if value.is_some_and(|v| v.contains('"')) {
            return Err(refuse(
                "U125",
                "파라미터 형식 오류: mallReserved (\" 사용 불가)",
            ));
        }
        Ok(value.map(str::to_owned))
    }
}

/// ISO 8601 with an offset (`+0900`, `+09:00` or `Z`), fractions optional.
fn is_iso8601(text: &str) -> bool {
    DateTime::parse_from_rfc3339(text).is_ok()
        || DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z").is_ok()
}

/// `cardQuota`: a string or a number, `0` (lump sum) or 2 to 36 months.
pub(super) fn card_quota(f: &Fields) -> Step<String> {
    let quota = match f.0.get("cardQuota") {
        None | Some(Value::Null) => return Err(refuse("U100", "필수 파라미터 누락: cardQuota")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(_) => {
            return Err(refuse(
                "U125",
                "파라미터 형식 오류: cardQuota (문자열 또는 숫자)",
            ));
        }
    };
    if quota.len() > 2 {
        return Err(refuse(
            "U105",
            "파라미터 길이 오류: cardQuota (최대 2 bytes)",
        ));
    }
    let months = quota
        .parse::<u32>()
        .ok()
        .filter(|_| !quota.is_empty() && quota.bytes().all(|b| b.is_ascii_digit()));
    match months {
        Some(0) => Ok("0".into()),
        Some(m @ 2..=36) => Ok(m.to_string()),
        _ => Err(refuse(
            "3022",
            format!("할부개월 오류 (cardQuota {quota:?}: 0 또는 2~36)"),
        )),
    }
}
