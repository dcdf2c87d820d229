//! The baseline: the same ingest workload against Redis, doing the per-event work a
//! team would write if it built omnia's profiles on Redis.
//!
//! Idiomatic and fair: one server-side Lua script per event (loaded once, invoked with
//! EVALSHA), every batch sent as one pipeline on a multiplexed connection. Per event the
//! script resolves identity (a hash from key to customer id, new ids from INCR, new
//! keys linked), updates the profile hash (first and last seen, last seen per channel
//! and per event type), counts the event in an hourly bucket per customer and event type
//! (and sums `amount`) with a 90-day expiry, so windows are sums over buckets, updates
//! a decayed engagement score with the default config's weights and half-life, and
//! keeps segment sets that events change directly (cart abandoners as a sorted set by
//! cart time, buyers, e-mail reachable). Time-driven segment changes, window reads and
//! decisions are not done: the baseline is the cheaper half of the work.

use redis::aio::MultiplexedConnection;

use crate::target::{Op, Target};
use omnia::model::ValueRef;

const SCRIPT: &str = r#"
local event, channel, ts = ARGV[1], ARGV[2], tonumber(ARGV[3])
local amount = tonumber(ARGV[4])
local nkeys = tonumber(ARGV[5])
local id = false
for i = 1, nkeys do
  if not id then id = redis.call('HGET', 'ids', ARGV[5 + i]) end
end
if not id then id = redis.call('INCR', 'next_id') end
for i = 1, nkeys do redis.call('HSETNX', 'ids', ARGV[5 + i], id) end
local p = 'p:' .. id
redis.call('HSETNX', p, 'first', ts)
redis.call('HSET', p, 'last', ts, 'ch:' .. channel, ts, 'ev:' .. event, ts)
local bucket = math.floor(ts / 3600)
local ck = 'w:' .. id .. ':' .. event .. ':' .. bucket
redis.call('INCR', ck)
redis.call('EXPIRE', ck, 7776000)
if amount then
  local sk = 's:' .. id .. ':' .. event .. ':' .. bucket
  redis.call('INCRBYFLOAT', sk, amount)
  redis.call('EXPIRE', sk, 7776000)
end
local weights = { page_view = 1, product_view = 2, add_to_cart = 5, checkout = 8, purchase = 20,
  email_open = 1, email_click = 3, sms_click = 3, store_visit = 10, coupon_redeemed = 10 }
local w = weights[event]
if w then
  local s = tonumber(redis.call('HGET', p, 'eng') or '0')
  local t = tonumber(redis.call('HGET', p, 'eng_t') or ts)
  s = s * math.pow(2, -(ts - t) / 604800) + w
  redis.call('HSET', p, 'eng', s, 'eng_t', ts)
end
if event == 'add_to_cart' then redis.call('ZADD', 'seg:cart_abandoners', ts, id) end
if event == 'purchase' then
  redis.call('ZREM', 'seg:cart_abandoners', id)
  redis.call('SADD', 'seg:buyers', id)
end
if event == 'identify' then redis.call('SADD', 'seg:email_reachable', id) end
if event == 'unsubscribe' then redis.call('SREM', 'seg:email_reachable', id) end
return id
"#;

pub struct RedisTarget {
    connection: MultiplexedConnection,
    sha: String,
}

impl RedisTarget {
    pub async fn connect(url: &str) -> Result<RedisTarget, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot connect to Redis at {url}: {e}"))?;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query_async(&mut connection)
            .await
            .map_err(|e| format!("cannot load the ingest script: {e}"))?;
        Ok(RedisTarget { connection, sha })
    }
}

impl Target for RedisTarget {
    async fn execute(&self, op: Op) -> Result<u64, String> {
        let events = match op {
            Op::Ingest(events) => events,
            // Written by `IngestWriter`, in the newest layout.
            Op::IngestBody(body, _) => {
                omnia::protocol::IngestBatch::decode(&body, omnia::protocol::Layout::V2)
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|e| e.to_owned())
                    .collect()
            }
            _ => return Err("the Redis baseline implements the ingest workload only".into()),
        };
        let mut pipe = redis::pipe();
        for e in &events {
            let amount = e.properties.iter().find_map(|(name, v)| match v.as_ref() {
                ValueRef::Num(n) if name == "amount" || name == "price" => Some(n),
                _ => None,
            });
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(&self.sha)
                .arg(0)
                .arg(&e.event)
                .arg(&e.channel)
                .arg(e.timestamp_ms / 1000)
                .arg(amount.map_or_else(String::new, |a| a.to_string()))
                .arg(e.keys.len());
            for k in &e.keys {
                cmd.arg(k);
            }
        }
        let mut connection = self.connection.clone();
        let _: Vec<redis::Value> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(events.len() as u64)
    }
}
