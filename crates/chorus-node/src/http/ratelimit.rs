//! The gateway's rate limit: `POST /v1/swarm/intent` and `POST /v1/chat/completions` each
//! append a stimulus that stays in the timeline for good and costs every selected emissary a
//! model call, so each client gets [`GatewayRate`] requests a minute (GCRA, `governor`), in
//! bursts of up to a quarter of that; beyond it a 429 with `Retry-After`. Refused requests
//! append nothing and are counted (`chorus_gateway_rate_limited_total`).
//!
//! A client is its address: a node has one API token (or none), so a bucket per token would be
//! one bucket for every client of the node. Behind a proxy every client shares the proxy's
//! address: raise the rate there, or set it to 0 (off) and limit at the proxy. At most
//! [`MAX_CLIENTS`] clients are tracked; a client not seen for a full bucket's time is
//! forgotten, and while all slots hold recent clients a new one is refused (429).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    num::NonZeroU32,
    sync::atomic::Ordering,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{
    DefaultKeyedRateLimiter, Quota,
    clock::{Clock, DefaultClock},
};

use super::shared::{Api, error};

/// Requests per minute per client by default (`--gateway-rate`).
pub const DEFAULT_GATEWAY_RATE: u32 = 120;
/// Clients whose buckets are kept at once.
pub const MAX_CLIENTS: usize = 4096;

/// The gateway's buckets, one per client address (`None`: no limit).
pub struct GatewayRate {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

impl GatewayRate {
    /// `per_minute` requests a minute per client, bursts of a quarter of it (at least 1);
    /// 0: unlimited.
    pub fn per_minute(per_minute: u32) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|n| {
            let burst = NonZeroU32::new(per_minute / 4).unwrap_or(NonZeroU32::MIN);
            DefaultKeyedRateLimiter::hashmap(Quota::per_minute(n).allow_burst(burst))
        });
        GatewayRate {
            limiter,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request of `client`; the seconds to wait when its bucket is empty.
    fn take(&self, client: IpAddr) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() >= MAX_CLIENTS {
            limiter.retain_recent();
            if limiter.len() >= MAX_CLIENTS {
                return Err(1);
            }
        }
        limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()).as_secs() + 1)
    }
}

impl Default for GatewayRate {
    fn default() -> Self {
        GatewayRate::per_minute(DEFAULT_GATEWAY_RATE)
    }
}

/// Middleware of the gateway's routes: a 429 with `Retry-After` once the client's bucket is
/// empty, before its body is read.
pub async fn limit(State(api): State<Api>, req: Request, next: Next) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |c| c.0.ip());
    match api.rate.take(client) {
        Ok(()) => next.run(req).await,
        Err(wait_s) => {
            api.gateway.rate_limited.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%client, wait_s, "gateway request rate-limited");
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this client's gateway rate is spent (--gateway-rate, per minute per client \
                     address): retry in {wait_s} s"
                ),
            );
            if let Ok(v) = wait_s.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_waits_and_others_keep_theirs() {
        let rate = GatewayRate::per_minute(8);
        let (a, b) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
        assert_eq!(rate.take(a), Ok(()));
        assert_eq!(rate.take(a), Ok(()), "a burst of 8 / 4");
        let wait = rate.take(a).unwrap_err();
        assert!((1..=8).contains(&wait), "{wait} s: a request every 7.5 s");
        assert_eq!(rate.take(b), Ok(()), "another client has its own bucket");
        let off = GatewayRate::per_minute(0);
        for _ in 0..1000 {
            assert_eq!(off.take(a), Ok(()));
        }
    }
}
