//! [`Secret`]: a configured secret (identity key, JWT HMAC key, admin token) whose `Debug` never
//! shows its text, so formatting a config or anything holding one with `{:?}` leaks nothing.

use serde::{Deserialize, Serialize};

/// A secret string from the config. Read it with [`Secret::expose`] where it is used as a key.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    /// The secret's text, for the code that keys a hash or checks a token with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Secret(text)
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Secret(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_text_and_serde_keeps_it() {
        let secret = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(secret.expose(), "hunter2-hunter2-hunter2");
        #[derive(Deserialize)]
        struct Holder {
            key: Secret,
        }
        let holder: Holder = toml::from_str("key = \"abc\"").expect("toml");
        assert_eq!(holder.key.expose(), "abc");
    }
}
