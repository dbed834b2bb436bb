//! A fake upstream for tests and the README demo: a real HTTP/1.1 server on loopback
//! that speaks all four provider styles (DESIGN.md §1 A–D) with scriptable behaviour —
//! token lifetime, failures by count, latency, wrong passwords, malformed answers, the
//! 3-token limit, and PixVerse's one live session per account. It counts what it sees,
//! so tests can assert on logins from the upstream's side. The daemon never uses it.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch};

use credvault::clock::Clock;

const SIGNING_SECRET: &[u8] = b"fake-upstream-signing-secret";
const MAX_BODY: usize = 64 * 1024;
pub const JWT_LIMIT: usize = 3;

#[derive(Default)]
struct JwtAccount {
    balance: i64,
    /// token -> revoked
    tokens: Vec<(String, bool, i64)>,
}

#[derive(Default)]
struct KeyAccount {
    secret: String,
    activated: bool,
    credits: (i64, i64, Option<i64>, Option<i64>),
}

#[derive(Default)]
struct State {
    users: HashMap<String, String>,
    token_lifetime_secs: i64,
    fail_next: u32,
    malformed_next: u32,
    oversize_next: u32,
    errcode_next: Option<(i64, String, u32)>,
    latency_ms: u64,
    down: bool,
    fail_revocations: bool,
    logins: HashMap<String, u64>,
    in_flight: HashMap<String, u64>,
    max_in_flight: HashMap<String, u64>,
    live_session: HashMap<String, String>,
    jwt_accounts: HashMap<String, JwtAccount>,
    key_accounts: HashMap<String, KeyAccount>,
    requests: u64,
    serial: u64,
}

/// The running fake. Dropping it stops the server.
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
    stop: watch::Sender<bool>,
}

impl FakeUpstream {
    pub async fn start(clock: Arc<dyn Clock>) -> std::io::Result<Self> {
        Self::bind("127.0.0.1:0".parse().expect("loopback address"), clock).await
    }

    pub async fn bind(addr: SocketAddr, clock: Arc<dyn Clock>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            token_lifetime_secs: 3600,
            ..State::default()
        }));
        let (stop, mut stopped) = watch::channel(false);
        let server = Server {
            state: state.clone(),
            clock: clock.clone(),
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let server = server.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |req| {
                                let server = server.clone();
                                async move { Ok::<_, Infallible>(server.handle(req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                }
            }
        });
        Ok(Self {
            addr,
            state,
            clock,
            stop,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A PixVerse / basic-session user.
    pub fn add_user(&self, email: &str, password: &str) {
        self.with(|s| s.users.insert(email.to_owned(), password.to_owned()));
    }

    pub fn set_token_lifetime(&self, secs: i64) {
        self.with(|s| s.token_lifetime_secs = secs);
    }

    /// The next `n` requests answer HTTP 503.
    pub fn fail_next(&self, n: u32) {
        self.with(|s| s.fail_next = n);
    }

    /// The next `n` requests answer HTTP 200 with a body that is not JSON.
    pub fn malformed_next(&self, n: u32) {
        self.with(|s| s.malformed_next = n);
    }

    /// The next `n` PixVerse logins answer this ErrCode.
    pub fn errcode_next(&self, code: i64, message: &str, n: u32) {
        self.with(|s| s.errcode_next = Some((code, message.to_owned(), n)));
    }

    /// The next `n` requests answer HTTP 200 with a body of 2 MiB.
    pub fn oversize_next(&self, n: u32) {
        self.with(|s| s.oversize_next = n);
    }

    pub fn set_latency(&self, ms: u64) {
        self.with(|s| s.latency_ms = ms);
    }

    /// While down, every request answers HTTP 503.
    pub fn set_down(&self, down: bool) {
        self.with(|s| s.down = down);
    }

    /// While set, DELETE of a JWT answers HTTP 503 and revokes nothing.
    pub fn fail_revocations(&self, fail: bool) {
        self.with(|s| s.fail_revocations = fail);
    }

    /// Logins (of any style) seen for an account.
    pub fn logins(&self, email: &str) -> u64 {
        self.with(|s| s.logins.get(email).copied().unwrap_or(0))
    }

    /// The most logins for one account that were ever in progress at once.
    pub fn max_concurrent_logins(&self, email: &str) -> u64 {
        self.with(|s| s.max_in_flight.get(email).copied().unwrap_or(0))
    }

    pub fn requests(&self) -> u64 {
        self.with(|s| s.requests)
    }

    /// PixVerse allows one live session: the token of the latest login.
    pub fn live_session(&self, email: &str) -> Option<String> {
        self.with(|s| s.live_session.get(email).cloned())
    }

    /// A jwt-rotate account with a first token (returned) and a balance.
    pub fn add_jwt_account(&self, email: &str, balance: i64) -> String {
        let now = self.clock.now_ms() / 1000;
        self.with(|s| {
            let token = s.token(email, now);
            let exp = now + s.token_lifetime_secs;
            let account = s.jwt_accounts.entry(email.to_owned()).or_default();
            account.balance = balance;
            account.tokens.push((token.clone(), false, exp));
            token
        })
    }

    /// Live (unrevoked, unexpired) upstream JWTs of a jwt-rotate account.
    pub fn live_jwts(&self, email: &str) -> Vec<String> {
        let now = self.clock.now_ms() / 1000;
        self.with(|s| {
            s.jwt_accounts.get(email).map_or_else(Vec::new, |a| {
                a.tokens
                    .iter()
                    .filter(|(_, revoked, exp)| !revoked && *exp > now)
                    .map(|(t, _, _)| t.clone())
                    .collect()
            })
        })
    }

    /// Adds a token to a jwt-rotate account as if another client had made it.
    pub fn add_foreign_jwt(&self, email: &str) {
        let now = self.clock.now_ms() / 1000;
        self.with(|s| {
            let token = s.token(email, now);
            let exp = now + s.token_lifetime_secs;
            s.jwt_accounts
                .entry(email.to_owned())
                .or_default()
                .tokens
                .push((token, false, exp));
        });
    }

    /// An API-key account with its client secret and credits (unix seconds for the window).
    pub fn add_api_key(
        &self,
        key: &str,
        secret: &str,
        total: i64,
        remaining: i64,
        window: (Option<i64>, Option<i64>),
    ) {
        self.with(|s| {
            s.key_accounts.insert(
                key.to_owned(),
                KeyAccount {
                    secret: secret.to_owned(),
                    activated: false,
                    credits: (total, remaining, window.0, window.1),
                },
            )
        });
    }

    pub fn key_activated(&self, key: &str) -> bool {
        self.with(|s| s.key_accounts.get(key).is_some_and(|k| k.activated))
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl State {
    fn token(&mut self, email: &str, now: i64) -> String {
        self.serial += 1;
        let claims = json!({
            "sub": email,
            "AccountId": 1000 + self.serial,
            "iat": now,
            "exp": now + self.token_lifetime_secs,
            "n": self.serial,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SIGNING_SECRET),
        )
        .expect("HS256 signing")
    }

    fn login_started(&mut self, email: &str) {
        *self.logins.entry(email.to_owned()).or_default() += 1;
        let now = self.in_flight.entry(email.to_owned()).or_default();
        *now += 1;
        let now = *now;
        let max = self.max_in_flight.entry(email.to_owned()).or_default();
        *max = (*max).max(now);
    }

    fn login_ended(&mut self, email: &str) {
        if let Some(n) = self.in_flight.get_mut(email) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A login in progress at the fake, until dropped.
struct InFlight<'a> {
    server: &'a Server,
    username: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.server.with(|s| s.login_ended(self.username));
    }
}

#[derive(Clone)]
struct Server {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("static header"),
    );
    response
}

fn message(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    reply(status, json!({ "message": text }))
}

/// A refusal, turned into a response by [`refusal`].
type Refusal = (StatusCode, &'static str);

fn refusal((status, text): Refusal) -> Response<Full<Bytes>> {
    message(status, text)
}

impl Server {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return message(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        };
        let (latency, scripted) = self.with(|s| {
            s.requests += 1;
            let scripted = if s.down || s.fail_next > 0 {
                s.fail_next = s.fail_next.saturating_sub(1);
                Some(message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream unavailable",
                ))
            } else if s.oversize_next > 0 {
                s.oversize_next -= 1;
                Some(Response::new(Full::new(Bytes::from(vec![
                    b' ';
                    2 * 1024 * 1024
                ]))))
            } else if s.malformed_next > 0 {
                s.malformed_next -= 1;
                Some(Response::new(Full::new(Bytes::from_static(b"{not json"))))
            } else {
                None
            };
            (s.latency_ms, scripted)
        });
        if let Some(response) = scripted {
            return response;
        }
        let bearer = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let path = parts.uri.path().to_owned();
        match (parts.method, path.as_str()) {
            (Method::POST, "/creative_platform/login") => self.pixverse_login(&body, latency).await,
            (Method::POST, "/api/session") => self.session(bearer.as_deref(), latency).await,
            (Method::PUT, "/api/v2/account/jwt") => self.rotate(bearer.as_deref()),
            (Method::DELETE, "/api/v2/account/jwt") => self.revoke(bearer.as_deref(), &body),
            (Method::GET, "/api/v2/account") => self.balance(bearer.as_deref()),
            (Method::PUT, "/api/v1/accounts") => self.activate(bearer.as_deref(), &parts.headers),
            (Method::GET, "/api/v1/accounts") => self.credits(bearer.as_deref(), &parts.headers),
            _ => message(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }

    async fn pixverse_login(&self, body: &[u8], latency: u64) -> Response<Full<Bytes>> {
        let Ok(login) = serde_json::from_slice::<Value>(body) else {
            return message(StatusCode::BAD_REQUEST, "submitted data is not valid JSON");
        };
        let username = login["Username"].as_str().unwrap_or_default().to_owned();
        let password = login["Password"].as_str().unwrap_or_default();
        let known = self.with(|s| s.users.get(&username).cloned());
        let envelope = |code: i64, msg: &str| json!({"ErrCode": code, "ErrMsg": msg, "Resp": {}});
        match known {
            None => return reply(StatusCode::OK, envelope(500200, "User does not exist.")),
            Some(expected) if expected != password => {
                return reply(StatusCode::OK, envelope(500201, "Incorrect password."));
            }
            Some(_) => {}
        }
        self.with(|s| s.login_started(&username));
        // Ends the login's count whether it answers or its client goes away mid-login.
        let _in_flight = InFlight {
            server: self,
            username: &username,
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let now = self.clock.now_ms() / 1000;
        let answer = self.with(|s| {
            if let Some((code, msg, n)) = s.errcode_next.as_mut() {
                let answer = envelope(*code, msg);
                *n -= 1;
                if *n == 0 {
                    s.errcode_next = None;
                }
                return answer;
            }
            let token = s.token(&username, now);
            // One live session per account: this login ends the previous one.
            s.live_session.insert(username.clone(), token.clone());
            json!({"ErrCode": 0, "ErrMsg": "Success", "Resp": {"Result": {
                "AccountId": 1000 + s.serial, "Username": username, "Token": token}}})
        });
        reply(StatusCode::OK, answer)
    }

    async fn session(&self, authorization: Option<&str>, latency: u64) -> Response<Full<Bytes>> {
        let credentials = authorization
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|b| STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let Some((email, password)) = credentials.as_deref().and_then(|c| c.split_once(':')) else {
            return message(StatusCode::UNAUTHORIZED, "Invalid credentials");
        };
        if self.with(|s| s.users.get(email).cloned()).as_deref() != Some(password) {
            return message(StatusCode::UNAUTHORIZED, "Invalid credentials");
        }
        self.with(|s| s.login_started(email));
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let now = self.clock.now_ms() / 1000;
        let body = self.with(|s| {
            s.login_ended(email);
            let token = s.token(email, now);
            json!({"id": 1000 + s.serial, "email": email, "token": token, "expires_at": now + s.token_lifetime_secs})
        });
        reply(StatusCode::OK, body)
    }

    /// The jwt-rotate account a bearer token belongs to, or the refusal.
    fn jwt_owner(&self, s: &State, authorization: Option<&str>) -> Result<String, Refusal> {
        let now = self.clock.now_ms() / 1000;
        let token = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_default();
        for (email, account) in &s.jwt_accounts {
            if let Some((_, revoked, exp)) = account.tokens.iter().find(|(t, _, _)| t == token) {
                return if *revoked {
                    Err((StatusCode::FORBIDDEN, "JWT revoked"))
                } else if *exp <= now {
                    Err((StatusCode::FORBIDDEN, "JWT expired"))
                } else {
                    Ok(email.clone())
                };
            }
        }
        Err((
            StatusCode::UNAUTHORIZED,
            "JWT is missing or invalid, check Authorization header",
        ))
    }

    fn rotate(&self, authorization: Option<&str>) -> Response<Full<Bytes>> {
        let now = self.clock.now_ms() / 1000;
        self.with(|s| {
            let email = match self.jwt_owner(s, authorization) {
                Ok(email) => email,
                Err(refused) => return refusal(refused),
            };
            s.login_started(&email);
            s.login_ended(&email);
            let live = s.jwt_accounts[&email]
                .tokens
                .iter()
                .filter(|(_, revoked, exp)| !revoked && *exp > now)
                .count();
            if live >= JWT_LIMIT {
                return message(
                    StatusCode::CONFLICT,
                    "JWT limit exceeded, please revoke an existing JWT to create a new one",
                );
            }
            let token = s.token(&email, now);
            let exp = now + s.token_lifetime_secs;
            if let Some(account) = s.jwt_accounts.get_mut(&email) {
                account.tokens.push((token.clone(), false, exp));
            }
            reply(StatusCode::OK, json!({ "jwt": token }))
        })
    }

    fn revoke(&self, authorization: Option<&str>, body: &[u8]) -> Response<Full<Bytes>> {
        let target = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["jwt"].as_str().map(str::to_owned))
            .unwrap_or_default();
        self.with(|s| {
            if s.fail_revocations {
                return message(StatusCode::SERVICE_UNAVAILABLE, "revocation unavailable");
            }
            let email = match self.jwt_owner(s, authorization) {
                Ok(email) => email,
                Err(refused) => return refusal(refused),
            };
            let account = s.jwt_accounts.get_mut(&email).expect("owner exists");
            match account.tokens.iter_mut().find(|(t, _, _)| *t == target) {
                Some(entry) => {
                    entry.1 = true;
                    Response::new(Full::new(Bytes::new()))
                }
                None => message(StatusCode::NOT_FOUND, "no such JWT"),
            }
        })
    }

    fn balance(&self, authorization: Option<&str>) -> Response<Full<Bytes>> {
        self.with(|s| match self.jwt_owner(s, authorization) {
            Ok(email) => reply(
                StatusCode::OK,
                json!({"email": email, "balance": s.jwt_accounts[&email].balance}),
            ),
            Err(refused) => refusal(refused),
        })
    }

    fn key_account<'a>(
        s: &'a mut State,
        authorization: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Result<&'a mut KeyAccount, Refusal> {
        let key = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_default();
        let secret = headers
            .get("x-client-secret")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        match s.key_accounts.get_mut(key) {
            Some(account) if account.secret == secret => Ok(account),
            _ => Err((StatusCode::UNAUTHORIZED, "invalid API key or secret")),
        }
    }

    fn activate(
        &self,
        authorization: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Response<Full<Bytes>> {
        self.with(|s| match Self::key_account(s, authorization, headers) {
            Ok(account) => {
                account.activated = true;
                reply(StatusCode::OK, json!({"activated": true}))
            }
            Err(refused) => refusal(refused),
        })
    }

    fn credits(
        &self,
        authorization: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Response<Full<Bytes>> {
        self.with(|s| match Self::key_account(s, authorization, headers) {
            Ok(account) if !account.activated => message(StatusCode::FORBIDDEN, "account not activated"),
            Ok(account) => {
                let (total, remaining, from, until) = account.credits;
                reply(
                    StatusCode::OK,
                    json!({"credits": {"total": total, "remaining": remaining, "valid_from": from, "valid_until": until}}),
                )
            }
            Err(refused) => refusal(refused),
        })
    }
}
