//! The operator's Kubernetes client, with a client-side rate limit: a token
//! bucket refilled at `qps` requests per second that holds at most `burst`
//! tokens, as client-go's `QPS` and `Burst`.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
    time::Duration,
};

use kube::{Client, Config, client::ClientBuilder};
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

/// A client for `config` whose requests (watches included, each counted
/// once when it starts) pass a token bucket.
pub fn rate_limited(config: Config, qps: f64, burst: u32) -> Result<Client, kube::Error> {
    let layer = RateLimitLayer {
        bucket: Arc::new(Mutex::new(TokenBucket::new(qps, burst))),
    };
    Ok(ClientBuilder::try_from(config)?.with_layer(&layer).build())
}

/// Tokens refilled continuously; `take` answers how long to wait otherwise.
#[derive(Debug)]
struct TokenBucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(qps: f64, burst: u32) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            per_second: qps.max(0.001),
            capacity,
            tokens: capacity,
            at: Instant::now(),
        }
    }

    /// Takes a token, or says when the next one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

#[derive(Clone)]
struct RateLimitLayer {
    bucket: Arc<Mutex<TokenBucket>>,
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            bucket: self.bucket.clone(),
            permitted: false,
            sleep: None,
        }
    }
}

/// Ready only with a token in hand. kube's client drives it from one
/// buffer worker, so waiting here queues every caller in order.
struct RateLimited<S> {
    inner: S,
    bucket: Arc<Mutex<TokenBucket>>,
    permitted: bool,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S, R> Service<R> for RateLimited<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.permitted {
            if let Some(sleep) = &mut self.sleep {
                ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
            }
            let now = Instant::now();
            let taken = self
                .bucket
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(now);
            match taken {
                Ok(()) => self.permitted = true,
                Err(wait) => self.sleep = Some(Box::pin(tokio::time::sleep_until(now + wait))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.permitted = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).expect_err("the burst is spent");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert_eq!(bucket.take(start + Duration::from_millis(100)), Ok(()));
        // Idle time refills up to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.take(later), Ok(()));
        }
        assert!(bucket.take(later).is_err());
    }
}
