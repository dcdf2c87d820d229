//! The baseline: the same workloads against Redis, doing the work a team would write if
//! it built omnia's profiles and decisions on Redis.
//!
//! Idiomatic and fair: one server-side Lua script per event, decision or feedback
//! (loaded once, invoked with EVALSHA), every ingest batch sent as one pipeline on a
//! multiplexed connection.
//!
//! Ingest (`INGEST`): per event the script resolves identity (a hash from key to
//! customer id, new ids from INCR, new keys linked), updates the profile hash (first and
//! last seen, last seen per channel and per event type), counts the event in an hourly
//! bucket per customer and event type (and sums `amount`) with a 90-day expiry, so
//! windows are sums over buckets, updates a decayed engagement score with the default
//! config's weights and half-life, and keeps segment sets that events change directly
//! (cart abandoners as a sorted set by cart time, buyers, e-mail reachable). Time-driven
//! segment changes and window reads are not done: the baseline is the cheaper half of the
//! work.
//!
//! Decide (`DECIDE`): the default config's offers, as a Redis team would write them:
//! segment membership from the sets above (cart abandoned for 30 minutes from the sorted
//! set's time, new visitors from `first`, high value and lapsed from buyers, the score
//! and `last`), channel lists, impression caps from counters that expire with their
//! window, cooldowns from keys with a TTL, budgets from counters spent with DECR, the
//! last leading offer kept for a day (stickiness), and ranking by value times a logistic
//! propensity of the engagement score; the top 3 are returned. A recording decision then
//! counts its impressions against the caps and budgets. Feedback (`FEEDBACK`) counts
//! the kind per offer, starts cooldowns on dismiss and accept, spends the acceptance
//! budget, and counts impressions like a recording decision. Left out, as a team would
//! at first: experiments, coupons, explanations and per-channel caps.

use redis::aio::MultiplexedConnection;

use crate::target::{Op, Target};
use omnia::model::decision::FeedbackTarget;
use omnia::model::ValueRef;

/// One event.
const INGEST: &str = r#"
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

/// The default config's offers: name, channels (`nil`: every channel), value (times its
/// weight), caps as `{impressions, per seconds}`, a dismissal and an acceptance cooldown in
/// seconds, and a budget as `{what it counts, units, per seconds}`.
const OFFERS: &str = r#"
local OFFERS = {
  { name = 'cart_reminder', channels = { email = 1, sms = 1, app = 1, web = 1, store = 1 },
    value = 25, caps = { { 4, 86400 } }, dismiss = 172800 },
  { name = 'welcome_discount', channels = { web = 1, app = 1, email = 1 }, value = 12,
    caps = { { 5, 604800 } }, dismiss = 86400, budget = { 'accept', 10000, 0 } },
  { name = 'vip_early_access', value = 60, caps = {}, accept = 2592000 },
  { name = 'winback', channels = { email = 1, sms = 1, app = 1 }, value = 30,
    caps = { { 2, 604800 } }, budget = { 'impression', 50000, 86400 } },
  { name = 'newsletter_signup', value = 1, caps = { { 3, 86400 } } },
}
local function offer_named(name)
  for _, o in ipairs(OFFERS) do if o.name == name then return o end end
end
-- An impression counted against the offer's caps and impression budget.
local function count_impression(id, o)
  for i, c in ipairs(o.caps) do
    local k = 'cap:' .. id .. ':' .. o.name .. ':' .. i
    if redis.call('INCR', k) == 1 then redis.call('EXPIRE', k, c[2]) end
  end
  if o.budget and o.budget[1] == 'impression' then
    local k = 'budget:' .. o.name
    redis.call('SET', k, o.budget[2], 'NX', 'EX', o.budget[3])
    redis.call('DECR', k)
  end
end
"#;

/// One decision: ARGV = key, channel, now (s), record (0/1), top.
const DECIDE: &str = r#"
local key, channel, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local record, top = ARGV[4] == '1', tonumber(ARGV[5])
local id = redis.call('HGET', 'ids', key)
local first, last, eng = nil, nil, 0
if id then
  local f = redis.call('HMGET', 'p:' .. id, 'first', 'last', 'eng', 'eng_t')
  first, last = tonumber(f[1]), tonumber(f[2])
  local s, t = tonumber(f[3] or '0'), tonumber(f[4] or now)
  eng = s * math.pow(2, -(now - t) / 604800)
end
local function member(set) return id and redis.call('SISMEMBER', set, id) == 1 end
local cart = id and redis.call('ZSCORE', 'seg:cart_abandoners', id)
local buyer = member('seg:buyers')
local eligible = {
  cart_reminder = cart and now - tonumber(cart) >= 1800,
  welcome_discount = (not id) or (first and now - first < 604800 and not buyer),
  vip_early_access = buyer and eng >= 40,
  winback = buyer and last and now - last > 5184000 and member('seg:email_reachable'),
  newsletter_signup = true,
}
local propensity = 1 / (1 + math.exp(2 - eng / 20))
local sticky = id and redis.call('GET', 'sticky:' .. id)
local ranked = {}
for _, o in ipairs(OFFERS) do
  local ok = eligible[o.name] and (not o.channels or o.channels[channel])
  if ok and id and redis.call('EXISTS', 'cd:' .. id .. ':' .. o.name) == 1 then ok = false end
  if ok and id then
    for i, c in ipairs(o.caps) do
      local n = tonumber(redis.call('GET', 'cap:' .. id .. ':' .. o.name .. ':' .. i) or '0')
      if n >= c[1] then ok = false end
    end
  end
  if ok and o.budget then
    local left = redis.call('GET', 'budget:' .. o.name)
    if left and tonumber(left) <= 0 then ok = false end
  end
  if ok then
    local rank = o.value * propensity
    if sticky == o.name then rank = rank + 1e9 end
    table.insert(ranked, { o, rank })
  end
end
table.sort(ranked, function(a, b) return a[2] > b[2] end)
local chosen = {}
for i = 1, math.min(top, #ranked) do
  chosen[i] = ranked[i][1].name
  if record and id then count_impression(id, ranked[i][1]) end
end
if record and id and chosen[1] then
  redis.call('SET', 'sticky:' .. id, chosen[1], 'EX', 86400)
end
return chosen
"#;

/// One feedback: ARGV = key, offer, channel, kind.
const FEEDBACK: &str = r#"
local key, name, kind = ARGV[1], ARGV[2], ARGV[4]
local id = redis.call('HGET', 'ids', key)
local o = offer_named(name)
if not id or not o then return 0 end
redis.call('HINCRBY', 'fb:' .. name, kind, 1)
if kind == 'impression' then count_impression(id, o) end
if kind == 'dismiss' and o.dismiss then
  redis.call('SET', 'cd:' .. id .. ':' .. name, 1, 'EX', o.dismiss)
end
if kind == 'accept' then
  if o.accept then redis.call('SET', 'cd:' .. id .. ':' .. name, 1, 'EX', o.accept) end
  if o.budget and o.budget[1] == 'accept' then
    local k = 'budget:' .. name
    redis.call('SET', k, o.budget[2], 'NX')
    redis.call('DECR', k)
  end
end
return 1
"#;

pub struct RedisTarget {
    connection: MultiplexedConnection,
    ingest: String,
    decide: String,
    feedback: String,
}

impl RedisTarget {
    pub async fn connect(url: &str) -> Result<RedisTarget, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot connect to Redis at {url}: {e}"))?;
        let ingest = load(&mut connection, "ingest", INGEST.to_string()).await?;
        let decide = load(&mut connection, "decide", format!("{OFFERS}{DECIDE}")).await?;
        let feedback = load(&mut connection, "feedback", format!("{OFFERS}{FEEDBACK}")).await?;
        Ok(RedisTarget {
            connection,
            ingest,
            decide,
            feedback,
        })
    }

    async fn call(&self, script: &str, args: &[&str]) -> Result<(), String> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script).arg(0);
        for a in args {
            cmd.arg(*a);
        }
        let mut connection = self.connection.clone();
        let _: redis::Value = cmd
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Loads a script; returns its SHA for EVALSHA.
async fn load(
    connection: &mut MultiplexedConnection,
    what: &str,
    script: String,
) -> Result<String, String> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query_async(connection)
        .await
        .map_err(|e| format!("cannot load the {what} script: {e}"))
}

fn now_s() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string()
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
            Op::Decide(d) => {
                let top = d.top.to_string();
                let record = if d.record_impression { "1" } else { "0" };
                let now = now_s();
                self.call(&self.decide, &[&d.key, &d.channel, &now, record, &top])
                    .await?;
                return Ok(1);
            }
            Op::Feedback(
                kind,
                FeedbackTarget::Customer {
                    key,
                    offer,
                    channel,
                },
            ) => {
                self.call(&self.feedback, &[&key, &offer, &channel, kind.name()])
                    .await?;
                return Ok(1);
            }
            Op::Feedback(_, FeedbackTarget::Decision { .. }) => {
                return Err(
                    "the Redis baseline takes feedback by customer, not by decision id".into(),
                )
            }
            Op::Query(_) => {
                return Err(
                    "the Redis baseline implements ingest, decide and mixed, not query".into(),
                )
            }
        };
        let mut pipe = redis::pipe();
        for e in &events {
            let amount = e.properties.iter().find_map(|(name, v)| match v.as_ref() {
                ValueRef::Num(n) if name == "amount" || name == "price" => Some(n),
                _ => None,
            });
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(&self.ingest)
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
