//! What the v1 client needs to know; built from the `[nicepay]` config section with
//! `api = "v1"`.

use std::num::NonZeroU32;
use std::time::Duration;

use super::crypto::EncMode;
use super::keys::{ClientKey, SecretKey};
use crate::gateway::nicepay::client::BaseUrl;

/// How each call proves who we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Auth {
    /// `Authorization: Basic base64(clientKey:secretKey)` on every call (a Basic-type key).
    #[default]
    Basic,
    /// A Bearer-type key: an access token from `POST /v1/access-token`, cached until shortly
    /// before it expires, renewed once on a 401.
    Bearer,
}

impl Auth {
    pub fn parse(text: &str) -> Option<Auth> {
        match text {
            "basic" => Some(Auth::Basic),
            "bearer" => Some(Auth::Bearer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Auth::Basic => "basic",
            Auth::Bearer => "bearer",
        }
    }
}

/// Debug hides the secret key.
#[derive(Clone)]
pub struct V1Settings {
    pub base_url: BaseUrl,
    pub client_key: ClientKey,
    pub secret_key: SecretKey,
    pub auth: Auth,
    /// Send `ediDate` + `signData` with each request (optional in v1; off until a sandbox run
    /// confirms which `ediDate` shapes NICEPAY accepts).
    pub sign_requests: bool,
    /// How card data is enciphered for billkey issue.
    pub enc_mode: EncMode,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_requests_per_second: Option<NonZeroU32>,
}

impl V1Settings {
    pub const PRODUCTION: &str = "https://api.nicepay.co.kr";
    pub const SANDBOX: &str = "https://sandbox-api.nicepay.co.kr";
    /// The manual's timeouts: connect 5 s, read 30 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

    pub fn new(base_url: BaseUrl, client_key: ClientKey, secret_key: SecretKey) -> Self {
        Self {
            base_url,
            client_key,
            secret_key,
            auth: Auth::Basic,
            sign_requests: false,
            enc_mode: EncMode::A2,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            read_timeout: Self::DEFAULT_READ_TIMEOUT,
            max_requests_per_second: None,
        }
    }
}

impl std::fmt::Debug for V1Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V1Settings")
            .field("base_url", &self.base_url.as_str())
            .field("client_key", &self.client_key.as_str())
            .field("auth", &self.auth)
            .field("sign_requests", &self.sign_requests)
            .finish_non_exhaustive()
    }
}
