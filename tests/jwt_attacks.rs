//! The JWT attack suite: every forged or damaged token is refused, and each forgery is
//! wrong in exactly one way (the same claims, re-signed correctly, are accepted).

mod support;

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use credvault::{callers::Claims, clock::ManualClock};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use support::{Auth, TestServer, proto};
use tonic::Code;

const SECRET: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
const START_MS: i64 = 1_767_225_600_000;
const INVALID: &str = "JWT is missing or invalid, check Authorization header";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn segments(jwt: &str) -> Vec<String> {
    jwt.split('.').map(str::to_owned).collect()
}

#[tokio::test]
async fn forged_and_damaged_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = support::new_key();
    let clock = ManualClock::at(START_MS);
    let start =
        || TestServer::start_with_clock(support::config(dir.path(), &key), Arc::new(clock.clone()));

    // A caller with one live token.
    let server = start().await;
    let mut admin = server.callers(Auth::admin()).await;
    let created = admin
        .create_caller(proto::CreateCallerRequest {
            email: "target@example.com".into(),
            secret: SECRET.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut own = server
        .callers(Auth::api_key(&created.api_key, SECRET))
        .await;
    own.activate_caller(proto::ActivateCallerRequest {})
        .await
        .unwrap();
    let live = own
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jwt;
    let doomed = own
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner();
    own.revoke_token(proto::RevokeTokenRequest {
        jti: doomed.jti.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    drop((admin, own));
    server.stop().await;

    // Forge with the vault's own keys, read the way an insider with the master key could.
    let claims: Claims = jsonwebtoken::dangerous::insecure_decode_claims(&live).unwrap();
    let kid = jsonwebtoken::decode_header(&live).unwrap().kid.unwrap();
    let (resigned, wrong_aud, wrong_iss, future_nbf, unknown_jti, unknown_sub, public) = {
        let settings = support::config(dir.path(), &key).resolve().unwrap();
        let vault = support::open_vault(&settings, Arc::new(credvault::clock::SystemClock)).await;
        let keys = vault.callers.token_keys();
        let sign = |change: &dyn Fn(&mut Claims)| {
            let mut forged = claims.clone();
            change(&mut forged);
            keys.sign(&forged).unwrap()
        };
        let public = keys
            .public_keys()
            .into_iter()
            .find(|(k, _)| *k == kid)
            .unwrap()
            .1;
        (
            sign(&|_| {}),
            sign(&|c| c.aud = "someone-else".into()),
            sign(&|c| c.iss = "not-credvault".into()),
            sign(&|c| c.nbf = c.iat + 3600),
            sign(&|c| c.jti = "00".repeat(16)),
            sign(&|c| c.sub = "c_0000000000000000".into()),
            public,
        )
    };

    let header = |json: &str| b64(json.as_bytes());
    let payload = segments(&live)[1].clone();
    let signature = segments(&live)[2].clone();
    let alg_none = format!(
        "{}.{payload}.",
        header(&format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#))
    );
    let hs256_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&public)).unwrap()
    };
    let foreign_key = {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(pkcs8.as_ref())).unwrap()
    };
    let flipped_signature = {
        let mut bytes = URL_SAFE_NO_PAD.decode(&signature).unwrap();
        bytes[10] ^= 0x01;
        format!("{}.{payload}.{}", segments(&live)[0], b64(&bytes))
    };
    let unknown_kid = {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("ffffffffffffffff".into());
        format!(
            "{}.{payload}.{signature}",
            b64(serde_json::to_string(&header).unwrap().as_bytes())
        )
    };
    let no_kid = format!(
        "{}.{payload}.{signature}",
        header(r#"{"alg":"EdDSA","typ":"JWT"}"#)
    );
    let garbage = |len: usize| format!("{}.{payload}.{signature}", "A".repeat(len));

    let server = start().await;
    let call = |auth: Auth| {
        let server = &server;
        async move {
            server
                .callers(auth)
                .await
                .get_caller_info(proto::GetCallerInfoRequest {})
                .await
        }
    };
    // Controls: the real token and the same claims re-signed are accepted.
    call(Auth::bearer(&live))
        .await
        .expect("the live token works");
    call(Auth::bearer(&resigned))
        .await
        .expect("re-signed identical claims work");

    let refused = [
        ("alg none", Auth::bearer(&alg_none)),
        (
            "HS256 keyed with the Ed25519 public key",
            Auth::bearer(&hs256_with_public_key),
        ),
        ("wrong aud", Auth::bearer(&wrong_aud)),
        ("wrong iss", Auth::bearer(&wrong_iss)),
        ("nbf in the future", Auth::bearer(&future_nbf)),
        ("flipped signature byte", Auth::bearer(&flipped_signature)),
        ("foreign Ed25519 key", Auth::bearer(&foreign_key)),
        ("unknown kid", Auth::bearer(&unknown_kid)),
        ("no kid", Auth::bearer(&no_kid)),
        ("jti never issued", Auth::bearer(&unknown_jti)),
        ("unknown subject", Auth::bearer(&unknown_sub)),
        ("garbage header, 1 KiB", Auth::bearer(&garbage(1024))),
        (
            "garbage header past credvault's 8 KiB cutoff",
            Auth::bearer(&garbage(10 * 1024)),
        ),
        ("empty bearer", Auth::raw("Bearer ")),
        ("bare scheme", Auth::raw("Bearer")),
        ("no authorization at all", Auth::default()),
        ("three dots of nothing", Auth::bearer("..")),
    ];
    for (name, auth) in refused {
        let error = call(auth).await.expect_err(name);
        assert_eq!(
            (error.code(), error.message()),
            (Code::Unauthenticated, INVALID),
            "{name}"
        );
    }
    // Basic (here not even base64) is refused as Basic, whatever it holds.
    let error = call(Auth::raw("Basic ***")).await.unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    assert!(
        error
            .message()
            .starts_with("Basic credentials (email:secret) are for Callers/CreateSession only"),
        "{}",
        error.message()
    );
    // 64 KiB is past HTTP/2's header-list limit (16 KiB): refused before credvault
    // reads it, so no handler and no auth code runs for it.
    let error = call(Auth::bearer(&garbage(64 * 1024))).await.unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");

    let error = call(Auth::bearer(&doomed.jwt)).await.unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (Code::Unauthenticated, "JWT revoked")
    );

    // Expiry is the token's own: one year on, the live token is expired.
    clock.advance(365 * 24 * 3600 * 1000);
    let error = call(Auth::bearer(&live)).await.unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (Code::Unauthenticated, "JWT expired")
    );
    server.stop().await;
}
