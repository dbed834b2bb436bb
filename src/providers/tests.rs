use super::*;

#[test]
fn kinds_and_ranges_default_from_the_name() {
    let mut configured = BTreeMap::new();
    configured.insert(
        "pixverse".to_owned(),
        ProviderConfig {
            base_url: Some("http://127.0.0.1:1".into()),
            ..ProviderConfig::default()
        },
    );
    configured.insert("api-key".to_owned(), ProviderConfig::default());
    configured.insert(
        "media".to_owned(),
        ProviderConfig::of(ProviderKind::BasicSession),
    );
    let providers = Providers::new(configured).unwrap();
    let pixverse = providers.get("pixverse").unwrap();
    assert_eq!(
        (pixverse.kind, pixverse.min_jobs, pixverse.max_jobs),
        (ProviderKind::Pixverse, 1, 8)
    );
    assert_eq!(pixverse.base_url.as_deref(), Some("http://127.0.0.1:1"));
    assert_eq!(providers.get("api-key").unwrap().kind, ProviderKind::ApiKey);
    let media = providers.get("media").unwrap();
    assert_eq!(
        (
            media.max_jobs,
            media.timeout_secs,
            media.token_pointer.as_str()
        ),
        (50, 10, "/token")
    );
}

#[test]
fn a_name_that_is_no_kind_needs_one_and_ranges_must_hold() {
    let one =
        |name: &str, config: ProviderConfig| Providers::new([(name.to_owned(), config)].into());
    assert_eq!(
        one("dataapi", ProviderConfig::default())
            .unwrap_err()
            .to_string(),
        "provider \"dataapi\": no kind given, and the name is not one (pixverse, basic-session, jwt-rotate, api-key)"
    );
    let inverted = ProviderConfig {
        min_jobs: Some(5),
        max_jobs: Some(2),
        ..ProviderConfig::of(ProviderKind::ApiKey)
    };
    assert!(matches!(
        one("x", inverted),
        Err(ProviderError::Range { .. })
    ));
}
