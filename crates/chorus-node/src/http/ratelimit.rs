//! The gateway's rate limit: `POST /v1/swarm/intent` and `POST /v1/chat/completions` each
//! append a stimulus that stays in the timeline for good and costs every selected emissary a
//! model call, so each client gets [`GatewayRate`] requests a minute (GCRA, `governor`), in
//! bursts of up to a quarter of that; beyond it a 429 with `Retry-After` (the middleware is
//! `super::rate_limit`). Refused requests append nothing and are counted
//! (`chorus_gateway_rate_limited_total`).
//!
//! A client is its address — an IPv4 address, or the /64 of an IPv6 one (one host holds a
//! whole /64) —, not its token: a node has one API token (or none), so a bucket per token would
//! be one bucket for every client of the node. Behind a proxy every client shares the proxy's
//! address: raise the rate there, or set it to 0 (off) and limit at the proxy. Only clients
//! the token check let in get here.
//!
//! At most [`MAX_CLIENTS`] buckets are kept (and the requests in flight beyond them): a bucket
//! that has filled up again is forgotten when room is needed. While every bucket is still
//! draining, the gateway refuses every request (429) until one fills up again — memory stays
//! bounded, at the price of a lockout that only this many distinct recent clients can cause.

use std::{
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
};

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};

/// Requests per minute per client by default (`--gateway-rate`).
pub const DEFAULT_GATEWAY_RATE: u32 = 120;
/// Clients whose buckets are kept at once.
pub const MAX_CLIENTS: usize = 4096;

/// The gateway's buckets, one per client address (`None`: no limit).
pub struct GatewayRate {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    max_clients: usize,
}

impl GatewayRate {
    /// `per_minute` requests a minute per client, bursts of a quarter of it (at least 1);
    /// 0: unlimited.
    pub fn per_minute(per_minute: u32) -> Self {
        Self::with_room(per_minute, MAX_CLIENTS)
    }

    fn with_room(per_minute: u32, max_clients: usize) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|n| {
            let burst = NonZeroU32::new(per_minute / 4).unwrap_or(NonZeroU32::MIN);
            DefaultKeyedRateLimiter::hashmap(Quota::per_minute(n).allow_burst(burst))
        });
        GatewayRate {
            limiter,
            max_clients,
        }
    }

    /// Takes one request of `client`; the whole seconds to wait (rounded up) when its bucket
    /// is empty, or when every bucket is taken by a recent client.
    pub fn take(&self, client: IpAddr) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() >= self.max_clients {
            limiter.retain_recent();
            if limiter.len() >= self.max_clients {
                return Err(1);
            }
        }
        limiter
            .check_key(&client_of(client))
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()).as_secs() + 1)
    }
}

impl Default for GatewayRate {
    fn default() -> Self {
        GatewayRate::per_minute(DEFAULT_GATEWAY_RATE)
    }
}

/// The bucket's key of an address: IPv4 as it is (also when mapped into IPv6), IPv6 by its /64.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
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

    #[test]
    fn one_ipv6_host_is_one_client_and_mapped_ipv4_is_ipv4() {
        let rate = GatewayRate::per_minute(4);
        let host: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(rate.take(host), Ok(()));
        assert!(
            rate.take(same_64).is_err(),
            "another address of the same /64"
        );
        assert_eq!(rate.take("2001:db8:1:3::1".parse().unwrap()), Ok(()));
        assert_eq!(rate.take("10.0.0.1".parse().unwrap()), Ok(()));
        assert!(rate.take("::ffff:10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn the_buckets_are_bounded_and_filled_ones_make_room() {
        // 60 000 a minute: a bucket is full again a millisecond after its request.
        let rate = GatewayRate::with_room(60_000, 8);
        for i in 0..8u8 {
            assert_eq!(rate.take([10, 0, 0, i].into()), Ok(()));
        }
        let limiter = rate.limiter.as_ref().unwrap();
        assert_eq!(limiter.len(), 8);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Room is made from the buckets that filled up: a ninth client gets in.
        assert_eq!(rate.take([10, 0, 1, 0].into()), Ok(()));
        assert!(limiter.len() <= 8, "{} buckets", limiter.len());

        // Buckets still draining are kept: a new client waits (memory stays bounded).
        let slow = GatewayRate::with_room(4, 4);
        for i in 0..4u8 {
            assert_eq!(slow.take([10, 0, 0, i].into()), Ok(()));
        }
        assert_eq!(slow.take([10, 0, 2, 0].into()), Err(1));
        assert_eq!(slow.limiter.as_ref().unwrap().len(), 4);
    }
}
