//! Property tests: the response parser, the form decoder and the config loader never panic on
//! arbitrary input, and form encoding round-trips every strict EUC-KR (KS X 1001) text and
//! refuses the rest.

use std::path::Path;

use nicebill::config::Config;
use nicebill::gateway::nicepay::{Charset, form, response};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn response_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = response::parse(&body, Charset::EucKr);
        let _ = response::parse(&body, Charset::Utf8);
    }

    #[test]
    fn response_parser_survives_near_misses(body in "[{}\\[\\]\":,=&%A-Za-z0-9+ 가-힣\\\\]{0,200}") {
        let _ = response::parse(body.as_bytes(), Charset::Utf8);
        let _ = response::parse(&encoding_rs::EUC_KR.encode(&body).0, Charset::EucKr);
    }

    #[test]
    fn form_decoder_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = form::decode(&body);
    }

    #[test]
    fn form_round_trip(value in "[ -~가-힣]{0,20}") {
        // KS X 1001 (strict EUC-KR): every multi-byte character's two bytes are 0xA1..=0xFE.
        // The 8,822 syllables only CP949 has are refused, naming the field.
        let strict = value.chars().all(|c| {
            let text = c.to_string();
            let bytes = encoding_rs::EUC_KR.encode(&text).0;
            bytes.len() == 1 || bytes.iter().all(|b| *b >= 0xA1)
        });
        let mut builder = form::FormBuilder::new();
        match builder.field("GoodsName", &value, 40) {
            Ok(_) => {
                prop_assert!(strict, "{value:?} was accepted");
                let decoded = form::decode(builder.finish().as_bytes()).unwrap();
                prop_assert_eq!(decoded, vec![("GoodsName".to_owned(), value)]);
            }
            Err(e) => {
                prop_assert!(!strict, "{value:?} was refused: {e}");
                prop_assert_eq!(e.field, "GoodsName");
            }
        }
    }

    #[test]
    fn config_loader_never_panics(text in "[\\[\\]a-z_=\" .0-9\n]{0,300}") {
        let _ = Config::parse(Path::new("fuzz.toml"), &text, |_| None, Vec::new());
    }
}
