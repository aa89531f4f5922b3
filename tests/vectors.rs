//! Known answers from NICEPAY's formulas (`tests/data/nicepay-vectors.json`, a copy of the
//! shared vectors): every entry is checked.

use chrono::{DateTime, Utc};
use nicebill::domain::{ExposeSecret, MerchantKey, Mid, SecretString};
use nicebill::gateway::nicepay::{crypto, form, sign, tid};
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("data/nicepay-vectors.json")).expect("vectors parse")
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {key} missing in {v}"))
}

fn key_of(v: &Value, mid: &str) -> MerchantKey {
    MerchantKey::new(s(&v["merchants"], mid)).expect("vector key is valid")
}

#[test]
fn enc_data() {
    let v = vectors();
    let cases = v["encdata"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let key = key_of(&v, s(case, "mid"));
        assert_eq!(&key.aes_key()[..], s(case, "key16").as_bytes());
        let plain = SecretString::from(s(case, "plain").to_owned());
        assert_eq!(crypto::encrypt(&plain, &key), s(case, "EncData"));
        let back = crypto::decrypt(&s(case, "EncData").to_lowercase(), &key).unwrap();
        assert_eq!(back.expose_secret(), s(case, "plain").as_bytes());
    }
}

#[test]
fn sign_data() {
    let v = vectors();
    let cases = v["signdata"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let key = key_of(&v, s(case, "mid"));
        let f = &case["fields"];
        let got = match s(case, "api") {
            "billing_regist" => {
                sign::billkey_issue(s(f, "MID"), s(f, "EdiDate"), s(f, "Moid"), &key)
            }
            "billing_approve" => sign::approve(
                s(f, "MID"),
                s(f, "EdiDate"),
                s(f, "Moid"),
                s(f, "Amt"),
                s(f, "BID"),
                &key,
            ),
            "billkey_remove" => sign::billkey_remove(
                s(f, "MID"),
                s(f, "EdiDate"),
                s(f, "Moid"),
                s(f, "BID"),
                &key,
            ),
            "cancel_process" => sign::cancel(s(f, "MID"), s(f, "CancelAmt"), s(f, "EdiDate"), &key),
            "trans_status" => sign::status(s(f, "TID"), s(f, "MID"), s(f, "EdiDate"), &key),
            other => panic!("unknown api {other} in vectors"),
        };
        assert_eq!(got, s(case, "SignData"), "{}", s(case, "api"));
    }
}

#[test]
fn cancel_response_signature() {
    let v = vectors();
    for case in v["cancel_response_signature"].as_array().unwrap() {
        let key = key_of(&v, s(case, "MID"));
        let got = sign::cancel_response(s(case, "TID"), s(case, "MID"), s(case, "CancelAmt"), &key);
        assert_eq!(got, s(case, "Signature"));
        assert!(sign::digest_eq(&got.to_uppercase(), s(case, "Signature")));
        assert!(!sign::digest_eq(
            &got,
            &sign::cancel_response(s(case, "TID"), s(case, "MID"), "1005", &key)
        ));
    }
}

#[test]
fn euc_kr_form_values() {
    let v = vectors();
    for case in v["euc_kr_form"].as_array().unwrap() {
        let text = s(case, "text");
        let bytes = form::euc_kr("GoodsName", text).unwrap();
        assert_eq!(hex::encode(&bytes), s(case, "euc_kr_hex"));
        assert_eq!(bytes.len() as u64, case["euc_kr_bytes"].as_u64().unwrap());
        let mut builder = form::FormBuilder::new();
        builder.field("GoodsName", text, 40).unwrap();
        assert_eq!(
            builder.finish(),
            format!("GoodsName={}", s(case, "form_value"))
        );
    }
    for text in v["euc_kr_unrepresentable"].as_array().unwrap() {
        let err = form::euc_kr("GoodsName", text.as_str().unwrap()).unwrap_err();
        assert_eq!(err.field, "GoodsName");
    }
}

#[test]
fn tid_rule() {
    let v = vectors();
    let ex = &v["tid"]["example"];
    let at: DateTime<Utc> = DateTime::parse_from_rfc3339(s(ex, "at")).unwrap().into();
    let suffix: u32 = s(ex, "random4").parse().unwrap();
    let got = tid::build(&Mid::new(s(ex, "MID")).unwrap(), at, suffix);
    assert_eq!(got.as_str(), s(ex, "TID"));
    assert!(tid::is_billing_tid(got.as_str(), s(ex, "MID")));
}
