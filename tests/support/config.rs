//! Configuration files for the binary: the merchant key file and `nicebill.toml`, both 0600.
//! Each test says the settings it cares about; the rest is the same everywhere.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nicebill::gateway::ApiKind;

/// `[nicepay]` read and connect timeouts of a second, as most process tests use.
pub const TIMEOUTS_1S: &str = "connect_timeout = \"1s\"\nread_timeout = \"1s\"\n";

/// A configuration to write: `[nicepay]` for the test merchant (`nictest04m`) at `base_url`,
/// then `[database]` if given, then whatever sections the test adds.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    name: String,
    key: String,
    base_url: String,
    nicepay: String,
    database: Option<String>,
    sections: String,
    api: ApiKind,
}

impl ConfigFile {
    pub fn new(base_url: &str) -> ConfigFile {
        ConfigFile {
            name: "nicebill".into(),
            key: super::KEY.into(),
            base_url: base_url.into(),
            nicepay: String::new(),
            database: None,
            sections: String::new(),
            api: ApiKind::Webapi,
        }
    }

    /// Which NICEPAY API `[nicepay]` configures (default the web API). On v1 the shop is the
    /// simulator's first v1 shop ([`super::V1_CLIENT_KEY`]), its secret in `secret.key`.
    pub fn api(mut self, api: ApiKind) -> ConfigFile {
        self.api = api;
        if api == ApiKind::V1 {
            self.key = super::V1_SECRET_KEY.into();
        }
        self
    }

    /// The file is `{name}.toml` (default `nicebill.toml`).
    pub fn name(mut self, name: &str) -> ConfigFile {
        self.name = name.into();
        self
    }

    /// The merchant key the key file holds (default [`super::KEY`]).
    pub fn key(mut self, key: &str) -> ConfigFile {
        self.key = key.into();
        self
    }

    /// More lines of `[nicepay]` (timeouts, say).
    pub fn nicepay(mut self, lines: &str) -> ConfigFile {
        self.nicepay.push_str(lines);
        self
    }

    /// `[database] url`.
    pub fn database(mut self, url: &str) -> ConfigFile {
        self.database = Some(url.into());
        self
    }

    /// TOML appended as it is (`[scheduler]`, `[retry]`, `[health]`, `[log]` …).
    pub fn sections(mut self, toml: &str) -> ConfigFile {
        self.sections.push('\n');
        self.sections.push_str(toml);
        self
    }

    /// Writes `merchant.key` and the configuration into `dir`; returns the configuration's
    /// path.
    pub fn write(self, dir: &Path) -> PathBuf {
        let private = || std::fs::Permissions::from_mode(0o600);
        let key = dir.join(match self.api {
            ApiKind::Webapi => "merchant.key",
            ApiKind::V1 => "secret.key",
        });
        std::fs::write(&key, &self.key).unwrap();
        std::fs::set_permissions(&key, private()).unwrap();
        let mut text = match self.api {
            ApiKind::Webapi => format!(
                "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_file = \"{}\"\nbase_url = \"{}\"\n{}",
                key.display(),
                self.base_url,
                self.nicepay
            ),
            ApiKind::V1 => format!(
                "[nicepay]\napi = \"v1\"\nclient_key = \"{}\"\nsecret_key_file = \"{}\"\nbase_url = \"{}\"\n{}",
                super::V1_CLIENT_KEY,
                key.display(),
                self.base_url,
                self.nicepay
            ),
        };
        if let Some(url) = &self.database {
            text.push_str(&format!("\n[database]\nurl = \"{url}\"\n"));
        }
        text.push_str(&self.sections);
        let config = dir.join(format!("{}.toml", self.name));
        std::fs::write(&config, text).unwrap();
        std::fs::set_permissions(&config, private()).unwrap();
        config
    }
}
