//! A tower layer that counts every gRPC call by service, method and status code, and times it
//! (`metrics::grpc`). Outermost on the server, so calls the token check refuses are counted too.
//!
//! The code of a call is in its `grpc-status`: in the response headers when the call fails at once
//! (a "trailers-only" response), else in the trailers after the last message. The response body is
//! wrapped to read the trailers; the call is recorded once, when the body ends or is dropped. A body
//! dropped before its trailers (the client went away, or the server closed the stream at shutdown)
//! counts as `cancelled`. The duration runs from the request to that moment: a unary call's
//! latency, a stream's whole life.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::{Body, Service};

use crate::metrics::grpc::{GrpcMetrics, MethodLabels};

/// `grpc-status` 1: the call ended without a status (see the module doc).
const CANCELLED: i32 = 1;

/// The layer: wraps the server's routes in [`Observed`].
#[derive(Debug, Clone)]
pub(crate) struct GrpcMetricsLayer {
    /// `None`: the calls pass through unobserved (a server built without metrics).
    metrics: Option<GrpcMetrics>,
}

impl GrpcMetricsLayer {
    pub(crate) fn new(metrics: Option<GrpcMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed { inner, metrics: self.metrics.clone() }
    }
}

/// The service: each call's response body becomes an [`ObservedBody`].
#[derive(Debug, Clone)]
pub(crate) struct Observed<S> {
    inner: S,
    metrics: Option<GrpcMetrics>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Observed<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let mut call = CallRecord {
            method: self.metrics.as_ref().map(|m| (m.clone(), m.method(request.uri().path()))),
            started: Instant::now(),
            code: None,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            call.code = grpc_status(response.headers());
            Ok(response.map(|body| ObservedBody { inner: Box::pin(body), call }))
        })
    }
}

/// A response body that records its call when it ends or is dropped.
pub(crate) struct ObservedBody<B> {
    inner: Pin<Box<B>>,
    call: CallRecord,
}

impl<B> std::fmt::Debug for ObservedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBody").field("call", &self.call).finish_non_exhaustive()
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.call.code = Some(code);
                }
            }
            Poll::Ready(None) => self.call.record(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// One call, recorded once.
#[derive(Debug)]
struct CallRecord {
    /// Where and as what the call is recorded; `None` once recorded (or with no metrics).
    method: Option<(GrpcMetrics, MethodLabels)>,
    started: Instant,
    code: Option<i32>,
}

impl CallRecord {
    fn record(&mut self) {
        if let Some((metrics, method)) = self.method.take() {
            metrics.observe(method, self.code.unwrap_or(CANCELLED), self.started.elapsed());
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.record();
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}
