//! Reading accounts: one (authenticated), a page of them, and the directory's
//! metadata for choosing among them.

use super::*;

impl AccountService {
    pub async fn get(&self, provider: &str, email: &str) -> Result<Account, AccountError> {
        let key = lookup_key(provider, email)?;
        let bytes = self
            .store
            .value(Tree::Accounts, &key.storage_key())
            .await?
            .ok_or_else(|| AccountError::NotFound(key.clone()))?;
        self.decode(&key, &bytes)
    }

    /// Accounts in (provider, email) order; `provider` empty means all providers.
    pub async fn list(
        &self,
        provider: &str,
        page_size: i64,
        page_token: &str,
    ) -> Result<Page, AccountError> {
        let limit = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=i64::from(MAX_PAGE_SIZE)).contains(&n) => n as u32,
            got => {
                return Err(FieldError::PageSize {
                    max: MAX_PAGE_SIZE,
                    got,
                }
                .into());
            }
        } as usize;
        let prefix = if provider.is_empty() {
            Vec::new()
        } else {
            validate::text("provider", provider, validate::MAX_PROVIDER_LEN, true)?;
            model::provider_prefix(provider)
        };
        let after = decode_page_token(page_token, provider)?;

        // One extra entry tells whether another page follows.
        let mut entries = self
            .store
            .entries(Tree::Accounts, &prefix, after.as_deref(), limit + 1)
            .await?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next_page_token = match (more, entries.last()) {
            (true, Some((last, _))) => encode_page_token(provider, last),
            _ => String::new(),
        };
        let accounts = entries
            .iter()
            .map(|(key, value)| self.decode_stored(key, value))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            accounts,
            next_page_token,
        })
    }

    /// Metadata of up to `limit` accounts after `after`, without opening their
    /// secrets: enough to plan refreshes, and fast. The refresh itself reads the
    /// record authenticated.
    pub async fn scan_meta(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, AccountMeta)>, AccountError> {
        let entries = self
            .store
            .entries(Tree::Accounts, b"", after, limit)
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|(key, value)| {
                record::decode_meta_unauthenticated(&value)
                    .ok()
                    .map(|meta| (key, meta))
            })
            .collect())
    }

    /// One account's metadata from the in-memory directory: for choosing among
    /// accounts. Whatever is then handed out is read with [`AccountService::get`], which
    /// authenticates the record.
    pub async fn entry(&self, provider: &str, email: &str) -> Result<Arc<Entry>, AccountError> {
        let key = lookup_key(provider, email)?;
        if let Some(entry) = self.directory().get(&key.provider, &key.email) {
            return Ok(entry);
        }
        // Only a record whose metadata does not parse is stored but left out of the
        // directory: tell that apart from an account that does not exist.
        match self.store.value(Tree::Accounts, &key.storage_key()).await? {
            Some(bytes) => match record::decode_meta_unauthenticated(&bytes) {
                Err(source) => Err(AccountError::DataLoss { key, source }),
                Ok(meta) => Ok(Arc::new(Entry {
                    key,
                    meta,
                    revision: 0,
                })),
            },
            None => Err(AccountError::NotFound(key)),
        }
    }

    /// Every account of one provider, from the directory (see [`AccountService::entry`]).
    pub fn provider_entries(&self, provider: &str) -> Result<Vec<Arc<Entry>>, AccountError> {
        validate::text("provider", provider, validate::MAX_PROVIDER_LEN, true)?;
        Ok(self.directory().provider(provider).cloned().collect())
    }

    /// Per-provider counts for the metrics.
    pub fn summary(&self) -> Vec<ProviderSummary> {
        self.directory().summary()
    }

    /// How many accounts the directory holds.
    pub fn count(&self) -> usize {
        self.directory().len()
    }
}

/// A page token names the filter it was made under and the last key it listed, so
/// that it pages only through the listing that gave it out: `filter \0 last key`.
fn encode_page_token(provider: &str, last: &[u8]) -> String {
    let mut token = model::provider_prefix(provider);
    token.extend_from_slice(last);
    URL_SAFE_NO_PAD.encode(token)
}

/// The key to list after, from a token [`encode_page_token`] made under the same
/// filter; anything else is refused.
fn decode_page_token(token: &str, provider: &str) -> Result<Option<Vec<u8>>, FieldError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| FieldError::PageToken)?;
    let after = bytes
        .strip_prefix(model::provider_prefix(provider).as_slice())
        .ok_or(FieldError::PageToken)?;
    // The last key listed: `provider \0 email`, both printable text, within the filter.
    let printable = |part: &[u8], max: usize| {
        std::str::from_utf8(part)
            .is_ok_and(|text| validate::text("page_token", text, max, true).is_ok())
    };
    let key_ok = after.iter().position(|b| *b == 0).is_some_and(|split| {
        let (key_provider, email) = (&after[..split], &after[split + 1..]);
        (provider.is_empty() || key_provider == provider.as_bytes())
            && printable(key_provider, validate::MAX_PROVIDER_LEN)
            && printable(email, validate::MAX_EMAIL_LEN)
            && email.contains(&b'@')
    });
    if !key_ok {
        return Err(FieldError::PageToken);
    }
    Ok(Some(after.to_vec()))
}
