//! `serve --timestamp-key`: keeps channel heads fresh while the server runs.
//!
//! Every few seconds the refresher looks at each channel's head and, once half of its
//! lifetime has passed, re-signs its freshness layer with the online key
//! ([`crate::key_admin::refresh_online`]): same publisher content, next sequence, the
//! same lifetime again (never past the content's expiry). A head whose content has
//! expired, or that the online key cannot re-sign, is left alone and the reason is
//! logged once; agents then refuse it, as they should.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_format::head::inspect_head;
use ferry_format::keys::SecretKey;

use crate::error::Result;
use crate::key_admin::{RefreshOptions, check_online_key, refresh_online};
use crate::store::{Mirror, Store};

/// Longest sleep between two looks at the heads: a head published meanwhile with a
/// short lifetime is still renewed in time.
const MAX_NAP: Duration = Duration::from_secs(5);
const MIN_NAP: Duration = Duration::from_millis(200);

/// The online key and the repository it keeps fresh.
pub struct Refresher {
    store: Store,
    key: Arc<SecretKey>,
}

impl Refresher {
    /// Checks, before serving, that the key is an online key of the newest key list.
    pub fn new(store: &Store, key: SecretKey) -> Result<Refresher> {
        store.read(Mirror::Keys, |repo| check_online_key(repo, &key))?;
        Ok(Refresher {
            store: store.clone(),
            key: Arc::new(key),
        })
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        let mut last_error: HashMap<String, String> = HashMap::new();
        loop {
            let (nap, errors) = one_pass(&self.store, &self.key).await;
            for (channel, e) in &errors {
                if last_error.get(channel) != Some(e) {
                    tracing::warn!(channel, "cannot refresh the head: {e}");
                }
            }
            last_error = errors;
            tokio::time::sleep(nap).await;
        }
    }
}

/// Refreshes every due head; returns how long to wait before the next look and the
/// channels that could not be refreshed, with the reason.
async fn one_pass(store: &Store, key: &Arc<SecretKey>) -> (Duration, HashMap<String, String>) {
    let mut errors = HashMap::new();
    let mut nap = MAX_NAP;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for channel in store.channels().await.unwrap_or_default() {
        let head = match store.read_head(&channel).await {
            Ok(Some((bytes, _))) => match inspect_head(&bytes) {
                Ok(h) => h,
                Err(e) => {
                    errors.insert(channel, e.to_string());
                    continue;
                }
            },
            Ok(None) => continue,
            Err(e) => {
                errors.insert(channel, e.to_string());
                continue;
            }
        };
        if now >= head.content.expires_at {
            errors.insert(
                channel,
                format!(
                    "the publisher content expired at {} (unix time): publishing keys must re-sign it",
                    head.content.expires_at
                ),
            );
            continue;
        }
        if head.expires_at >= head.content.expires_at {
            // Already as long as the content allows: renewing gains nothing.
            continue;
        }
        let due = head.issued_at + head.expires_at.saturating_sub(head.issued_at) / 2;
        if now < due {
            nap = nap.min(Duration::from_secs(due - now));
            continue;
        }
        let (s, k, c) = (store.clone(), key.clone(), channel.clone());
        // The refresh reads and writes files (a working copy for a bucket): off the
        // executor. A lost swap (a publish meanwhile) re-runs it on the new head.
        let refreshed = tokio::task::spawn_blocking(move || {
            s.write(Mirror::Heads(Some(&c)), |repo| {
                refresh_online(repo, &c, &k, RefreshOptions::default())
            })
        })
        .await
        .unwrap_or_else(|e| {
            Err(crate::error::Error::Io {
                action: "finish",
                path: "the head refresh task".into(),
                source: std::io::Error::other(e),
            })
        });
        match refreshed {
            Ok(text) => {
                tracing::info!("{}", text.trim_end());
                let lifetime = head.expires_at.saturating_sub(head.issued_at);
                nap = nap.min(Duration::from_secs(lifetime / 2));
            }
            Err(e) => {
                errors.insert(channel, format!("{e:#}"));
            }
        }
    }
    (nap.max(MIN_NAP), errors)
}
