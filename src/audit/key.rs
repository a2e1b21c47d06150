//! The keyed chain (`audit.chain_key_file`): from a chained "keyed" row on, each row's hash
//! is an HMAC-SHA256 under the key instead of a plain SHA-256, so someone who can write
//! the database but lacks the key can neither forge a row nor re-link the chain after one.
//! A rotation appends another "keyed" row naming the new key's id; the old keys stay in
//! the key file (after the current one) to verify the rows they signed.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// The field of a "keyed" row, its `new` value, and its rule.
pub const CHAIN: &str = "chain";
pub const KEYED: &str = "keyed";

/// One key and the id rows name it by (a MAC of a fixed text: it says nothing of the key).
pub struct ChainKey {
    pub id: String,
    key: Vec<u8>,
}

impl ChainKey {
    /// A fresh MAC under this key.
    pub fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key")
    }
}

/// The configured keys, the current one first.
pub struct ChainKeys(Vec<ChainKey>);

impl ChainKeys {
    /// None without keys: the chain is a plain SHA-256 one.
    pub fn new(keys: &[Secret]) -> Option<ChainKeys> {
        let keys: Vec<ChainKey> = keys
            .iter()
            .map(|k| {
                let key = k.expose().as_bytes().to_vec();
                let mut mac =
                    <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("HMAC takes any key");
                mac.update(b"casewarden chain key id");
                let id = hex::encode(mac.finalize().into_bytes())[..16].to_string();
                ChainKey { id, key }
            })
            .collect();
        (!keys.is_empty()).then_some(ChainKeys(keys))
    }

    /// The key new rows are written under.
    pub fn current(&self) -> &ChainKey {
        &self.0[0]
    }

    /// The key with this id, if it is configured.
    pub fn find(&self, id: &str) -> Option<&ChainKey> {
        self.0.iter().find(|k| k.id == id)
    }
}
