//! The TOML configuration file: raw structs that refuse unknown keys, validated into
//! [`Config`]. Every error names the file, the key and the problem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{FieldError, MerchantKey, Mid};
use crate::gateway::nicepay::client::BaseUrl;
use crate::gateway::nicepay::{Charset, ClientSettings, EdiType};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("{file}: {key}: {problem}")]
    Invalid {
        file: PathBuf,
        key: &'static str,
        problem: String,
    },
}

/// `[nicepay]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNicepay {
    mid: String,
    merchant_key_file: Option<PathBuf>,
    merchant_key_env: Option<String>,
    /// Works, but warns: keys belong in a file or the environment.
    merchant_key: Option<String>,
    #[serde(default = "default_base_url")]
    base_url: String,
    #[serde(default)]
    connect_timeout: Option<String>,
    #[serde(default)]
    read_timeout: Option<String>,
    #[serde(default)]
    charset: Option<String>,
    #[serde(default)]
    edi_type: Option<String>,
}

fn default_base_url() -> String {
    "https://webapi.nicepay.co.kr".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    nicepay: RawNicepay,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub nicepay: ClientSettings,
    /// Things worth telling the operator that do not stop startup (logged once tracing runs).
    pub warnings: Vec<String>,
}

impl Config {
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        let mut warnings = Vec::new();
        if let Some(w) = loose_permissions(file) {
            warnings.push(w);
        }
        Self::parse(file, &text, |name| std::env::var(name).ok(), warnings)
    }

    /// Parses config text; `env` looks up environment variables (injectable for tests).
    pub fn parse(
        file: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
        mut warnings: Vec<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        let invalid = |key: &'static str, problem: String| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            problem,
        };
        let field = |key: &'static str| move |e: FieldError| invalid(key, e.problem);

        let n = raw.nicepay;
        let mid = Mid::new(n.mid).map_err(field("nicepay.mid"))?;
        let key = match (&n.merchant_key_file, &n.merchant_key_env, &n.merchant_key) {
            (Some(path), None, None) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        "nicepay.merchant_key_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                if let Some(w) = loose_permissions(path) {
                    warnings.push(w);
                }
                MerchantKey::new(text).map_err(|e| {
                    invalid(
                        "nicepay.merchant_key_file",
                        format!("{}: the key {}", path.display(), e.problem),
                    )
                })?
            }
            (None, Some(var), None) => {
                let text = env(var).ok_or_else(|| {
                    invalid(
                        "nicepay.merchant_key_env",
                        format!("environment variable {var} is not set"),
                    )
                })?;
                MerchantKey::new(text).map_err(|e| {
                    invalid(
                        "nicepay.merchant_key_env",
                        format!("${var}: the key {}", e.problem),
                    )
                })?
            }
            (None, None, Some(inline)) => {
                warnings.push(format!(
                    "{}: nicepay.merchant_key is inline; prefer merchant_key_file or merchant_key_env so the key stays out of the config file",
                    file.display()
                ));
                MerchantKey::new(inline.clone()).map_err(field("nicepay.merchant_key"))?
            }
            (None, None, None) => {
                return Err(invalid(
                    "nicepay.merchant_key_file",
                    "no merchant key: set one of merchant_key_file, merchant_key_env".into(),
                ));
            }
            _ => {
                return Err(invalid(
                    "nicepay.merchant_key_file",
                    "set only one of merchant_key_file, merchant_key_env, merchant_key".into(),
                ));
            }
        };
        let base_url = BaseUrl::parse(&n.base_url).map_err(field("nicepay.base_url"))?;
        let mut settings = ClientSettings::new(base_url, mid, key);
        if let Some(t) = &n.connect_timeout {
            settings.connect_timeout =
                parse_duration(t).map_err(|p| invalid("nicepay.connect_timeout", p))?;
        }
        if let Some(t) = &n.read_timeout {
            settings.read_timeout =
                parse_duration(t).map_err(|p| invalid("nicepay.read_timeout", p))?;
        }
        if let Some(c) = &n.charset {
            settings.charset = Charset::parse(c).ok_or_else(|| {
                invalid(
                    "nicepay.charset",
                    format!("{c:?}: expected \"euc-kr\" or \"utf-8\""),
                )
            })?;
        }
        if let Some(e) = &n.edi_type {
            settings.edi_type = EdiType::parse(e).ok_or_else(|| {
                invalid(
                    "nicepay.edi_type",
                    format!("{e:?}: expected \"JSON\" or \"KV\""),
                )
            })?;
        }
        Ok(Config {
            file: file.to_owned(),
            nicepay: settings,
            warnings,
        })
    }
}

/// Parses `"15s"`, `"500ms"`, `"2m"`; refuses zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like \"15s\" or \"500ms\": {e}"))?;
    if d.is_zero() {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(d)
}

/// A warning when a file that may hold secrets is readable by group or others.
pub fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "b+zhZ4yOZ7FsH8pm5lhDfHZEb79tIwnjsdA0FBXh86yLc6BJeFVrZFXhAoJ3gEWgrWwN+lJMV0W4hvDdbe4Sjw==";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("test.toml"),
            text,
            |v| (v == "NB_KEY").then(|| KEY.to_owned()),
            Vec::new(),
        )
    }

    #[test]
    fn good_config() {
        let c = parse(
            "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"NB_KEY\"\nbase_url = \"http://127.0.0.1:8585\"\nread_timeout = \"3s\"\nedi_type = \"KV\"\n",
        )
        .unwrap();
        assert_eq!(c.nicepay.read_timeout, Duration::from_secs(3));
        assert_eq!(c.nicepay.connect_timeout, Duration::from_secs(15));
        assert_eq!(c.nicepay.edi_type, EdiType::Kv);
        assert!(c.warnings.is_empty());
        assert!(!format!("{c:?}").contains(&KEY[..16]));
    }

    /// Each bad config is refused with a message naming the key (or the syntax problem).
    #[test]
    fn bad_configs_name_the_key() {
        let base = "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"NB_KEY\"\n";
        let cases: &[(&str, &str)] = &[
            (
                "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"NB_KEY\"\nsurprise = 1\n",
                "surprise",
            ),
            (
                "[nicepay]\nmid = \"short\"\nmerchant_key_env = \"NB_KEY\"\n",
                "nicepay.mid",
            ),
            (
                "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"UNSET\"\n",
                "UNSET is not set",
            ),
            (
                "[nicepay]\nmid = \"nictest04m\"\nmerchant_key = \"tooshort\"\n",
                "nicepay.merchant_key",
            ),
            ("[nicepay]\nmid = \"nictest04m\"\n", "no merchant key"),
            (
                "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_file = \"/nonexistent/key\"\n",
                "nicepay.merchant_key_file: cannot read /nonexistent/key",
            ),
            (
                &format!("{base}base_url = \"http://10.1.2.3\"\n"),
                "nicepay.base_url",
            ),
            (
                &format!("{base}read_timeout = \"soon\"\n"),
                "nicepay.read_timeout",
            ),
            (&format!("{base}read_timeout = 5\n"), "read_timeout"),
            (&format!("{base}charset = \"latin1\"\n"), "nicepay.charset"),
            ("[nicepay\n", "test.toml"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.starts_with("test.toml: "), "{err}");
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn inline_key_warns() {
        let c = parse(&format!(
            "[nicepay]\nmid = \"nictest04m\"\nmerchant_key = \"{KEY}\"\n"
        ))
        .unwrap();
        assert!(c.warnings[0].contains("inline"), "{:?}", c.warnings);
    }
}
