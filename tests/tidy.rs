//! The codebase keeps ARCHITECTURE.md's "only X" rules. This test reads every `src/**/*.rs`,
//! leaves out test code (an item marked `#[cfg(test)]` or `#[test]`), and fails naming file
//! and line where:
//!
//! - `sql`: anything outside `src/storage/` names `diesel`, `sql_query`, or holds SQL text in a
//!   string literal;
//! - `nicepay`: anything outside `src/gateway/`, `src/sim/` and `src/domain.rs` (whose value
//!   types name the field they validate in their errors) has a string literal that is one of
//!   NICEPAY's field names ([`FIELDS`], each checked to be one the gateway uses) or result codes
//!   (every code in `src/gateway/nicepay/codes.rs`);
//! - `now`: anything outside `src/clock.rs` reads the wall clock (`Utc::now()`,
//!   `Local::now()`, `SystemTime::now()`);
//! - `unwrap`: non-test code calls `.unwrap()`. `.expect("…")` stays allowed: its message
//!   states the invariant that makes it unreachable (a generated value that is valid by
//!   construction, a semaphore that is never closed), and it is the only form allowed;
//! - `backoff`: anything outside `src/retry.rs` names the `backoff` crate (flagged
//!   unmaintained, RUSTSEC-2025-0012: kept to one file so that replacing it is one change).
//!
//! The scanner is a small lexer (comments, strings, raw strings, char literals and lifetimes),
//! so a rule word inside a comment or a `{` inside a string changes nothing. The tests at the
//! end run it on samples that break each rule, so it is known to fail.

use std::path::{Path, PathBuf};

/// NICEPAY's field names, as `src/gateway/nicepay/client.rs` sends and reads them.
const FIELDS: &[&str] = &[
    "AcquCardCode",
    "AcquCardName",
    "Amt",
    "AuthCode",
    "AuthDate",
    "BID",
    "BuyerEmail",
    "BuyerName",
    "BuyerTel",
    "CancelAmt",
    "CancelDate",
    "CancelMsg",
    "CancelNum",
    "CancelTime",
    "CardCl",
    "CardCode",
    "CardInterest",
    "CardName",
    "CardNo",
    "CardQuota",
    "CcPartCl",
    "CharSet",
    "EdiDate",
    "EdiType",
    "EncData",
    "GoodsName",
    "MallReserved",
    "MID",
    "Moid",
    "PartialCancelCode",
    "PayMethod",
    "RemainAmt",
    "ResultCode",
    "ResultMsg",
    "SignData",
    "Signature",
    "Status",
    "TID",
];

/// One line of source: its code with every string literal emptied and every char literal
/// blanked, and the string literals that start on it.
#[derive(Debug, Default, Clone)]
struct Line {
    code: String,
    strings: Vec<String>,
}

/// Splits `source` into lines of code and string literals, dropping comments.
fn lex(source: &str) -> Vec<Line> {
    let chars: Vec<char> = source.chars().collect();
    let mut lines = vec![Line::default()];
    let mut i = 0;
    let newline = |lines: &mut Vec<Line>| lines.push(Line::default());
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let prev_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if c == '\n' {
            newline(&mut lines);
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        newline(&mut lines);
                    }
                    i += 1;
                }
            }
        } else if c == 'r'
            && (!prev_ident
                || (chars[i - 1] == 'b'
                    && (i < 2 || !(chars[i - 2].is_alphanumeric() || chars[i - 2] == '_'))))
            && matches!(next, Some('"') | Some('#'))
            && {
                let mut j = i + 1;
                while chars.get(j) == Some(&'#') {
                    j += 1;
                }
                chars.get(j) == Some(&'"')
            }
        {
            // A raw string: r"…", r#"…"#, …
            let mut hashes = 0;
            i += 1;
            while chars[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1;
            let line = lines.len() - 1;
            let mut text = String::new();
            while i < chars.len() {
                if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                if chars[i] == '\n' {
                    newline(&mut lines);
                }
                text.push(chars[i]);
                i += 1;
            }
            lines[line].code.push_str("\"\"");
            lines[line].strings.push(text);
        } else if c == '"' {
            i += 1;
            let line = lines.len() - 1;
            let mut text = String::new();
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    text.push(chars[i]);
                    i += 1;
                }
                if chars[i] == '\n' {
                    newline(&mut lines);
                }
                text.push(chars[i]);
                i += 1;
            }
            i += 1;
            lines[line].code.push_str("\"\"");
            lines[line].strings.push(text);
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{7f}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                lines.last_mut().unwrap().code.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                lines.last_mut().unwrap().code.push_str("' '");
            } else {
                lines.last_mut().unwrap().code.push(c);
                i += 1;
            }
        } else {
            lines.last_mut().unwrap().code.push(c);
            i += 1;
        }
    }
    lines
}

/// Whether each line is test code: an item marked `#[cfg(test)]` or `#[test]`, from the
/// attribute to the end of the item (its closing brace, or its `;`).
fn test_lines(lines: &[Line]) -> Vec<bool> {
    let mut test = vec![false; lines.len()];
    let mut n = 0;
    while n < lines.len() {
        let code = lines[n].code.replace(' ', "");
        let Some(at) = code.find("#[cfg(test)]").or_else(|| code.find("#[test]")) else {
            n += 1;
            continue;
        };
        // From the attribute on, find the item's first `{` or `;` and its end.
        let mut depth = 0usize;
        let mut opened = false;
        let mut m = n;
        let mut skip = at + 1;
        'item: while m < lines.len() {
            test[m] = true;
            let code: String = lines[m].code.replace(' ', "");
            for ch in code.chars().skip(skip) {
                match ch {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth = depth.saturating_sub(1);
                        if opened && depth == 0 {
                            break 'item;
                        }
                    }
                    ';' if !opened => break 'item,
                    _ => {}
                }
            }
            skip = 0;
            m += 1;
        }
        n = m + 1;
    }
    test
}

/// Whether `word` occurs in `code` as a whole identifier.
fn has_word(code: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(word).any(|(at, _)| {
        !code[..at].chars().next_back().is_some_and(ident)
            && !code[at + word.len()..].chars().next().is_some_and(ident)
    })
}

fn is_sql(text: &str) -> bool {
    let has = |w: &str| has_word(text, w);
    (has("SELECT") && has("FROM"))
        || (has("INSERT") && has("INTO"))
        || (has("DELETE") && has("FROM"))
        || (has("UPDATE") && has("SET"))
        || ((has("CREATE") || has("ALTER") || has("DROP")) && (has("TABLE") || has("INDEX")))
}

/// What the NICEPAY rule looks for: field names and result codes.
struct Names {
    fields: Vec<String>,
    codes: Vec<String>,
}

/// Every rule broken in `source` (the file `path`, relative to the crate, with `/`), as
/// "path:line: rule: what".
fn check(path: &str, source: &str, names: &Names) -> Vec<String> {
    let lines = lex(source);
    let test = test_lines(&lines);
    let mut found = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        if test[n] {
            continue;
        }
        let mut broke = |rule: &str, what: String| {
            found.push(format!("{path}:{}: {rule}: {what}", n + 1));
        };
        let code = line.code.replace(' ', "");
        if !path.starts_with("src/storage/") {
            for word in ["diesel", "sql_query"] {
                if has_word(&line.code, word) {
                    broke("sql", format!("`{word}` outside src/storage"));
                }
            }
            for s in &line.strings {
                if is_sql(s) {
                    broke("sql", format!("SQL text {s:?} outside src/storage"));
                }
            }
        }
        if !(path.starts_with("src/gateway/") || path.starts_with("src/sim/"))
            && path != "src/domain.rs"
        {
            for s in &line.strings {
                if names.fields.contains(s) {
                    broke(
                        "nicepay",
                        format!("NICEPAY field name {s:?} outside src/gateway"),
                    );
                }
                if names.codes.contains(s) {
                    broke(
                        "nicepay",
                        format!("NICEPAY result code {s:?} outside src/gateway"),
                    );
                }
            }
        }
        if path != "src/retry.rs" && has_word(&line.code, "backoff") {
            // Flagged unmaintained (RUSTSEC-2025-0012; deny.toml): one file to replace.
            broke("backoff", "the `backoff` crate outside src/retry.rs".into());
        }
        if path != "src/clock.rs" {
            for now in ["Utc::now()", "Local::now()", "SystemTime::now()"] {
                if code.contains(now) {
                    broke("now", format!("`{now}` outside src/clock.rs"));
                }
            }
        }
        if code.contains(".unwrap()") {
            broke("unwrap", "`.unwrap()` in non-test code".into());
        }
        if code.contains(".expect(") && !code.contains(".expect(\"\"") {
            broke("unwrap", "`.expect(…)` without a literal message".into());
        }
    }
    found
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The field names (each checked to be a literal in the gateway) and every result code
/// `codes.rs` classifies.
fn names() -> Names {
    let mut gateway = Vec::new();
    sources(&root().join("src/gateway"), &mut gateway);
    let gateway_strings: Vec<String> = gateway
        .iter()
        .flat_map(|p| lex(&read(p)))
        .flat_map(|l| l.strings)
        .collect();
    for field in FIELDS {
        assert!(
            gateway_strings.iter().any(|s| s == field),
            "tidy's FIELDS names {field:?}, which src/gateway never uses: update the list"
        );
    }
    let codes_rs = read(&root().join("src/gateway/nicepay/codes.rs"));
    let lines = lex(&codes_rs);
    let test = test_lines(&lines);
    let mut codes: Vec<String> = lines
        .iter()
        .zip(test)
        .filter(|(_, test)| !test)
        .flat_map(|(l, _)| l.strings.clone())
        .filter(|s| {
            s.len() == 4
                && s.chars().skip(1).all(|c| c.is_ascii_digit())
                && s.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        })
        .collect();
    codes.sort();
    codes.dedup();
    for known in ["3001", "F100", "A225"] {
        assert!(
            codes.iter().any(|c| c == known),
            "no result code {known} found in codes.rs: {codes:?}"
        );
    }
    Names {
        fields: FIELDS.iter().map(|f| f.to_string()).collect(),
        codes,
    }
}

#[test]
fn the_sources_keep_the_architecture_rules() {
    let names = names();
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut broken = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(root())
            .expect("a source file is under the crate")
            .to_string_lossy()
            .replace('\\', "/");
        broken.extend(check(&rel, &read(file), &names));
    }
    assert!(
        broken.is_empty(),
        "{} rule(s) broken (see ARCHITECTURE.md):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

fn sample_names() -> Names {
    Names {
        fields: vec!["ResultCode".into(), "TID".into()],
        codes: vec!["3001".into(), "F100".into()],
    }
}

#[test]
fn the_scanner_finds_each_rule_broken() {
    let sample = r##"
use diesel::prelude::*;
fn f() -> i64 {
    let q = "SELECT id FROM charges";
    let code = fields.get("ResultCode");
    if code == "3001" { return 1; }
    let now = chrono::Utc::now();
    let t = std::time::SystemTime::now();
    let x = thing.unwrap();
    let y = thing.expect(&msg);
    let b = backoff::ExponentialBackoff::default();
    0
}
"##;
    let found = check("src/billing/x.rs", sample, &sample_names());
    let want = [
        "src/billing/x.rs:2: sql: `diesel` outside src/storage",
        "src/billing/x.rs:4: sql: SQL text \"SELECT id FROM charges\" outside src/storage",
        "src/billing/x.rs:5: nicepay: NICEPAY field name \"ResultCode\" outside src/gateway",
        "src/billing/x.rs:6: nicepay: NICEPAY result code \"3001\" outside src/gateway",
        "src/billing/x.rs:7: now: `Utc::now()` outside src/clock.rs",
        "src/billing/x.rs:8: now: `SystemTime::now()` outside src/clock.rs",
        "src/billing/x.rs:9: unwrap: `.unwrap()` in non-test code",
        "src/billing/x.rs:10: unwrap: `.expect(…)` without a literal message",
        "src/billing/x.rs:11: backoff: the `backoff` crate outside src/retry.rs",
    ];
    assert_eq!(found, want);

    // The same text where each rule allows it breaks only the others.
    assert_eq!(check("src/storage/x.rs", sample, &sample_names()).len(), 7);
    assert_eq!(
        check("src/gateway/nicepay/x.rs", sample, &sample_names()).len(),
        7
    );
    assert_eq!(check("src/clock.rs", sample, &sample_names()).len(), 7);
    assert_eq!(check("src/retry.rs", sample, &sample_names()).len(), 8);
}

#[test]
fn comments_strings_and_test_code_are_not_code() {
    let sample = r##"
// diesel::update, x.unwrap(), Utc::now() in a comment
/* a block comment: x.unwrap() /* nested */ still comment */
fn f() -> char {
    let brace = '{';
    let s = "a string with } and .unwrap() and Utc::now()";
    let raw = r#"raw "quoted" .unwrap()"#;
    let ok = thing.expect("the value is valid by construction");
    let life: &'static str = "x";
    brace
}

#[cfg(test)]
mod tests {
    fn g() {
        let x = y.unwrap();
        let q = "SELECT 1 FROM t";
        let now = chrono::Utc::now();
        let s = "{";
    }
}

#[test]
fn h() { z.unwrap(); }

fn after() { w.unwrap(); }
"##;
    let found = check("src/billing/x.rs", sample, &sample_names());
    assert_eq!(
        found,
        ["src/billing/x.rs:26: unwrap: `.unwrap()` in non-test code"]
    );
}
