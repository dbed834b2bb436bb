use super::*;

#[test]
fn shown_values_are_bounded_and_printable() {
    assert_eq!(shown("acme\n\u{7}corp"), "acmecorp");
    let long = shown(&"y".repeat(10_000));
    assert_eq!(long.chars().count(), 65);
    assert!(long.ends_with('…'));
    assert_eq!(shown(&"z".repeat(64)), "z".repeat(64));
}

#[test]
fn emails() {
    assert_eq!(
        email("Ops.Team+px@Example.COM").unwrap(),
        "ops.team+px@example.com"
    );
    assert_eq!(email("").unwrap_err(), FieldError::Missing("email"));
    for bad in [
        "plain",
        "@example.com",
        "a..b@example.com",
        "a b@example.com",
        ".a@x.io",
    ] {
        assert_eq!(
            email(bad).unwrap_err(),
            FieldError::MalformedEmail("email"),
            "{bad}"
        );
    }
    for bad in [
        "name@localhost",
        "name@host.123",
        "name@-x.com",
        "name@x..com",
        "name@x.test",
        "name@unknown.ext",
        "name@x.example",
        "name@x.invalid",
    ] {
        assert_eq!(
            email(bad).unwrap_err().to_string(),
            format!("invalid email domain for \"{bad}\""),
        );
    }
    for good in [
        "name@example.co.uk",
        "name@mail.example.io",
        "name@example.museum",
        "name@example.xn--p1ai",
    ] {
        assert!(email(good).is_ok(), "{good}");
    }
    assert!(email(&format!("{}@example.com", "a".repeat(250))).is_err());
    assert_eq!(
        email("a\u{7}@example.com").unwrap_err().to_string(),
        "invalid parameter: [email] contains control characters"
    );
}

#[test]
fn label_keys() {
    assert!(label_key("team/region-1.a_b").is_ok());
    assert!(label_key("").is_err());
    assert!(label_key("Upper").is_err());
    assert!(label_key(&"k".repeat(64)).is_err());
}
