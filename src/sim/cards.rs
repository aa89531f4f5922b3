//! How a simulated card answers approvals, chosen by its number when the billkey is issued.
//!
//! Tests and demos pick an outcome by picking a card number, so no control call is needed to
//! make a card fail. Any well-formed number (14 to 16 digits) gets a billkey; the behaviour
//! applies to every approval (`billing_approve`) on that billkey:
//!
//! | card number ends in | approvals on its billkey                                     | ResultCode / ResultMsg        | nicebill class |
//! | ------------------- | ------------------------------------------------------------ | ----------------------------- | -------------- |
//! | `0002`              | always declined: insufficient balance                        | `3095` 잔액부족                | declined (dunning retries) |
//! | `0003`              | always declined: expiry error                                | `3021` 유효기간 오류           | permanent card |
//! | `0004`              | always declined: lost or stolen card                         | `F113` 분실/도난 카드          | permanent card |
//! | `0005`              | attempts 1, 3, 5… declined as `0002`; attempts 2, 4, 6… approved | `3095` 잔액부족 / `3001`   | declined, then approved |
//! | `0006`              | always refused with a code NICEPAY does not publish          | `3999` 알 수 없는 응답 (시뮬레이터) | unlisted code (retried, never cancels) |
//! | anything else       | approved                                                     | `3001` 카드 결제 성공          | approved |
//!
//! Attempts are counted per billkey and only for approvals that pass every request check
//! (signature, TID, amount, …): a refused request never reaches the "card company".
//!
//! The issuer shown in answers (`CardCode`/`CardName`) is chosen by the first digit, see
//! [`BRANDS`]; it has no effect on the outcome.

/// An issuer's refusal of one approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decline {
    pub code: &'static str,
    pub msg: &'static str,
}

/// `3095`: what NICEPAY answers for insufficient balance or limit (inferred in `API.md`).
pub const INSUFFICIENT_BALANCE: Decline = Decline {
    code: "3095",
    msg: "잔액부족",
};
/// `3021`: expiry date error; the card will not work again.
pub const EXPIRED: Decline = Decline {
    code: "3021",
    msg: "유효기간 오류",
};
/// `F113`: lost or stolen card; the card will not work again.
pub const LOST_OR_STOLEN: Decline = Decline {
    code: "F113",
    msg: "분실/도난 카드",
};

/// `3999`: a card-result code NICEPAY's list does not have, for testing how nicebill treats
/// codes it does not know.
pub const UNLISTED: Decline = Decline {
    code: "3999",
    msg: "알 수 없는 응답 (시뮬레이터)",
};

/// What a card does with approvals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardBehaviour {
    /// Every approval succeeds.
    Approve,
    /// Every approval is declined the same way.
    Decline(Decline),
    /// Odd attempts (1st, 3rd, …) are declined as insufficient balance, even ones approved:
    /// exercises dunning that eventually succeeds.
    ApproveEverySecond,
}

/// The result of one approval attempt at the card company.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Approved,
    Declined(Decline),
}

impl CardBehaviour {
    /// The outcome of attempt number `attempt` (1-based) on a billkey with this behaviour.
    pub fn outcome(self, attempt: u32) -> Outcome {
        match self {
            CardBehaviour::Approve => Outcome::Approved,
            CardBehaviour::Decline(d) => Outcome::Declined(d),
            CardBehaviour::ApproveEverySecond if attempt % 2 == 1 => {
                Outcome::Declined(INSUFFICIENT_BALANCE)
            }
            CardBehaviour::ApproveEverySecond => Outcome::Approved,
        }
    }
}

/// Card-number suffix → behaviour. Numbers matching no row approve.
pub const TABLE: &[(&str, CardBehaviour)] = &[
    ("0002", CardBehaviour::Decline(INSUFFICIENT_BALANCE)),
    ("0003", CardBehaviour::Decline(EXPIRED)),
    ("0004", CardBehaviour::Decline(LOST_OR_STOLEN)),
    ("0005", CardBehaviour::ApproveEverySecond),
    ("0006", CardBehaviour::Decline(UNLISTED)),
];

/// The behaviour of a card, by its number (expected already validated with
/// [`is_valid_card_no`]).
pub fn behaviour_for(card_no: &str) -> CardBehaviour {
    TABLE
        .iter()
        .find(|(suffix, _)| card_no.ends_with(suffix))
        .map_or(CardBehaviour::Approve, |(_, b)| *b)
}

/// Whether the simulator accepts `card_no` at billkey issue: 14 to 16 ASCII digits (NICEPAY's
/// field length, see `gateway::nicepay::limits`). There is
/// no Luhn check, so that test numbers stay easy to invent (NICEPAY's test environment is as
/// lenient).
pub fn is_valid_card_no(card_no: &str) -> bool {
    crate::gateway::nicepay::limits::CARD_NO_DIGITS.contains(&card_no.len())
        && card_no.bytes().all(|b| b.is_ascii_digit())
}

/// The card number as NICEPAY shows it in approvals: first 8 digits, `*` for the middle, last
/// 4 (`12345678****3456` for 16 digits). This is all the simulator keeps of a card.
pub fn mask(card_no: &str) -> String {
    let n = card_no.len();
    if n <= 12 || !card_no.is_ascii() {
        return "*".repeat(n);
    }
    format!(
        "{}{}{}",
        &card_no[..8],
        "*".repeat(n - 12),
        &card_no[n - 4..]
    )
}

/// An issuer (and acquirer: the simulator does not tell them apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Brand {
    pub code: &'static str,
    pub name: &'static str,
}

/// First digit of the card number → issuer. Korean names, so that answers carry Hangul in
/// both charsets.
pub const BRANDS: &[(char, Brand)] = &[
    (
        '3',
        Brand {
            code: "07",
            name: "현대",
        },
    ),
    (
        '4',
        Brand {
            code: "06",
            name: "신한",
        },
    ),
    (
        '5',
        Brand {
            code: "02",
            name: "KB국민",
        },
    ),
    (
        '9',
        Brand {
            code: "01",
            name: "비씨",
        },
    ),
];

/// Issuer for numbers whose first digit is not in [`BRANDS`].
pub const DEFAULT_BRAND: Brand = Brand {
    code: "04",
    name: "삼성",
};

pub fn brand_for(card_no: &str) -> Brand {
    let first = card_no.chars().next();
    BRANDS
        .iter()
        .find(|(digit, _)| Some(*digit) == first)
        .map_or(DEFAULT_BRAND, |(_, b)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use CardBehaviour::*;
        let cases = [
            ("4000000000000001", Approve),
            ("4000000000000002", Decline(INSUFFICIENT_BALANCE)),
            ("4000000000000003", Decline(EXPIRED)),
            ("4000000000000004", Decline(LOST_OR_STOLEN)),
            ("4000000000000005", ApproveEverySecond),
            ("9410123456780000", Approve),
            ("40000000000020", Approve),
            ("4000000000010002", Decline(INSUFFICIENT_BALANCE)),
        ];
        for (card, want) in cases {
            assert_eq!(behaviour_for(card), want, "{card}");
        }
    }

    #[test]
    fn every_second_attempt() {
        let got: Vec<bool> = (1..=6)
            .map(|a| CardBehaviour::ApproveEverySecond.outcome(a) == Outcome::Approved)
            .collect();
        assert_eq!(got, [false, true, false, true, false, true]);
        assert_eq!(
            CardBehaviour::ApproveEverySecond.outcome(1),
            Outcome::Declined(INSUFFICIENT_BALANCE)
        );
        assert_eq!(
            CardBehaviour::Decline(EXPIRED).outcome(2),
            Outcome::Declined(EXPIRED)
        );
    }

    #[test]
    fn validity_mask_and_brand() {
        for ok in ["12345678901234", "123456789012345", "1234567890123456"] {
            assert!(is_valid_card_no(ok), "{ok}");
        }
        for bad in [
            "1234567890123",
            "12345678901234567",
            "1234567890123456789",
            "12345678901234567890",
            "1234-5678-9012-3456",
            "",
        ] {
            assert!(!is_valid_card_no(bad), "{bad}");
        }
        assert_eq!(mask("1234567890123456"), "12345678****3456");
        assert_eq!(mask("12345678901234"), "12345678**1234");
        assert_eq!(mask("123"), "***");
        assert_eq!(brand_for("4000000000000001").name, "신한");
        assert_eq!(brand_for("9410123456780000").code, "01");
        assert_eq!(brand_for("6000000000000001"), DEFAULT_BRAND);
    }
}
