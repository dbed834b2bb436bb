use super::*;

#[test]
fn one_account_and_many_read_right() {
    assert_eq!(jobs_running(&1), "1 job is running");
    assert_eq!(jobs_running(&0), "0 jobs are running");
    let named = Unserved {
        provider: "pixverse".into(),
        email: Some("a@example.com".into()),
        causes: vec![Cause::NeedsAttention(
            "login refused: wrong password".into(),
        )],
    };
    assert_eq!(
        named.to_string(),
        "account pixverse/a@example.com cannot serve: it needs attention (login refused: wrong password)"
    );
    let many = Unserved {
        provider: "pixverse".into(),
        email: None,
        causes: vec![
            Cause::Disabled,
            Cause::NeedsAttention("login refused: wrong password".into()),
            Cause::Disabled,
        ],
    };
    assert_eq!(
        many.to_string(),
        "no pixverse account can serve: 2 disabled, 1 needs attention (login refused: wrong password), 0 with a free slot"
    );
    let twice = Unserved {
        causes: vec![
            Cause::NeedsAttention("x".into()),
            Cause::NeedsAttention("x".into()),
        ],
        ..many
    };
    assert_eq!(
        twice.to_string(),
        "no pixverse account can serve: 2 need attention (x), 0 with a free slot"
    );
}
