//! Reading accounts: one (authenticated), a page of them, and the directory's
//! metadata for choosing among them.

use super::*;

impl AccountService {
    pub async fn get(&self, provider: &str, email: &str) -> Result<Account, AccountError> {
        let key = lookup_key(provider, email)?;
        let bytes = self
            .store
            .value(Tree::Accounts, &self.record_key(&key))
            .await?
            .ok_or_else(|| AccountError::NotFound(key.clone()))?;
        self.decode(&key, &bytes)
    }

    /// Accounts in (provider, email) order; `provider` empty means all providers. The
    /// directory gives the order (on a shared store the records are keyed by
    /// fingerprint, which sorts nowhere useful); each record is then read and opened.
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
        if !provider.is_empty() {
            validate::text("provider", provider, validate::MAX_PROVIDER_LEN, true)?;
        }
        let after = decode_page_token(page_token, provider)?;
        self.check_damaged(provider).await?;

        // One extra entry tells whether another page follows.
        let mut entries = self.directory().page(provider, after.as_ref(), limit + 1);
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next_page_token = match (more, entries.last()) {
            (true, Some(last)) => encode_page_token(provider, &last.key.storage_key()),
            _ => String::new(),
        };
        let mut accounts = Vec::with_capacity(entries.len());
        for entry in &entries {
            let stored = self
                .store
                .value(Tree::Accounts, &self.record_key(&entry.key))
                .await?;
            // Deleted since the directory was read: not listed.
            if let Some(bytes) = stored {
                accounts.push(self.decode(&entry.key, &bytes)?);
            }
        }
        Ok(Page {
            accounts,
            next_page_token,
        })
    }

    /// A record of `provider` left out of the directory as damaged fails the listing,
    /// as reading it would, until it is deleted (or repaired by a restore).
    async fn check_damaged(&self, provider: &str) -> Result<(), AccountError> {
        let Some(record_key) = self.directory().damaged(provider).map(<[u8]>::to_vec) else {
            return Ok(());
        };
        let Some(bytes) = self.store.value(Tree::Accounts, &record_key).await? else {
            return Ok(());
        };
        // Repaired since: listed as any other.
        let Err(source) = self.names.meta(&self.sealer, &record_key, &bytes) else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&record_key);
        let (provider, name) = text.split_once('\0').unwrap_or((&text, ""));
        Err(AccountError::DataLoss {
            key: AccountKey {
                provider: provider.to_owned(),
                email: name.to_owned(),
            },
            source,
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
                self.names
                    .meta(&self.sealer, &key, &value)
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
        let record_key = self.record_key(&key);
        match self.store.value(Tree::Accounts, &record_key).await? {
            Some(bytes) => match self.names.meta(&self.sealer, &record_key, &bytes) {
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

/// The account to list after, from a token [`encode_page_token`] made under the same
/// filter; anything else is refused.
fn decode_page_token(token: &str, provider: &str) -> Result<Option<AccountKey>, FieldError> {
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
    model::key_of(after).map(Some).ok_or(FieldError::PageToken)
}
