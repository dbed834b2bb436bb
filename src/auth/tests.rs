use super::*;

#[test]
fn headers_are_parsed_strictly() {
    let header = |s: &str| HeaderValue::from_str(s).unwrap();
    assert_eq!(
        credentials(Some(&header("Bearer abc"))),
        Some(("Bearer", "abc"))
    );
    assert_eq!(credentials(Some(&header("Bearer "))), None);
    assert_eq!(credentials(Some(&header("abc"))), None);
    assert_eq!(credentials(None), None);
    let long = format!("Bearer {}", "a".repeat(MAX_HEADER_LEN));
    assert_eq!(credentials(Some(&header(&long))), None);
    assert_eq!(basic("not base64!"), None);
    let (email, secret) = basic(&STANDARD.encode("a@b.io:s:3")).unwrap();
    assert_eq!((email.as_str(), secret.expose()), ("a@b.io", "s:3"));
}
