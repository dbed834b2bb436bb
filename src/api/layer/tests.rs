use super::*;

#[test]
fn request_ids_are_taken_only_when_sane() {
    let given = HeaderValue::from_static("job-42.attempt-1");
    assert_eq!(request_id(Some(&given)), "job-42.attempt-1");
    let spaced = HeaderValue::from_static("two words");
    let made = request_id(Some(&spaced));
    assert_eq!(made.len(), 24);
    assert!(made.bytes().all(|b| b.is_ascii_hexdigit()));
    let long = HeaderValue::from_str(&"x".repeat(129)).unwrap();
    assert_ne!(request_id(Some(&long)), "x".repeat(129));
    assert_ne!(request_id(None), request_id(None));
}

#[test]
fn decode_failures_are_the_callers_and_long_messages_are_cut() {
    let decode = Status::internal("failed to decode Protobuf message: invalid tag value: 0");
    let tidied = tidy(decode.into_http());
    assert_eq!(grpc_code(&tidied), Code::InvalidArgument);

    let long = Status::invalid_argument(format!("bad: {}", "é".repeat(2_000)));
    let tidied = tidy(long.into_http());
    let message = tidied.headers()["grpc-message"].as_bytes();
    assert!(message.len() <= MAX_MESSAGE_LEN);
    assert!(
        message.ends_with(b"%A9") || message.ends_with(b"%C3"),
        "whole escapes only"
    );
    assert_eq!(grpc_code(&tidied), Code::InvalidArgument);

    assert_eq!(percent_decoded(b"a%20b%2"), b"a b%2");
    let ordinary = tidy(Status::internal("internal error").into_http());
    assert_eq!(grpc_code(&ordinary), Code::Internal);
}

#[test]
fn hand_outs_are_the_calls_that_return_secrets() {
    assert_eq!(
        audited("/credvault.v1.Credentials/RevealAccount"),
        Audited::HandOut
    );
    assert_eq!(
        audited("/credvault.v1.Callers/IssueToken"),
        Audited::HandOut
    );
    assert_eq!(
        audited("/credvault.v1.Accounts/UpdateAccount"),
        Audited::Yes
    );
    assert_eq!(audited("/credvault.v1.Accounts/GetAccount"), Audited::No);
    assert_eq!(audited("/grpc.health.v1.Health/Check"), Audited::No);
}
