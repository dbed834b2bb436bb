//! The auth layer: one tower layer in front of every gRPC service. It proves the caller
//! from the `authorization` metadata, puts the typed [`Caller`] into the request
//! extensions, and answers the refusal itself when that fails. Handlers never parse
//! metadata. Only the health service is public (kubelet probes carry no token).

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::auth::Authenticator;

const PUBLIC_PREFIX: &str = "/grpc.health.v1.Health/";

#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone is not ready; keep the ready one for this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        if request.uri().path().starts_with(PUBLIC_PREFIX) {
            return Box::pin(inner.call(request));
        }
        match self
            .authenticator
            .authenticate(request.uri().path(), request.headers())
        {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(inner.call(request))
            }
            Err(error) => {
                tracing::warn!(
                    rpc = request.uri().path(),
                    reason = %error,
                    "authentication failed"
                );
                let response = super::status::auth_error(error).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
