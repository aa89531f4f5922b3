//! The simulator's protocol logic: one synchronous state machine over decoded form fields.
//!
//! Nothing here knows about HTTP, so every rule can be unit-tested by feeding request bodies
//! in and reading answers out. The server wraps a [`SimState`] in a mutex and adds transport
//! concerns (faults, latency, control endpoints).
//!
//! Every request is checked in the same order, whatever the API, so that a client bug shows
//! up as the first broken rule rather than as whichever rule happened to be checked first:
//!
//! 1. the body decodes as an EUC-KR form, and `CharSet`/`EdiType` are valid (`A111`); "EUC-KR"
//!    is strict KS X 1001, as NICEPAY decodes it: a value with a byte pair whose lead or trail
//!    byte is below `0xA1` (CP949's extra Hangul, `똠` = `8C 63`) is refused with `A111`
//!    naming the field, where NICEPAY would garble it (checked on the raw bytes by
//!    [`outside_ks_x_1001`], not with the client's encoder);
//! 2. required fields are present and non-empty (`A110`);
//! 3. `MID` is a configured merchant (`A112`);
//! 4. lengths (in EUC-KR bytes) and formats (`A111`; a TID of the wrong length `1652`);
//! 5. `SignData` (`A101`);
//! 6. the API's own rules.
//!
//! Card numbers, `IDNo` and `CardPw` exist only inside [`SimState::handle`] while a billkey is
//! issued; the billkey keeps the masked number and the behaviour derived from it.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::cards::{self, Brand, CardBehaviour, Outcome};
use crate::clock::SharedClock;
use crate::domain::{ExposeSecret, MerchantKey, Mid};
use crate::gateway::nicepay::{Api, Charset, EdiType, crypto, form, limits, sign, tid};

/// One successful approval, as the simulated NICEPAY remembers it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LedgerEntry {
    pub mid: String,
    pub tid: String,
    pub moid: String,
    pub bid: String,
    pub amount: i64,
    pub goods_name: String,
    pub auth_code: String,
    pub state: LedgerState,
    pub cancelled_amount: i64,
    pub approved_at: DateTime<Utc>,
    /// Put there by [`SimState::seed_foreign_approval`] (somebody else's transaction that
    /// holds the TID), not by an approval request.
    #[serde(default)]
    pub seeded: bool,
    /// `BuyerName`, `BuyerEmail`, `BuyerTel` as received (absent: not sent).
    #[serde(default)]
    pub buyer_name: Option<String>,
    #[serde(default)]
    pub buyer_email: Option<String>,
    #[serde(default)]
    pub buyer_tel: Option<String>,
}

/// One billkey removal NICEPAY carried out (`F101`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemovalEntry {
    pub mid: String,
    pub bid: String,
    /// The removal's TID.
    pub tid: String,
    pub removed_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerState {
    Approved,
    PartiallyCancelled,
    Cancelled,
}

/// A deliberate corruption of an otherwise correct answer (fault injection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Tamper {
    #[default]
    None,
    /// Process the cancel, but sign the answer over the wrong amount.
    CancelSignature,
}

/// An answer, before it is rendered in the format the request asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub charset: Charset,
    pub edi_type: EdiType,
    pub fields: BTreeMap<String, String>,
}

impl Answer {
    pub fn result_code(&self) -> &str {
        self.get("ResultCode").unwrap_or("")
    }

    pub fn result_msg(&self) -> &str {
        self.get("ResultMsg").unwrap_or("")
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    pub fn content_type(&self) -> String {
        let mime = match self.edi_type {
            EdiType::Json => "application/json",
            EdiType::Kv => "text/plain",
        };
        format!("{mime}; charset={}", self.charset.as_str())
    }

    /// The body bytes: JSON object of strings, or `Key=Value&…` with each value
    /// percent-encoded from the charset's bytes; the whole in the requested charset.
    pub fn body(&self) -> Vec<u8> {
        match self.edi_type {
            EdiType::Json => {
                let map: serde_json::Map<String, serde_json::Value> = self
                    .fields
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                self.encode(&serde_json::Value::Object(map).to_string())
            }
            EdiType::Kv => {
                let mut out = String::new();
                for (k, v) in &self.fields {
                    if !out.is_empty() {
                        out.push('&');
                    }
                    out.push_str(k);
                    out.push('=');
                    out.extend(form_urlencoded::byte_serialize(&self.encode(v)));
                }
                out.into_bytes()
            }
        }
    }

    fn encode(&self, text: &str) -> Vec<u8> {
        // Every text in an answer is ASCII, our own Korean messages, or a value decoded from
        // EUC-KR, so nothing is unmappable.
        self.charset.encoding().encode(text).0.into_owned()
    }
}

/// Why a request was refused: the ResultCode and ResultMsg of the answer.
#[derive(Debug)]
struct Refusal {
    code: &'static str,
    msg: String,
    /// Fields echoed with the refusal (an approval decline names its TID and Moid).
    echo: Vec<(&'static str, String)>,
}

fn refuse(code: &'static str, msg: impl Into<String>) -> Refusal {
    Refusal {
        code,
        msg: msg.into(),
        echo: Vec::new(),
    }
}

type Step<T> = Result<T, Refusal>;
type Fields = Vec<(&'static str, String)>;

/// The decoded request fields.
struct Req(BTreeMap<String, String>);

impl Req {
    /// The field as sent, or `""`.
    fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }

    fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Required fields per API, in the order they are reported missing.
fn required(api: Api) -> &'static [&'static str] {
    match api {
        Api::BillkeyIssue => &["MID", "EdiDate", "Moid", "EncData", "SignData"],
        Api::Approve => &[
            "BID",
            "MID",
            "TID",
            "EdiDate",
            "Moid",
            "Amt",
            "GoodsName",
            "CardInterest",
            "CardQuota",
            "SignData",
        ],
        Api::BillkeyRemove => &["BID", "MID", "EdiDate", "Moid", "SignData"],
        Api::Cancel => &[
            "TID",
            "MID",
            "Moid",
            "CancelAmt",
            "CancelMsg",
            "PartialCancelCode",
            "EdiDate",
            "SignData",
        ],
        Api::Status => &["TID", "MID", "EdiDate", "SignData"],
    }
}

/// Text fields and their EUC-KR byte limits, checked whenever present.
const TEXT_LIMITS: &[(&str, usize)] = &[
    ("Moid", limits::MOID),
    ("GoodsName", limits::GOODS_NAME),
    ("BuyerName", limits::BUYER_NAME),
    ("BuyerTel", limits::BUYER_TEL),
    ("BuyerEmail", limits::BUYER_EMAIL),
    ("MallReserved", limits::MALL_RESERVED),
    ("CancelMsg", limits::CANCEL_MSG),
    ("BID", 30),
];

/// Suffixes per second for minted TIDs and BIDs (4 digits).
const PER_SECOND: u32 = 10_000;

struct Merchant {
    mid: Mid,
    key: MerchantKey,
}

/// A billkey: everything kept about a card.
pub(super) struct Billkey {
    pub(super) mid: String,
    pub(super) behaviour: CardBehaviour,
    pub(super) masked: String,
    pub(super) brand: Brand,
    /// Approval attempts that reached the card company.
    pub(super) attempts: u32,
    pub(super) removed: bool,
}

/// What billkey issue learns from the card before forgetting its number.
struct CardFacts {
    behaviour: CardBehaviour,
    masked: String,
    brand: Brand,
}

/// The simulated NICEPAY: merchants, billkeys, used TIDs and the ledger of approvals.
pub struct SimState {
    merchants: HashMap<String, Merchant>,
    pub(super) clock: SharedClock,
    /// Draws the 4-digit suffixes of minted TIDs/BIDs and auth/cancel numbers, seeded so that
    /// a run can be repeated.
    pub(super) rng: StdRng,
    pub(super) billkeys: HashMap<String, Billkey>,
    /// Every TID seen: minted by issue/removal, or used by an approval that reached the card
    /// company. NICEPAY refuses all of them as duplicates.
    pub(super) used_tids: HashSet<String>,
    pub(super) ledger: Vec<LedgerEntry>,
    /// TID → index in `ledger`.
    by_tid: HashMap<String, usize>,
    /// (MID, Moid) of successful approvals.
    approved_moids: HashSet<(String, String)>,
    /// Billkey removals carried out, in order.
    pub(super) removals: Vec<RemovalEntry>,
    /// The v1 REST API's shops, tokens and payments (see [`super::v1`]).
    pub(super) v1: super::v1::V1State,
}

impl std::fmt::Debug for SimState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimState")
            .field("merchants", &self.merchants.len())
            .field("billkeys", &self.billkeys.len())
            .field("ledger", &self.ledger.len())
            .finish_non_exhaustive()
    }
}

impl SimState {
    /// A later entry for the same MID replaces an earlier one.
    pub fn new(merchants: &[(Mid, MerchantKey)], clock: SharedClock, seed: u64) -> Self {
        let merchants = merchants
            .iter()
            .map(|(mid, key)| {
                (
                    mid.as_str().to_owned(),
                    Merchant {
                        mid: mid.clone(),
                        key: key.clone(),
                    },
                )
            })
            .collect();
        Self {
            merchants,
            clock,
            rng: StdRng::seed_from_u64(seed),
            billkeys: HashMap::new(),
            used_tids: HashSet::new(),
            ledger: Vec::new(),
            by_tid: HashMap::new(),
            approved_moids: HashSet::new(),
            removals: Vec::new(),
            v1: super::v1::V1State::default(),
        }
    }

    /// Every successful approval, in order, seeded ones included (marked `seeded`).
    pub fn ledger(&self) -> &[LedgerEntry] {
        &self.ledger
    }

    /// Every billkey removal carried out, in order.
    pub fn removals(&self) -> &[RemovalEntry] {
        &self.removals
    }

    /// Records an approval that some other transaction made with `tid` (a TID collision):
    /// from now on an approval with this TID answers `A225`, and a status lookup of it answers
    /// `Status=0` with this `moid` and `amount`. The merchant is the TID's first 10
    /// characters; a second approval of `moid` by that merchant answers `A127`, as for any
    /// approved order. Refused when the TID is not a billing TID of a configured merchant, is
    /// already used, the order is already approved, or the amount is not 1 to 12 digits.
    pub fn seed_foreign_approval(
        &mut self,
        tid: &str,
        moid: &str,
        amount: i64,
    ) -> Result<(), String> {
        let mid = tid.get(..10).unwrap_or_default();
        if !self.merchants.contains_key(mid) || !tid::is_billing_tid(tid, mid) {
            return Err(format!(
                "TID {tid:?} is not a billing TID of a configured merchant"
            ));
        }
        if moid.trim().is_empty() {
            return Err("the Moid is empty".into());
        }
        form::euc_kr_limited("Moid", moid, limits::MOID).map_err(|e| e.to_string())?;
        if parse_amount(&amount.to_string()).is_none() {
            return Err(format!("amount {amount} is not 1 to 12 digits of KRW"));
        }
        if self.used_tids.contains(tid) {
            return Err(format!("TID {tid} is already used"));
        }
        let order = (mid.to_owned(), moid.to_owned());
        if self.approved_moids.contains(&order) {
            return Err(format!("Moid {moid} is already approved for {mid}"));
        }
        let auth_code = format!("{:08}", self.rng.random_range(0..100_000_000u32));
        self.used_tids.insert(tid.to_owned());
        self.approved_moids.insert(order);
        self.by_tid.insert(tid.to_owned(), self.ledger.len());
        self.ledger.push(LedgerEntry {
            mid: mid.to_owned(),
            tid: tid.to_owned(),
            moid: moid.to_owned(),
            bid: String::new(),
            amount,
            goods_name: String::new(),
            auth_code,
            state: LedgerState::Approved,
            cancelled_amount: 0,
            approved_at: self.clock.now(),
            seeded: true,
            buyer_name: None,
            buyer_email: None,
            buyer_tel: None,
        });
        Ok(())
    }

    /// Forgets billkeys, TIDs and the ledger; merchants stay.
    pub fn reset(&mut self) {
        self.billkeys.clear();
        self.used_tids.clear();
        self.ledger.clear();
        self.by_tid.clear();
        self.approved_moids.clear();
        self.removals.clear();
        self.v1.reset();
    }

    /// Answers one request body posted to `api`.
    /// NICEPAY's "too many requests" (`V003`) to the request in `body`, in the format it
    /// asked for: nothing is processed.
    pub fn too_many_requests(body: &[u8]) -> Answer {
        let format = form::decode(body)
            .ok()
            .map(|fields| Req(fields.into_iter().collect()))
            .and_then(|req| response_format(&req).ok())
            .unwrap_or_default();
        answer(
            format.0,
            format.1,
            Err(refuse(
                "V003",
                "요청 과다: 잠시 후 다시 시도하세요 (too many requests)",
            )),
        )
    }

    pub fn handle(&mut self, api: Api, body: &[u8], tamper: Tamper) -> Answer {
        if let Some(field) = outside_ks_x_1001(body) {
            let refusal = refuse(
                "A111",
                format!("파라미터 오류: {field} (KS X 1001 밖의 문자, EUC-KR 아님)"),
            );
            return answer(Charset::default(), EdiType::default(), Err(refusal));
        }
        let fields = match form::decode(body) {
            Ok(fields) => fields.into_iter().collect::<BTreeMap<_, _>>(),
            Err(e) => {
                let refusal = refuse("A111", format!("요청 형식 오류: {e}"));
                return answer(Charset::default(), EdiType::default(), Err(refusal));
            }
        };
        let req = Req(fields);
        let result = response_format(&req);
        let answer = match result {
            Err(refusal) => answer(Charset::default(), EdiType::default(), Err(refusal)),
            Ok((charset, edi_type)) => answer(charset, edi_type, self.process(api, &req, tamper)),
        };
        // Only identifiers are logged: never EncData, never the merchant key.
        tracing::debug!(
            api = api.as_str(),
            mid = req.get("MID"),
            moid = req.get("Moid"),
            tid = req.get("TID"),
            result_code = answer.result_code(),
            "simulator answered"
        );
        answer
    }

    fn process(&mut self, api: Api, req: &Req, tamper: Tamper) -> Step<Fields> {
        for name in required(api) {
            if req.get(name).trim().is_empty() {
                return Err(refuse("A110", format!("필수 파라미터 누락: {name}")));
            }
        }
        let mid = req.get("MID");
        let Some(merchant) = self.merchants.get(mid) else {
            return Err(refuse(
                "A112",
                format!("등록되지 않은 상점 아이디 (MID {mid})"),
            ));
        };
        let (mid, key) = (merchant.mid.clone(), merchant.key.clone());
        check_formats(api, req)?;
        check_sign(api, req, &key)?;
        match api {
            Api::BillkeyIssue => self.issue(&mid, &key, req),
            Api::Approve => self.approve(&mid, req),
            Api::BillkeyRemove => self.remove(&mid, req),
            Api::Cancel => self.cancel(&mid, &key, req, tamper),
            Api::Status => Ok(self.status(&mid, req)),
        }
    }

    fn issue(&mut self, mid: &Mid, key: &MerchantKey, req: &Req) -> Step<Fields> {
        let plain = crypto::decrypt(req.get("EncData"), key)
            .map_err(|e| refuse("A113", format!("EncData 복호화 실패: {e}")))?;
        let card = card_facts(plain.expose_secret())?;
        drop(plain);
        let now = self.clock.now();
        let bid = mint(
            &mut self.rng,
            now,
            |at, n| format!("BIKY{}{}{n:04}", mid.as_str(), kst(at, "%y%m%d%H%M%S")),
            |c| self.billkeys.contains_key(c),
        );
        let tid = self.mint_tid(mid, now);
        self.billkeys.insert(
            bid.clone(),
            Billkey {
                mid: mid.as_str().to_owned(),
                behaviour: card.behaviour,
                masked: card.masked,
                brand: card.brand,
                attempts: 0,
                removed: false,
            },
        );
        Ok(vec![
            ("ResultCode", "F100".into()),
            ("ResultMsg", "빌키가 정상적으로 생성되었습니다.".into()),
            ("TID", tid),
            ("BID", bid),
            ("AuthDate", kst(now, "%Y%m%d")),
            ("CardCode", card.brand.code.into()),
            ("CardName", card.brand.name.into()),
            ("CardCl", "0".into()),
            ("AcquCardCode", card.brand.code.into()),
            ("AcquCardName", card.brand.name.into()),
        ])
    }

    fn approve(&mut self, mid: &Mid, req: &Req) -> Step<Fields> {
        let tid = req.get("TID");
        let moid = req.get("Moid");
        if self.used_tids.contains(tid) {
            return Err(refuse("A225", format!("중복된 TID 입니다 ({tid})")));
        }
        let bid = req.get("BID");
        self.usable_billkey(mid, bid)?;
        if self
            .approved_moids
            .contains(&(mid.as_str().to_owned(), moid.to_owned()))
        {
            return Err(refuse(
                "A127",
                format!("중복된 주문번호 입니다 (Moid {moid})"),
            ));
        }
        let amount = parse_amount(req.get("Amt"))
            .ok_or_else(|| refuse("3041", "금액 오류 (Amt: 1 이상, 숫자 12자리 이내)"))?;
        let quota = req.get("CardQuota");
        let quota_ok = quota.len() == 2
            && quota.bytes().all(|b| b.is_ascii_digit())
            && (quota == "00"
                || (2..=limits::CARD_QUOTA_MAX_MONTHS)
                    .contains(&quota.parse::<u32>().unwrap_or(0)));
        if !quota_ok {
            return Err(refuse(
                "3022",
                format!("할부개월 오류 (CardQuota {quota:?}: 00 또는 02~36)"),
            ));
        }
        let interest = req.get("CardInterest");
        if !matches!(interest, "0" | "1") {
            return Err(refuse(
                "A111",
                format!("파라미터 오류: CardInterest {interest:?} (0 또는 1)"),
            ));
        }

        // The request is valid: it reaches the card company, and its TID is spent whatever
        // the card says.
        self.used_tids.insert(tid.to_owned());
        let (outcome, masked, brand) = match self.billkeys.get_mut(bid) {
            Some(billkey) => {
                billkey.attempts += 1;
                (
                    billkey.behaviour.outcome(billkey.attempts),
                    billkey.masked.clone(),
                    billkey.brand,
                )
            }
            // `usable_billkey` found it a moment ago.
            None => return Err(refuse("A126", "존재하지 않는 빌키 입니다")),
        };
        if let Outcome::Declined(decline) = outcome {
            return Err(Refusal {
                code: decline.code,
                msg: decline.msg.to_owned(),
                echo: vec![("TID", tid.to_owned()), ("Moid", moid.to_owned())],
            });
        }
        let now = self.clock.now();
        let auth_code = format!("{:08}", self.rng.random_range(0..100_000_000u32));
        self.by_tid.insert(tid.to_owned(), self.ledger.len());
        self.ledger.push(LedgerEntry {
            mid: mid.as_str().to_owned(),
            tid: tid.to_owned(),
            moid: moid.to_owned(),
            bid: bid.to_owned(),
            amount,
            goods_name: req.get("GoodsName").to_owned(),
            auth_code: auth_code.clone(),
            state: LedgerState::Approved,
            cancelled_amount: 0,
            approved_at: now,
            seeded: false,
            buyer_name: req.opt("BuyerName").map(str::to_owned),
            buyer_email: req.opt("BuyerEmail").map(str::to_owned),
            buyer_tel: req.opt("BuyerTel").map(str::to_owned),
        });
        self.approved_moids
            .insert((mid.as_str().to_owned(), moid.to_owned()));
        let mut fields: Fields = vec![
            ("ResultCode", "3001".into()),
            ("ResultMsg", "카드 결제 성공".into()),
            ("TID", tid.to_owned()),
            ("Moid", moid.to_owned()),
            ("Amt", format!("{amount:012}")),
            ("AuthCode", auth_code),
            ("AuthDate", kst(now, "%y%m%d%H%M%S")),
            ("CardNo", masked),
            ("CardCode", brand.code.into()),
            ("CardName", brand.name.into()),
            ("CardQuota", quota.to_owned()),
            ("CardCl", "0".into()),
            ("CcPartCl", "1".into()),
            ("CardInterest", interest.to_owned()),
            ("AcquCardCode", brand.code.into()),
            ("AcquCardName", brand.name.into()),
        ];
        if let Some(reserved) = req.opt("MallReserved") {
            fields.push(("MallReserved", reserved.to_owned()));
        }
        Ok(fields)
    }

    /// The billkey exists, belongs to `mid` and is not removed.
    fn usable_billkey(&self, mid: &Mid, bid: &str) -> Step<()> {
        match self.billkeys.get(bid) {
            None => Err(refuse("A126", "존재하지 않는 빌키 입니다")),
            // Another merchant's billkey is refused as such even when removed: its state is
            // none of this merchant's business.
            Some(b) if b.mid != mid.as_str() => Err(refuse("A223", "다른 상점의 빌키 입니다")),
            Some(b) if b.removed => Err(refuse("A124", "이미 삭제된 빌키 입니다")),
            Some(_) => Ok(()),
        }
    }

    fn remove(&mut self, mid: &Mid, req: &Req) -> Step<Fields> {
        let bid = req.get("BID");
        self.usable_billkey(mid, bid)?;
        if let Some(billkey) = self.billkeys.get_mut(bid) {
            billkey.removed = true;
        }
        let now = self.clock.now();
        let tid = self.mint_tid(mid, now);
        self.removals.push(RemovalEntry {
            mid: mid.as_str().to_owned(),
            bid: bid.to_owned(),
            tid: tid.clone(),
            removed_at: now,
        });
        Ok(vec![
            ("ResultCode", "F101".into()),
            ("ResultMsg", "빌키가 정상적으로 삭제되었습니다.".into()),
            ("TID", tid),
            ("BID", bid.to_owned()),
            ("AuthDate", kst(now, "%Y%m%d")),
        ])
    }

    fn cancel(&mut self, mid: &Mid, key: &MerchantKey, req: &Req, tamper: Tamper) -> Step<Fields> {
        let tid = req.get("TID");
        let index = self
            .by_tid
            .get(tid)
            .copied()
            .filter(|i| self.ledger[*i].mid == mid.as_str())
            .ok_or_else(|| refuse("2012", format!("취소할 승인 거래가 없습니다 (TID {tid})")))?;
        if self.ledger[index].state == LedgerState::Cancelled {
            return Err(refuse("2015", "이미 취소된 거래입니다"));
        }
        let amount = parse_amount(req.get("CancelAmt")).ok_or_else(|| {
            refuse(
                "2013",
                "취소금액 오류 (CancelAmt: 1 이상, 숫자 12자리 이내)",
            )
        })?;
        let entry = &self.ledger[index];
        let remaining = entry.amount - entry.cancelled_amount;
        match req.get("PartialCancelCode") {
            "0" if amount != remaining => {
                return Err(refuse(
                    "2013",
                    format!("전체취소 금액이 취소가능금액과 다릅니다 (취소가능금액 {remaining})"),
                ));
            }
            "1" if amount > remaining => {
                return Err(refuse(
                    "2013",
                    format!("취소금액이 취소가능금액보다 큽니다 (취소가능금액 {remaining})"),
                ));
            }
            "0" | "1" => {}
            other => {
                return Err(refuse(
                    "A111",
                    format!("파라미터 오류: PartialCancelCode {other:?} (0 또는 1)"),
                ));
            }
        }
        let now = self.clock.now();
        let cancel_num = format!("{:08}", self.rng.random_range(0..100_000_000u32));
        let entry = &mut self.ledger[index];
        entry.cancelled_amount += amount;
        let remain = entry.amount - entry.cancelled_amount;
        entry.state = if remain == 0 {
            LedgerState::Cancelled
        } else {
            LedgerState::PartiallyCancelled
        };
        let signed_amount = match tamper {
            Tamper::None => amount,
            // A plausible-looking digest over the wrong amount: only verification catches it.
            Tamper::CancelSignature => amount + 1,
        };
        let signature = sign::cancel_response(tid, mid.as_str(), &signed_amount.to_string(), key);
        Ok(vec![
            ("ResultCode", "2001".into()),
            ("ResultMsg", "취소 성공".into()),
            ("CancelAmt", format!("{amount:012}")),
            ("MID", mid.as_str().to_owned()),
            ("Moid", entry.moid.clone()),
            ("Signature", signature),
            ("PayMethod", "BILL".into()),
            ("TID", tid.to_owned()),
            ("CancelDate", kst(now, "%Y%m%d")),
            ("CancelTime", kst(now, "%H%M%S")),
            ("CancelNum", cancel_num),
            ("RemainAmt", format!("{remain:012}")),
        ])
    }

    /// `Status=0` for an approved or partly refunded transaction of this merchant, `1` for a
    /// fully refunded one (both with `AuthCode`, `AuthDate`, `Moid` and `Amt`), `9` for
    /// anything else: an unknown or declined TID, a billkey TID, another merchant's.
    fn status(&self, mid: &Mid, req: &Req) -> Fields {
        let tid = req.get("TID");
        let entry = self
            .by_tid
            .get(tid)
            .map(|i| &self.ledger[*i])
            .filter(|e| e.mid == mid.as_str());
        let mut fields: Fields = vec![
            ("ResultCode", "0000".into()),
            ("ResultMsg", "조회 성공".into()),
            ("TID", tid.to_owned()),
        ];
        match entry {
            Some(e) => {
                let status = match e.state {
                    LedgerState::Approved | LedgerState::PartiallyCancelled => "0",
                    LedgerState::Cancelled => "1",
                };
                fields.push(("Status", status.into()));
                fields.push(("AuthCode", e.auth_code.clone()));
                fields.push(("AuthDate", kst(e.approved_at, "%y%m%d%H%M%S")));
                // Moid and Amt are inferred for the legacy lookup (NICEPAY's current lookup
                // answers them as orderId and amount). Amt is the amount approved, whatever
                // was refunded since: the current lookup's `amount` is the payment amount,
                // with the remainder apart as `balanceAmt`.
                fields.push(("Moid", e.moid.clone()));
                fields.push(("Amt", format!("{:012}", e.amount)));
            }
            None => fields.push(("Status", "9".into())),
        }
        fields
    }

    /// A billing TID nobody has used, registered as used.
    pub(super) fn mint_tid(&mut self, mid: &Mid, now: DateTime<Utc>) -> String {
        let tid = mint(
            &mut self.rng,
            now,
            |at, n| tid::build(mid, at, n).as_str().to_owned(),
            |c| self.used_tids.contains(c),
        );
        self.used_tids.insert(tid.clone());
        tid
    }
}

/// Builds the answer in the requested format.
fn answer(charset: Charset, edi_type: EdiType, result: Step<Fields>) -> Answer {
    let pairs = match result {
        Ok(fields) => fields,
        Err(r) => {
            let mut fields = vec![("ResultCode", r.code.to_owned()), ("ResultMsg", r.msg)];
            fields.extend(r.echo);
            fields
        }
    };
    Answer {
        charset,
        edi_type,
        fields: pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

/// `CharSet` and `EdiType`; absent or empty means the default.
fn response_format(req: &Req) -> Step<(Charset, EdiType)> {
    let charset = match req.get("CharSet") {
        "" => Charset::default(),
        text => Charset::parse(text).ok_or_else(|| {
            refuse(
                "A111",
                format!("파라미터 오류: CharSet {text:?} (euc-kr 또는 utf-8)"),
            )
        })?,
    };
    let edi_type = match req.get("EdiType") {
        "" => EdiType::default(),
        text => EdiType::parse(text).ok_or_else(|| {
            refuse(
                "A111",
                format!("파라미터 오류: EdiType {text:?} (JSON 또는 KV)"),
            )
        })?,
    };
    Ok((charset, edi_type))
}

fn check_formats(api: Api, req: &Req) -> Step<()> {
    let mid = req.get("MID");
    if mid.len() != 10 {
        return Err(refuse("A111", "파라미터 오류: MID (10자리)"));
    }
    let edi = req.get("EdiDate");
    if edi.len() != 14 || !edi.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse(
            "A111",
            "파라미터 오류: EdiDate (YYYYMMDDHHMMSS 14자리)",
        ));
    }
    for (name, max) in TEXT_LIMITS {
        if let Some(value) = req.opt(name) {
            form::euc_kr_limited(name, value, *max)
                .map_err(|e| refuse("A111", format!("파라미터 오류: {e}")))?;
        }
    }
    if let Some(tid) = req.opt("TID") {
        if tid.len() != 30 {
            return Err(refuse(
                "1652",
                format!("TID 길이 오류 ({} bytes, 30 expected)", tid.len()),
            ));
        }
        if api == Api::Approve && !tid::is_billing_tid(tid, mid) {
            return Err(refuse(
                "A111",
                "파라미터 오류: TID (MID + 0116 + yyMMddHHmmss + 4자리)",
            ));
        }
    }
    Ok(())
}

fn check_sign(api: Api, req: &Req, key: &MerchantKey) -> Step<()> {
    let f = |name| req.get(name);
    let expected = match api {
        Api::BillkeyIssue => sign::billkey_issue(f("MID"), f("EdiDate"), f("Moid"), key),
        Api::Approve => sign::approve(f("MID"), f("EdiDate"), f("Moid"), f("Amt"), f("BID"), key),
        Api::BillkeyRemove => {
            sign::billkey_remove(f("MID"), f("EdiDate"), f("Moid"), f("BID"), key)
        }
        Api::Cancel => sign::cancel(f("MID"), f("CancelAmt"), f("EdiDate"), key),
        Api::Status => sign::status(f("TID"), f("MID"), f("EdiDate"), key),
    };
    if sign::digest_eq(f("SignData"), &expected) {
        Ok(())
    } else {
        Err(refuse("A101", "위변조 데이터 검증 실패 (SignData)"))
    }
}

/// The first field whose percent-decoded value is not strict EUC-KR (KS X 1001): every byte
/// from `0x80` up must start a pair whose two bytes are both `0xA1..=0xFE`. CP949 extensions
/// (lead `0x81..=0xC6` with a trail below `0xA1`) fail here, as they would at NICEPAY.
pub fn outside_ks_x_1001(body: &[u8]) -> Option<String> {
    let ks = |b: u8| (0xA1..=0xFE).contains(&b);
    body.split(|b| *b == b'&').find_map(|pair| {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let raw: Vec<u8> = percent_encoding::percent_decode(value).collect();
        let mut i = 0;
        let mut ok = true;
        while i < raw.len() {
            if raw[i] < 0x80 {
                i += 1;
            } else if i + 1 < raw.len() && ks(raw[i]) && ks(raw[i + 1]) {
                i += 2;
            } else {
                ok = false;
                break;
            }
        }
        (!ok).then(|| String::from_utf8_lossy(name).into_owned())
    })
}

/// Digits only, 1 to 12 of them, at least 1 KRW.
fn parse_amount(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|v| *v >= 1)
}

/// Reads the decrypted `EncData` plaintext; the card number does not outlive this function.
/// Messages name the broken key but never echo a value.
fn card_facts(plain: &[u8]) -> Step<CardFacts> {
    const KEYS: [&str; 5] = ["CardNo", "ExpYear", "ExpMonth", "IDNo", "CardPw"];
    let bad = |what: &str| refuse("F112", format!("카드정보 오류: {what}"));
    let text =
        std::str::from_utf8(plain).map_err(|_| bad("EncData plaintext is not ASCII text"))?;
    let mut values: [Option<&str>; 5] = [None; 5];
    for pair in text.split('&') {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| bad("Key=Value&… expected"))?;
        let i = KEYS
            .iter()
            .position(|k| *k == name)
            .ok_or_else(|| bad("unknown key (CardNo, ExpYear, ExpMonth, IDNo, CardPw expected)"))?;
        if values[i].replace(value).is_some() {
            return Err(bad(&format!("{} appears twice", KEYS[i])));
        }
    }
    let [card_no, exp_year, exp_month, id_no, card_pw] = values;
    let missing = |i: usize| bad(&format!("{} missing", KEYS[i]));
    let card_no = card_no.ok_or_else(|| missing(0))?;
    let exp_year = exp_year.ok_or_else(|| missing(1))?;
    let exp_month = exp_month.ok_or_else(|| missing(2))?;
    let id_no = id_no.ok_or_else(|| missing(3))?;
    let card_pw = card_pw.ok_or_else(|| missing(4))?;
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !cards::is_valid_card_no(card_no) {
        return Err(refuse("F112", "카드번호 오류 (CardNo: 숫자 14~16자리)"));
    }
    let month_ok = exp_month.len() == 2
        && digits(exp_month)
        && (1..=12).contains(&exp_month.parse::<u8>().unwrap_or(0));
    if exp_year.len() != 2 || !digits(exp_year) || !month_ok {
        return Err(bad("유효기간 형식 오류 (ExpYear YY, ExpMonth MM)"));
    }
    if !matches!(id_no.len(), 0 | 6 | 10) || !digits(id_no) {
        return Err(bad("IDNo (생년월일 6자리 또는 사업자번호 10자리)"));
    }
    if !matches!(card_pw.len(), 0 | 2) || !digits(card_pw) {
        return Err(bad("CardPw (비밀번호 앞 2자리)"));
    }
    Ok(CardFacts {
        behaviour: cards::behaviour_for(card_no),
        masked: cards::mask(card_no),
        brand: cards::brand_for(card_no),
    })
}

/// `at` in Korea time, formatted.
pub(super) fn kst(at: DateTime<Utc>, format: &str) -> String {
    at.with_timezone(&chrono_tz::Asia::Seoul)
        .format(format)
        .to_string()
}

/// A fresh identifier `make(second, suffix)`: tries every 4-digit suffix of the current second
/// from a random start, then moves on to the next second, so it never fails.
pub(super) fn mint(
    rng: &mut StdRng,
    now: DateTime<Utc>,
    make: impl Fn(DateTime<Utc>, u32) -> String,
    taken: impl Fn(&str) -> bool,
) -> String {
    let mut at = now;
    loop {
        let start = rng.random_range(0..PER_SECOND);
        for i in 0..PER_SECOND {
            let candidate = make(at, (start + i) % PER_SECOND);
            if !taken(&candidate) {
                return candidate;
            }
        }
        at += chrono::Duration::seconds(1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;

    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::SecretString;
    use crate::gateway::nicepay::edi_date;
    use crate::sim::SimConfig;

    const MID: &str = "nictest04m";
    const OTHER_MID: &str = "nicepay00m";
    const CARD: &str = "9410123456780000";

    type Pairs = Vec<(&'static str, String)>;

    struct Fx {
        sim: SimState,
        clock: ManualClock,
        merchants: Vec<(Mid, MerchantKey)>,
    }

    fn fx() -> Fx {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 25, 0, 0, 0).unwrap());
        let merchants = SimConfig::default_merchants();
        Fx {
            sim: SimState::new(&merchants, Arc::new(clock.clone()), 7),
            clock,
            merchants,
        }
    }

    /// An EUC-KR form body, as NICEPAY receives it.
    fn body(fields: &[(&'static str, String)]) -> Vec<u8> {
        fields
            .iter()
            .map(|(k, v)| {
                let bytes = encoding_rs::EUC_KR.encode(v).0;
                format!(
                    "{k}={}",
                    form_urlencoded::byte_serialize(&bytes).collect::<String>()
                )
            })
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes()
    }

    fn get<'a>(fields: &'a Pairs, name: &str) -> &'a str {
        fields
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn set(fields: &mut Pairs, name: &'static str, value: &str) {
        fields.retain(|(k, _)| *k != name);
        fields.push((name, value.to_owned()));
    }

    fn without(mut fields: Pairs, name: &str) -> Pairs {
        fields.retain(|(k, _)| *k != name);
        fields
    }

    impl Fx {
        fn key(&self, mid: &str) -> MerchantKey {
            self.merchants
                .iter()
                .find(|(m, _)| m.as_str() == mid)
                .map(|(_, k)| k.clone())
                .unwrap()
        }

        fn edi(&self) -> String {
            edi_date(crate::clock::Clock::now(&self.clock))
        }

        /// Adds SignData computed from the fields as they are.
        fn sign(&self, api: Api, mut fields: Pairs) -> Pairs {
            let key = self.key(get(&fields, "MID"));
            let f = |n| get(&fields, n);
            let sign = match api {
                Api::BillkeyIssue => sign::billkey_issue(f("MID"), f("EdiDate"), f("Moid"), &key),
                Api::Approve => {
                    sign::approve(f("MID"), f("EdiDate"), f("Moid"), f("Amt"), f("BID"), &key)
                }
                Api::BillkeyRemove => {
                    sign::billkey_remove(f("MID"), f("EdiDate"), f("Moid"), f("BID"), &key)
                }
                Api::Cancel => sign::cancel(f("MID"), f("CancelAmt"), f("EdiDate"), &key),
                Api::Status => sign::status(f("TID"), f("MID"), f("EdiDate"), &key),
            };
            set(&mut fields, "SignData", &sign);
            fields
        }

        fn call(&mut self, api: Api, fields: &Pairs) -> Answer {
            self.sim.handle(api, &body(fields), Tamper::None)
        }

        fn issue_fields_for(&self, mid: &'static str, plain: &str, moid: &str) -> Pairs {
            let enc = crypto::encrypt(&SecretString::from(plain.to_owned()), &self.key(mid));
            self.sign(
                Api::BillkeyIssue,
                vec![
                    ("MID", mid.into()),
                    ("EdiDate", self.edi()),
                    ("Moid", moid.into()),
                    ("EncData", enc),
                    ("BuyerName", "홍길동".into()),
                ],
            )
        }

        fn issue_fields(&self, card: &str) -> Pairs {
            let plain = format!("CardNo={card}&ExpYear=30&ExpMonth=01&IDNo=880229&CardPw=37");
            self.issue_fields_for(MID, &plain, "issue-1")
        }

        fn issue(&mut self, card: &str) -> Answer {
            let fields = self.issue_fields(card);
            let a = self.call(Api::BillkeyIssue, &fields);
            assert_eq!(a.result_code(), "F100", "{}", a.result_msg());
            a
        }

        fn bid(&mut self, card: &str) -> String {
            self.issue(card).get("BID").unwrap().to_owned()
        }

        /// A billing TID nobody has used yet.
        fn tid(&self, mid: &str) -> String {
            let mid = Mid::new(mid).unwrap();
            (0..)
                .map(|n| tid::build(&mid, crate::clock::Clock::now(&self.clock), n))
                .map(|t| t.as_str().to_owned())
                .find(|t| !self.sim.used_tids.contains(t))
                .unwrap()
        }

        fn approve_unsigned(&self, bid: &str, tid: &str, moid: &str, amt: &str) -> Pairs {
            vec![
                ("BID", bid.into()),
                ("MID", MID.into()),
                ("TID", tid.into()),
                ("EdiDate", self.edi()),
                ("Moid", moid.into()),
                ("Amt", amt.into()),
                ("GoodsName", "월간 구독 (프리미엄)".into()),
                ("CardInterest", "0".into()),
                ("CardQuota", "00".into()),
            ]
        }

        fn approve_fields(&self, bid: &str, tid: &str, moid: &str, amt: &str) -> Pairs {
            self.sign(Api::Approve, self.approve_unsigned(bid, tid, moid, amt))
        }

        fn approve(&mut self, bid: &str, tid: &str, moid: &str, amt: &str) -> Answer {
            let fields = self.approve_fields(bid, tid, moid, amt);
            self.call(Api::Approve, &fields)
        }

        /// Issues a billkey and charges it once; returns (BID, TID).
        fn charged(&mut self, amt: &str) -> (String, String) {
            let bid = self.bid(CARD);
            let tid = self.tid(MID);
            let a = self.approve(&bid, &tid, "order-1", amt);
            assert_eq!(a.result_code(), "3001", "{}", a.result_msg());
            (bid, tid)
        }

        fn remove_fields(&self, bid: &str) -> Pairs {
            self.sign(
                Api::BillkeyRemove,
                vec![
                    ("BID", bid.into()),
                    ("MID", MID.into()),
                    ("EdiDate", self.edi()),
                    ("Moid", "remove-1".into()),
                ],
            )
        }

        fn cancel_fields(&self, tid: &str, amt: &str, partial: bool) -> Pairs {
            self.sign(
                Api::Cancel,
                vec![
                    ("TID", tid.into()),
                    ("MID", MID.into()),
                    ("Moid", "order-1".into()),
                    ("CancelAmt", amt.into()),
                    ("CancelMsg", "고객요청".into()),
                    ("PartialCancelCode", if partial { "1" } else { "0" }.into()),
                    ("EdiDate", self.edi()),
                ],
            )
        }

        fn cancel(&mut self, tid: &str, amt: &str, partial: bool) -> Answer {
            let fields = self.cancel_fields(tid, amt, partial);
            self.call(Api::Cancel, &fields)
        }

        fn status_fields(&self, tid: &str) -> Pairs {
            self.sign(
                Api::Status,
                vec![
                    ("TID", tid.into()),
                    ("MID", MID.into()),
                    ("EdiDate", self.edi()),
                ],
            )
        }

        fn status(&mut self, tid: &str) -> String {
            let fields = self.status_fields(tid);
            let a = self.call(Api::Status, &fields);
            assert_eq!(a.result_code(), "0000", "{}", a.result_msg());
            a.get("Status").unwrap().to_owned()
        }
    }

    /// One data-driven case: the request `fields` sent to `api` answers `code`, and the
    /// message mentions `mentions`.
    fn check(fx: &mut Fx, what: &str, api: Api, fields: &Pairs, code: &str, mentions: &str) {
        let a = fx.call(api, fields);
        assert_eq!(a.result_code(), code, "{what}: {}", a.result_msg());
        assert!(
            a.result_msg().contains(mentions),
            "{what}: {:?} should mention {mentions:?}",
            a.result_msg()
        );
    }

    #[test]
    fn issue_happy_path() {
        let mut fx = fx();
        let a = fx.issue(CARD);
        let bid = a.get("BID").unwrap();
        assert_eq!(bid.len(), 30);
        assert!(bid.starts_with("BIKYnictest04m261225090000"), "{bid}");
        assert!(tid::is_billing_tid(a.get("TID").unwrap(), MID));
        assert_eq!(a.get("AuthDate"), Some("20261225"));
        assert_eq!(a.get("CardName"), Some("비씨"));
        assert_eq!(a.get("CardCl"), Some("0"));
        assert!(a.get("AcquCardName").is_some() && a.get("CardCode").is_some());
        // Default answer: JSON in EUC-KR, so the Korean message is really EUC-KR bytes.
        assert_eq!(a.content_type(), "application/json; charset=euc-kr");
        let body = a.body();
        assert!(std::str::from_utf8(&body).is_err());
        let text = encoding_rs::EUC_KR.decode(&body).0;
        let json: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json.get("ResultMsg").map(String::as_str),
            Some(a.result_msg())
        );
        // Two billkeys in the same second still differ.
        let again = fx.issue(CARD);
        assert_ne!(again.get("BID"), a.get("BID"));
        assert_ne!(again.get("TID"), a.get("TID"));
    }

    #[test]
    fn the_vectors_encdata_decrypts() {
        // vectors.json: the known EncData for nictest04m.
        let mut fx = fx();
        let mut fields = fx.issue_fields(CARD);
        set(
            &mut fields,
            "EncData",
            "919A32E6FDDECAB6E5379CA1E54D16A612722944DC3BDDA42CD4AE9A1FC30737B366C250E999D1F19138B7FF8F7097B23E1AB64A9637DDF757AFB1EBC924D6EA",
        );
        let a = fx.call(Api::BillkeyIssue, &fields);
        assert_eq!(a.result_code(), "F100", "{}", a.result_msg());
    }

    #[test]
    fn approve_happy_path() {
        let mut fx = fx();
        let bid = fx.bid("1234567890123456");
        let tid = fx.tid(MID);
        let mut fields = fx.approve_fields(&bid, &tid, "order-1", "9900");
        set(&mut fields, "MallReserved", "메모 memo");
        set(&mut fields, "CharSet", "utf-8");
        set(&mut fields, "EdiType", "KV");
        let a = fx.call(Api::Approve, &fields);
        assert_eq!(a.result_code(), "3001", "{}", a.result_msg());
        assert_eq!(a.result_msg(), "카드 결제 성공");
        assert_eq!(a.get("TID"), Some(tid.as_str()));
        assert_eq!(a.get("Moid"), Some("order-1"));
        assert_eq!(a.get("Amt"), Some("000000009900"));
        assert_eq!(a.get("AuthCode").unwrap().len(), 8);
        assert_eq!(a.get("AuthDate"), Some("261225090000"));
        assert_eq!(a.get("CardNo"), Some("12345678****3456"));
        assert_eq!(a.get("CardQuota"), Some("00"));
        assert_eq!(a.get("CcPartCl"), Some("1"));
        assert_eq!(a.get("MallReserved"), Some("메모 memo"));
        // KV in UTF-8: values percent-encoded from UTF-8 bytes.
        assert_eq!(a.content_type(), "text/plain; charset=utf-8");
        let body = String::from_utf8(a.body()).unwrap();
        assert!(body.contains("ResultMsg=%EC%B9%B4%EB%93%9C+"), "{body}");
        assert!(body.contains("&ResultCode=3001&"), "{body}");

        let ledger = fx.sim.ledger();
        assert_eq!(ledger.len(), 1);
        let e = &ledger[0];
        assert_eq!(
            (
                e.mid.as_str(),
                e.tid.as_str(),
                e.moid.as_str(),
                e.bid.as_str()
            ),
            (MID, tid.as_str(), "order-1", bid.as_str())
        );
        assert_eq!((e.amount, e.cancelled_amount), (9900, 0));
        assert_eq!(e.goods_name, "월간 구독 (프리미엄)");
        assert_eq!(e.state, LedgerState::Approved);
        assert_eq!(e.approved_at, crate::clock::Clock::now(&fx.clock));
        assert_eq!(Some(e.auth_code.as_str()), a.get("AuthCode"));
    }

    #[test]
    fn kv_in_euc_kr() {
        let mut fx = fx();
        let mut fields = fx.issue_fields(CARD);
        set(&mut fields, "EdiType", "KV");
        let a = fx.call(Api::BillkeyIssue, &fields);
        assert_eq!(a.content_type(), "text/plain; charset=euc-kr");
        let body = String::from_utf8(a.body()).unwrap();
        // 비씨 in EUC-KR.
        assert!(body.contains("CardName=%BA%F1%BE%BE"), "{body}");
    }

    #[test]
    fn removal_needs_no_amt() {
        // The manual's table lists Amt, its samples omit it: nicebill never sends it, the
        // simulator neither requires nor minds it (gateway::nicepay::limits).
        let mut fx = fx();
        for with_amt in [false, true] {
            let bid = fx.bid(CARD);
            let mut fields = fx.remove_fields(&bid);
            assert!(fields.iter().all(|(k, _)| *k != "Amt"));
            if with_amt {
                fields.push(("Amt", "0".into()));
            }
            let a = fx.call(Api::BillkeyRemove, &fields);
            assert_eq!(
                a.result_code(),
                "F101",
                "Amt sent: {with_amt}: {}",
                a.result_msg()
            );
        }
    }

    #[test]
    fn remove_happy_path_and_after() {
        let mut fx = fx();
        let bid = fx.bid(CARD);
        let fields = fx.remove_fields(&bid);
        let a = fx.call(Api::BillkeyRemove, &fields);
        assert_eq!(a.result_code(), "F101", "{}", a.result_msg());
        assert_eq!(a.get("BID"), Some(bid.as_str()));
        assert_eq!(a.get("AuthDate"), Some("20261225"));
        let remove_tid = a.get("TID").unwrap().to_owned();
        assert!(tid::is_billing_tid(&remove_tid, MID));
        let removals = fx.sim.removals();
        assert_eq!(removals.len(), 1);
        assert_eq!(
            (
                removals[0].bid.as_str(),
                removals[0].tid.as_str(),
                removals[0].mid.as_str()
            ),
            (bid.as_str(), remove_tid.as_str(), MID)
        );
        check(
            &mut fx,
            "remove again",
            Api::BillkeyRemove,
            &fields,
            "A124",
            "삭제",
        );
        assert_eq!(fx.sim.removals().len(), 1, "a refused removal is not one");
        let tid = fx.tid(MID);
        let fields = fx.approve_fields(&bid, &tid, "o", "100");
        check(
            &mut fx,
            "approve removed",
            Api::Approve,
            &fields,
            "A124",
            "삭제",
        );
        // The removal's TID is spent too.
        let fields = fx.approve_fields(&bid, &remove_tid, "o", "100");
        check(
            &mut fx,
            "removal TID",
            Api::Approve,
            &fields,
            "A225",
            "중복",
        );
        assert!(fx.sim.ledger().is_empty());
    }

    #[test]
    fn cancel_full() {
        let mut fx = fx();
        let (_, tid) = fx.charged("9900");
        let a = fx.cancel(&tid, "9900", false);
        assert_eq!(a.result_code(), "2001", "{}", a.result_msg());
        assert_eq!(a.get("CancelAmt"), Some("000000009900"));
        assert_eq!(a.get("RemainAmt"), Some("000000000000"));
        assert_eq!(a.get("MID"), Some(MID));
        assert_eq!(a.get("Moid"), Some("order-1"));
        assert_eq!(a.get("PayMethod"), Some("BILL"));
        assert_eq!(a.get("TID"), Some(tid.as_str()));
        assert_eq!(a.get("CancelDate"), Some("20261225"));
        assert_eq!(a.get("CancelTime"), Some("090000"));
        assert_eq!(a.get("CancelNum").unwrap().len(), 8);
        let want = sign::cancel_response(&tid, MID, "9900", &fx.key(MID));
        assert_eq!(a.get("Signature"), Some(want.as_str()));
        let e = &fx.sim.ledger()[0];
        assert_eq!(
            (e.state, e.cancelled_amount),
            (LedgerState::Cancelled, 9900)
        );
        assert_eq!(fx.status(&tid), "1");
        let a = fx.cancel(&tid, "9900", false);
        assert_eq!(a.result_code(), "2015", "{}", a.result_msg());
        let a = fx.cancel(&tid, "1", true);
        assert_eq!(a.result_code(), "2015", "{}", a.result_msg());
    }

    #[test]
    fn cancel_partial_rules() {
        let mut fx = fx();
        let (_, tid) = fx.charged("9900");
        // (CancelAmt, partial, code, remaining afterwards)
        let steps = [
            ("1000", false, "2013", 9900),
            ("9901", true, "2013", 9900),
            ("0", true, "2013", 9900),
            ("1,000", true, "2013", 9900),
            ("1000", true, "2001", 8900),
            ("9900", false, "2013", 8900),
            ("8901", true, "2013", 8900),
            ("900", true, "2001", 8000),
            ("8000", false, "2001", 0),
            ("1", true, "2015", 0),
        ];
        for (amt, partial, code, remaining) in steps {
            let a = fx.cancel(&tid, amt, partial);
            assert_eq!(a.result_code(), code, "{amt} {partial}: {}", a.result_msg());
            let e = &fx.sim.ledger()[0];
            assert_eq!(e.amount - e.cancelled_amount, remaining, "{amt} {partial}");
            if code == "2001" {
                assert_eq!(
                    a.get("RemainAmt"),
                    Some(format!("{remaining:012}").as_str())
                );
                let want_state = if remaining == 0 {
                    LedgerState::Cancelled
                } else {
                    LedgerState::PartiallyCancelled
                };
                assert_eq!(e.state, want_state);
                let want_status = if remaining == 0 { "1" } else { "0" };
                assert_eq!(fx.status(&tid), want_status, "partly cancelled is approved");
                // The lookup's Amt is the amount approved, not what is left.
                let looked = fx.call(Api::Status, &fx.status_fields(&tid));
                assert_eq!(looked.get("Amt"), Some("000000009900"), "{amt} {partial}");
                assert_eq!(looked.get("Moid"), Some("order-1"));
            }
        }
        let mut fields = fx.cancel_fields(&tid, "1", true);
        set(&mut fields, "PartialCancelCode", "2");
        check(&mut fx, "bad code", Api::Cancel, &fields, "2015", "취소");
    }

    #[test]
    fn cancel_refusals() {
        let mut fx = fx();
        let (_, tid) = fx.charged("9900");
        let mut fields = fx.cancel_fields(&tid, "100", true);
        set(&mut fields, "PartialCancelCode", "2");
        check(
            &mut fx,
            "bad code",
            Api::Cancel,
            &fields,
            "A111",
            "PartialCancelCode",
        );
        let unknown = fx.tid(MID);
        let fields = fx.cancel_fields(&unknown, "100", true);
        check(&mut fx, "unknown TID", Api::Cancel, &fields, "2012", "");
        // The same TID under another merchant is not that merchant's transaction.
        let mut fields = fx.cancel_fields(&tid, "100", true);
        set(&mut fields, "MID", OTHER_MID);
        let fields = fx.sign(Api::Cancel, fields);
        check(&mut fx, "other MID", Api::Cancel, &fields, "2012", "");
        let mut fields = fx.cancel_fields(&tid, "100", true);
        set(&mut fields, "CancelMsg", &"취소".repeat(26));
        check(
            &mut fx,
            "long reason",
            Api::Cancel,
            &fields,
            "A111",
            "CancelMsg",
        );
        assert_eq!(fx.sim.ledger()[0].cancelled_amount, 0);
    }

    #[test]
    fn tampered_cancel_signature() {
        let mut fx = fx();
        let (_, tid) = fx.charged("9900");
        let fields = fx.cancel_fields(&tid, "9900", false);
        let a = fx
            .sim
            .handle(Api::Cancel, &body(&fields), Tamper::CancelSignature);
        assert_eq!(a.result_code(), "2001");
        let key = fx.key(MID);
        let sig = a.get("Signature").unwrap();
        for amt in ["9900", "000000009900"] {
            assert!(!sign::digest_eq(
                sig,
                &sign::cancel_response(&tid, MID, amt, &key)
            ));
        }
        // Processed all the same.
        assert_eq!(fx.sim.ledger()[0].state, LedgerState::Cancelled);
    }

    #[test]
    fn status_lookups() {
        let mut fx = fx();
        let unknown = fx.tid(MID);
        assert_eq!(fx.status(&unknown), "9");
        // A status lookup does not spend the TID: it can still be approved.
        let bid = fx.bid(CARD);
        let a = fx.approve(&bid, &unknown, "order-1", "100");
        assert_eq!(a.result_code(), "3001", "{}", a.result_msg());
        let fields = fx.status_fields(&unknown);
        let a = fx.call(Api::Status, &fields);
        assert_eq!(a.get("Status"), Some("0"));
        assert_eq!(a.get("TID"), Some(unknown.as_str()));
        assert_eq!(
            a.get("AuthCode"),
            Some(fx.sim.ledger()[0].auth_code.as_str())
        );
        assert_eq!(a.get("AuthDate"), Some("261225090000"));
        assert_eq!(a.get("Moid"), Some("order-1"));
        assert_eq!(a.get("Amt"), Some("000000000100"));
        // Not found names no order.
        let other = fx.tid(MID);
        let a = fx.call(Api::Status, &fx.status_fields(&other));
        assert_eq!(a.get("Status"), Some("9"));
        assert_eq!((a.get("Moid"), a.get("Amt")), (None, None));
        // The billkey issue TID is not an approval.
        let issue_tid = fx.issue(CARD).get("TID").unwrap().to_owned();
        assert_eq!(fx.status(&issue_tid), "9");
        // A declined approval is not found either.
        let bid = fx.bid("4000000000000002");
        let tid = fx.tid(MID);
        assert_eq!(
            fx.approve(&bid, &tid, "order-2", "100").result_code(),
            "3095"
        );
        assert_eq!(fx.status(&tid), "9");
    }

    #[test]
    fn foreign_approvals() {
        let mut fx = fx();
        let bid = fx.bid(CARD);
        let tid = fx.tid(MID);
        fx.sim
            .seed_foreign_approval(&tid, "someone-else-7", 5_000)
            .unwrap();
        // Our approval with that TID is a duplicate and charges nothing.
        let fields = fx.approve_fields(&bid, &tid, "order-1", "9900");
        check(&mut fx, "collision", Api::Approve, &fields, "A225", &tid);
        // The lookup finds the foreign transaction.
        let a = fx.call(Api::Status, &fx.status_fields(&tid));
        assert_eq!(a.get("Status"), Some("0"));
        assert_eq!(a.get("Moid"), Some("someone-else-7"));
        assert_eq!(a.get("Amt"), Some("000000005000"));
        assert_eq!(a.get("AuthCode").map(str::len), Some(8));
        let ledger = fx.sim.ledger();
        assert_eq!(ledger.len(), 1);
        assert!(ledger[0].seeded && ledger[0].moid == "someone-else-7");
        // It is an approved order like any other.
        let other = fx.tid(MID);
        let fields = fx.approve_fields(&bid, &other, "someone-else-7", "100");
        check(&mut fx, "its Moid", Api::Approve, &fields, "A127", "");
        // Refusals: (TID, Moid, amount, the reason mentions)
        let fresh = fx.tid(MID);
        let other_mid_tid = format!("unknown00m{}", &fresh[10..]);
        let card_tid = format!("{MID}0101{}", &fresh[14..]);
        let long_moid = "m".repeat(65);
        let cases = [
            (tid.as_str(), "x-1", 100, "already used"),
            (fresh.as_str(), "someone-else-7", 100, "already approved"),
            (other_mid_tid.as_str(), "x-1", 100, "billing TID"),
            (card_tid.as_str(), "x-1", 100, "billing TID"),
            ("short", "x-1", 100, "billing TID"),
            (fresh.as_str(), "", 100, "Moid"),
            (fresh.as_str(), &long_moid, 100, "Moid"),
            (fresh.as_str(), "x-1", 0, "amount"),
            (fresh.as_str(), "x-1", 1_000_000_000_000, "amount"),
        ];
        for (tid, moid, amount, mentions) in cases {
            let err = fx.sim.seed_foreign_approval(tid, moid, amount).unwrap_err();
            assert!(err.contains(mentions), "{tid} {moid} {amount}: {err}");
        }
        assert_eq!(fx.sim.ledger().len(), 1);
        // The refused seeds did not spend the fresh TID: ours can still be approved with it.
        assert_eq!(
            fx.approve(&bid, &fresh, "order-1", "9900").result_code(),
            "3001"
        );
        fx.sim.reset();
        assert_eq!(fx.status(&tid), "9");
    }

    #[test]
    fn missing_fields() {
        let mut fx = fx();
        let bid = fx.bid(CARD);
        let (_, tid) = fx.charged("100");
        let other_tid = fx.tid(MID);
        let requests = [
            (Api::BillkeyIssue, fx.issue_fields(CARD)),
            (
                Api::Approve,
                fx.approve_fields(&bid, &other_tid, "order-9", "100"),
            ),
            (Api::BillkeyRemove, fx.remove_fields(&bid)),
            (Api::Cancel, fx.cancel_fields(&tid, "100", false)),
            (Api::Status, fx.status_fields(&tid)),
        ];
        for (api, fields) in requests {
            for name in required(api) {
                let what = format!("{api:?} without {name}");
                let gone = without(fields.clone(), name);
                check(&mut fx, &what, api, &gone, "A110", name);
                let mut empty = fields.clone();
                set(&mut empty, name, " ");
                check(&mut fx, &what, api, &empty, "A110", name);
            }
            // Nothing above was processed: the complete request still works.
            let a = fx.call(api, &fields);
            assert!(
                ["F100", "3001", "F101", "2001", "0000"].contains(&a.result_code()),
                "{api:?}: {} {}",
                a.result_code(),
                a.result_msg()
            );
        }
    }

    #[test]
    fn bad_signatures_and_unknown_merchant() {
        let mut fx = fx();
        let bid = fx.bid(CARD);
        let (_, tid) = fx.charged("100");
        let fresh = fx.tid(MID);
        let requests = [
            (Api::BillkeyIssue, fx.issue_fields(CARD)),
            (
                Api::Approve,
                fx.approve_fields(&bid, &fresh, "order-9", "100"),
            ),
            (Api::BillkeyRemove, fx.remove_fields(&bid)),
            (Api::Cancel, fx.cancel_fields(&tid, "100", false)),
            (Api::Status, fx.status_fields(&tid)),
        ];
        for (api, fields) in requests {
            let mut bad = fields.clone();
            set(&mut bad, "SignData", &"0".repeat(64));
            check(
                &mut fx,
                &format!("{api:?} zero sign"),
                api,
                &bad,
                "A101",
                "SignData",
            );
            // Signed over other values than those sent.
            let mut bad = fields.clone();
            set(&mut bad, "EdiDate", "20261225090001");
            check(
                &mut fx,
                &format!("{api:?} stale sign"),
                api,
                &bad,
                "A101",
                "SignData",
            );
            // Upper-case hex is the same digest.
            let mut upper = fields.clone();
            let sign = get(&fields, "SignData").to_ascii_uppercase();
            set(&mut upper, "SignData", &sign);
            let a = fx.call(api, &upper);
            assert_ne!(a.result_code(), "A101", "{api:?} upper-case SignData");
            let mut unknown = fields.clone();
            set(&mut unknown, "MID", "nobody000m");
            check(
                &mut fx,
                &format!("{api:?} MID"),
                api,
                &unknown,
                "A112",
                "nobody000m",
            );
        }
    }

    #[test]
    fn duplicate_tids() {
        let mut fx = fx();
        let issued = fx.issue(CARD);
        let bid = issued.get("BID").unwrap().to_owned();
        let issue_tid = issued.get("TID").unwrap().to_owned();
        let fields = fx.approve_fields(&bid, &issue_tid, "order-1", "100");
        check(
            &mut fx,
            "issue TID",
            Api::Approve,
            &fields,
            "A225",
            "중복된 TID",
        );
        let tid = fx.tid(MID);
        assert_eq!(
            fx.approve(&bid, &tid, "order-1", "100").result_code(),
            "3001"
        );
        let fields = fx.approve_fields(&bid, &tid, "order-2", "100");
        check(
            &mut fx,
            "approved TID",
            Api::Approve,
            &fields,
            "A225",
            "중복된 TID",
        );
        // A declined approval spends its TID as well.
        let declining = fx.bid("4000000000000002");
        let tid = fx.tid(MID);
        assert_eq!(
            fx.approve(&declining, &tid, "order-3", "100").result_code(),
            "3095"
        );
        let fields = fx.approve_fields(&bid, &tid, "order-3", "100");
        check(
            &mut fx,
            "declined TID",
            Api::Approve,
            &fields,
            "A225",
            "중복된 TID",
        );
        // A refused request does not: the same TID works once the request is right.
        let tid = fx.tid(MID);
        let fields = fx.approve_fields(&bid, &tid, "order-4", "0");
        check(&mut fx, "bad amount", Api::Approve, &fields, "3041", "");
        assert_eq!(
            fx.approve(&bid, &tid, "order-4", "100").result_code(),
            "3001"
        );
        assert_eq!(fx.sim.ledger().len(), 2);
    }

    #[test]
    fn approve_refusals() {
        let mut fx = fx();
        let (bid, _) = fx.charged("100");
        let plain = format!("CardNo={CARD}&ExpYear=30&ExpMonth=01&IDNo=&CardPw=");
        let other = fx.issue_fields_for(OTHER_MID, &plain, "issue-other");
        let other_bid = fx.call(Api::BillkeyIssue, &other).fields["BID"].clone();
        // Refused requests do not spend their TID, so every case can use the same one.
        let tid = fx.tid(MID);
        let goods_42 = "가".repeat(21);
        let buyer_32 = "가".repeat(16);
        let tel_21 = "1".repeat(21);
        let email_61 = "a".repeat(61);
        let reserved_501 = "x".repeat(501);
        let moid_65 = "m".repeat(65);
        let other_mid_tid = format!("{OTHER_MID}{}", &tid[10..]);
        let card_tid = format!("{MID}0101{}", &tid[14..]);
        // (what, fields changed before signing, code, the message mentions)
        type Case<'a> = (&'a str, Vec<(&'static str, &'a str)>, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (
                "unknown BID",
                vec![("BID", "BIKYnictest04m2612250900009999")],
                "A126",
                "",
            ),
            (
                "other merchant's BID",
                vec![("BID", &other_bid)],
                "A223",
                "",
            ),
            (
                "Moid approved before",
                vec![("Moid", "order-1")],
                "A127",
                "order-1",
            ),
            ("zero amount", vec![("Amt", "0")], "3041", "Amt"),
            ("negative amount", vec![("Amt", "-1")], "3041", "Amt"),
            ("decimal amount", vec![("Amt", "9.9")], "3041", "Amt"),
            ("13 digits", vec![("Amt", "1000000000000")], "3041", "Amt"),
            ("quota 01", vec![("CardQuota", "01")], "3022", "CardQuota"),
            ("quota 37", vec![("CardQuota", "37")], "3022", "CardQuota"),
            ("quota 1", vec![("CardQuota", "1")], "3022", "CardQuota"),
            ("quota ab", vec![("CardQuota", "ab")], "3022", "CardQuota"),
            (
                "interest 2",
                vec![("CardInterest", "2")],
                "A111",
                "CardInterest",
            ),
            (
                "GoodsName 42 bytes",
                vec![("GoodsName", &goods_42)],
                "A111",
                "GoodsName",
            ),
            (
                "BuyerName 32 bytes",
                vec![("BuyerName", &buyer_32)],
                "A111",
                "BuyerName",
            ),
            ("BuyerTel", vec![("BuyerTel", &tel_21)], "A111", "BuyerTel"),
            (
                "BuyerEmail",
                vec![("BuyerEmail", &email_61)],
                "A111",
                "BuyerEmail",
            ),
            (
                "MallReserved",
                vec![("MallReserved", &reserved_501)],
                "A111",
                "MallReserved",
            ),
            ("long Moid", vec![("Moid", &moid_65)], "A111", "Moid"),
            (
                "GoodsName newline",
                vec![("GoodsName", "a\nb")],
                "A111",
                "GoodsName",
            ),
            (
                "EdiDate short",
                vec![("EdiDate", "2026122509000")],
                "A111",
                "EdiDate",
            ),
            (
                "EdiDate not digits",
                vec![("EdiDate", "2026-12-25T090")],
                "A111",
                "EdiDate",
            ),
            ("TID 29", vec![("TID", &tid[..29])], "1652", "TID"),
            (
                "TID of another MID",
                vec![("TID", &other_mid_tid)],
                "A111",
                "TID",
            ),
            ("TID not billing", vec![("TID", &card_tid)], "A111", "TID"),
            ("CharSet", vec![("CharSet", "latin1")], "A111", "CharSet"),
            ("EdiType", vec![("EdiType", "XML")], "A111", "EdiType"),
            // CP949-only syllables (the test encoder is encoding_rs, i.e. CP949).
            (
                "GoodsName 똠",
                vec![("GoodsName", "월간 똠")],
                "A111",
                "GoodsName",
            ),
            (
                "GoodsName 햏",
                vec![("GoodsName", "햏")],
                "A111",
                "GoodsName",
            ),
            (
                "BuyerName 뷁",
                vec![("BuyerName", "뷁")],
                "A111",
                "BuyerName",
            ),
            (
                "MallReserved 쀍",
                vec![("MallReserved", "쀍")],
                "A111",
                "MallReserved",
            ),
        ];
        for (what, changes, code, mentions) in cases {
            let mut fields = fx.approve_unsigned(&bid, &tid, "o-1", "100");
            for (name, value) in changes {
                set(&mut fields, name, value);
            }
            let fields = fx.sign(Api::Approve, fields);
            check(&mut fx, what, Api::Approve, &fields, code, mentions);
        }
        assert_eq!(fx.sim.ledger().len(), 1, "nothing refused was charged");
        // 20 Hangul syllables are exactly 40 bytes, and 36 months is the longest installment.
        let mut fields = fx.approve_unsigned(&bid, &tid, "o-2", "100");
        set(&mut fields, "GoodsName", &"가".repeat(20));
        set(&mut fields, "CardQuota", "36");
        set(&mut fields, "CardInterest", "1");
        let fields = fx.sign(Api::Approve, fields);
        check(&mut fx, "40 bytes", Api::Approve, &fields, "3001", "");
        assert_eq!(fx.sim.ledger().len(), 2);
        // KS X 1001 Hangul, Hanja and full-width forms are strict EUC-KR.
        let tid = fx.tid(MID);
        let mut fields = fx.approve_unsigned(&bid, &tid, "o-3", "100");
        set(&mut fields, "GoodsName", "가 한글 漢字 ＡＢＣ");
        set(&mut fields, "BuyerName", "홍길동");
        let fields = fx.sign(Api::Approve, fields);
        check(&mut fx, "KS X 1001", Api::Approve, &fields, "3001", "");
        assert_eq!(fx.sim.ledger()[2].goods_name, "가 한글 漢字 ＡＢＣ");
    }

    #[test]
    fn outside_ks_x_1001_reads_raw_bytes() {
        assert_eq!(
            outside_ks_x_1001(b"A=1&GoodsName=%8C%63"),
            Some("GoodsName".into())
        );
        assert_eq!(
            outside_ks_x_1001(b"A=%B0%A1%B0"),
            Some("A".into()),
            "lone lead byte"
        );
        assert_eq!(outside_ks_x_1001(b"A=%B0%A1&B=%C7%D1%B1%DB+x"), None);
    }

    #[test]
    fn issue_refusals() {
        let mut fx = fx();
        let plain = |card: &str, yy: &str, mm: &str, id: &str, pw: &str| {
            format!("CardNo={card}&ExpYear={yy}&ExpMonth={mm}&IDNo={id}&CardPw={pw}")
        };
        let cases = [
            (plain("123", "30", "01", "", ""), "카드번호"),
            (plain("1234-5678-9012-3456", "30", "01", "", ""), "카드번호"),
            // NICEPAY's CardNo is 16 long (gateway::nicepay::limits).
            (plain("12345678901234567", "30", "01", "", ""), "14~16"),
            (plain(CARD, "3", "01", "", ""), "유효기간"),
            (plain(CARD, "30", "13", "", ""), "유효기간"),
            (plain(CARD, "30", "01", "12345", ""), "IDNo"),
            (plain(CARD, "30", "01", "", "1"), "CardPw"),
            (
                format!("CardNo={CARD}&ExpYear=30&ExpMonth=01"),
                "IDNo missing",
            ),
            (
                format!("CardNo={CARD}&ExpYear=30&ExpMonth=01&IDNo=&CardPw=&Cvc=1"),
                "unknown key",
            ),
            (
                format!("CardNo={CARD}&CardNo={CARD}&ExpYear=30&ExpMonth=01&IDNo=&CardPw="),
                "twice",
            ),
            ("garbage".to_owned(), "Key=Value"),
        ];
        for (plain, mentions) in cases {
            let fields = fx.issue_fields_for(MID, &plain, "issue-x");
            check(
                &mut fx,
                mentions,
                Api::BillkeyIssue,
                &fields,
                "F112",
                mentions,
            );
            let msg = fx.call(Api::BillkeyIssue, &fields).result_msg().to_owned();
            assert!(!msg.contains(CARD), "the message must not echo the card");
        }
        // EncData made with another merchant's key, or not hex at all.
        let mut fields = fx.issue_fields(CARD);
        let foreign = crypto::encrypt(
            &SecretString::from(plain(CARD, "30", "01", "", "")),
            &fx.key(OTHER_MID),
        );
        set(&mut fields, "EncData", &foreign);
        check(
            &mut fx,
            "foreign key",
            Api::BillkeyIssue,
            &fields,
            "A113",
            "EncData",
        );
        set(&mut fields, "EncData", "zz");
        check(
            &mut fx,
            "not hex",
            Api::BillkeyIssue,
            &fields,
            "A113",
            "EncData",
        );
        assert!(fx.sim.billkeys.is_empty());
    }

    #[test]
    fn unknown_and_other_merchants_billkeys_on_removal() {
        let mut fx = fx();
        let fields = fx.remove_fields("BIKYnictest04m2612250900009999");
        check(&mut fx, "unknown", Api::BillkeyRemove, &fields, "A126", "");
        let plain = format!("CardNo={CARD}&ExpYear=30&ExpMonth=01&IDNo=&CardPw=");
        let other = fx.issue_fields_for(OTHER_MID, &plain, "issue-other");
        let other_bid = fx
            .call(Api::BillkeyIssue, &other)
            .get("BID")
            .unwrap()
            .to_owned();
        let fields = fx.remove_fields(&other_bid);
        check(
            &mut fx,
            "other merchant",
            Api::BillkeyRemove,
            &fields,
            "A223",
            "",
        );
    }

    #[test]
    fn undecodable_body() {
        let mut fx = fx();
        for body in [&b"MID=%FF%FF"[..], b"MID=a&MID=b"] {
            let a = fx.sim.handle(Api::Status, body, Tamper::None);
            assert_eq!(a.result_code(), "A111", "{}", a.result_msg());
            assert_eq!((a.charset, a.edi_type), (Charset::EucKr, EdiType::Json));
        }
    }

    #[test]
    fn card_behaviours_through_approvals() {
        let mut fx = fx();
        let cases: &[(&str, &[&str])] = &[
            ("4000000000000001", &["3001", "3001"]),
            ("4000000000000002", &["3095", "3095"]),
            ("4000000000000003", &["3021"]),
            ("4000000000000004", &["F113"]),
            ("4000000000000005", &["3095", "3001", "3095", "3001"]),
        ];
        for (n, (card, codes)) in cases.iter().enumerate() {
            let bid = fx.bid(card);
            for (a, want) in codes.iter().enumerate() {
                let tid = fx.tid(MID);
                let answer = fx.approve(&bid, &tid, &format!("cb-{n}-A{a}"), "5000");
                assert_eq!(answer.result_code(), *want, "{card} attempt {}", a + 1);
                if *want != "3001" {
                    // Declines echo the request's identifiers.
                    assert_eq!(answer.get("TID"), Some(tid.as_str()));
                }
            }
        }
        let approved: Vec<&str> = fx.sim.ledger().iter().map(|e| e.moid.as_str()).collect();
        assert_eq!(approved, ["cb-0-A0", "cb-0-A1", "cb-4-A1", "cb-4-A3"]);
    }

    #[test]
    fn reset_forgets_everything_but_merchants() {
        let mut fx = fx();
        let (bid, tid) = fx.charged("100");
        fx.sim.reset();
        assert!(fx.sim.ledger().is_empty() && fx.sim.removals().is_empty());
        assert_eq!(fx.status(&tid), "9");
        let fields = fx.approve_fields(&bid, &tid, "order-1", "100");
        check(&mut fx, "billkey gone", Api::Approve, &fields, "A126", "");
    }
}
