//! The event layout, version [`LAYOUT`]: how an event is bytes, for the protocol's
//! INGEST bodies and the write-ahead log's EVENT records alike, read in place: the
//! server validates a batch once and then reads each event's fields straight from the
//! frame body, with no copy and no allocation, and an event that arrived this way is
//! logged as the bytes it arrived in.
//!
//! The layout has a version of its own, apart from the protocol's and the data
//! directory's: protocol version 1 carries layout 1 in INGEST, and data directory
//! format 3 stores layout 1 in EVENT records (docs/storage.md, section 4.3). A protocol
//! version that changes INGEST gets a layout 2 and the log keeps layout 1 (its events
//! are then re-encoded, not copied) until a data directory format says otherwise.
//!
//! Layout 1, per event: `str event, str channel, i64 timestamp_ms, u8 key_count, str ×
//! key_count, u8 property_count, (str name, value) × property_count, u8
//! attribute_count, (str name, value) × attribute_count`, after a `u32 count`.

use super::{DecodeError, Reader};

/// The version of the event layout this module reads and writes.
pub const LAYOUT: u8 = 1;
use crate::field;
use crate::model::{EventView, RawEvent, ValueRef};

/// A validated INGEST batch borrowing its frame body.
#[derive(Debug, Clone, Copy)]
pub struct IngestBatch<'a> {
    events: &'a [u8],
    count: u32,
}

/// One event of a batch, borrowing the body. Keys, properties and attributes are kept
/// as their byte sections and read on demand.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub event: &'a str,
    pub channel: &'a str,
    pub timestamp_ms: i64,
    keys: (u8, &'a [u8]),
    properties: (u8, &'a [u8]),
    attributes: (u8, &'a [u8]),
    /// The whole event as it was on the wire, for logging it without re-encoding.
    encoded: &'a [u8],
}

impl<'a> IngestBatch<'a> {
    /// Checks the whole body against the layout; every error names the event and the
    /// field and the byte offset.
    pub fn decode(body: &'a [u8]) -> Result<IngestBatch<'a>, DecodeError> {
        let mut r = Reader::new(body);
        let count = r.u32(field!("event count"))?;
        let start = r.offset();
        for i in 0..count {
            read_event(&mut r, i)?;
        }
        let events = r.since(start);
        r.finish()?;
        Ok(IngestBatch { events, count })
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The events, in order.
    pub fn iter(&self) -> impl Iterator<Item = EventRef<'a>> + 'a {
        let mut r = Reader::new(self.events);
        // Validated by `decode`: reading again cannot fail.
        (0..self.count).map_while(move |i| read_event(&mut r, i).ok())
    }
}

fn read_event<'a>(r: &mut Reader<'a>, i: u32) -> Result<EventRef<'a>, DecodeError> {
    let whole = r.offset();
    let event = r.str(field!("event type of event {i}"))?;
    let channel = r.str(field!("channel of event {i}"))?;
    let timestamp_ms = r.i64(field!("timestamp of event {i}"))?;
    let key_count = r.u8(field!("key count of event {i}"))?;
    let start = r.offset();
    for k in 0..key_count {
        r.str(field!("key {k} of event {i}"))?;
    }
    let keys = (key_count, r.since(start));
    let property_count = r.u8(field!("property count of event {i}"))?;
    let start = r.offset();
    for p in 0..property_count {
        let name = r.str(field!("name of property {p} of event {i}"))?;
        r.value_ref(field!("value of property `{name}` of event {i}"))?;
    }
    let properties = (property_count, r.since(start));
    let attribute_count = r.u8(field!("attribute count of event {i}"))?;
    let start = r.offset();
    for a in 0..attribute_count {
        let name = r.str(field!("name of attribute {a} of event {i}"))?;
        r.value_ref(field!("value of attribute `{name}` of event {i}"))?;
    }
    let attributes = (attribute_count, r.since(start));
    Ok(EventRef {
        event,
        channel,
        timestamp_ms,
        keys,
        properties,
        attributes,
        encoded: r.since(whole),
    })
}

fn pairs<'a>((count, bytes): (u8, &'a [u8])) -> impl Iterator<Item = (&'a str, ValueRef<'a>)> {
    let mut r = Reader::new(bytes);
    (0..count).map_while(move |_| {
        Some((
            r.str(field!("name")).ok()?,
            r.value_ref(field!("value")).ok()?,
        ))
    })
}

impl<'a> EventRef<'a> {
    /// An owned copy.
    pub fn to_owned(&self) -> RawEvent {
        RawEvent {
            event: self.event.to_string(),
            channel: self.channel.to_string(),
            timestamp_ms: self.timestamp_ms,
            keys: self.keys().map(str::to_string).collect(),
            properties: pairs(self.properties)
                .map(|(n, v)| (n.to_string(), v.to_owned()))
                .collect(),
            attributes: pairs(self.attributes)
                .map(|(n, v)| (n.to_string(), v.to_owned()))
                .collect(),
            message_id: None,
        }
    }
}

impl EventView for EventRef<'_> {
    fn encoded(&self) -> Option<&[u8]> {
        Some(self.encoded)
    }
    fn event_type(&self) -> &str {
        self.event
    }
    fn channel(&self) -> &str {
        self.channel
    }
    fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }
    fn keys(&self) -> impl Iterator<Item = &str> {
        let (count, bytes) = self.keys;
        let mut r = Reader::new(bytes);
        (0..count).map_while(move |_| r.str(field!("key")).ok())
    }
    fn properties(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)> {
        pairs(self.properties)
    }
    fn attributes(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)> {
        pairs(self.attributes)
    }
}

/// Writes an INGEST body event by event, with no intermediate [`RawEvent`]s: what a
/// high-rate producer (the load generator) uses to send millions of events a second
/// without allocating for each.
///
/// Each event is `event(...)`, then exactly `key_count` calls to `key`, then
/// `properties(n)` and `n` calls to `property`, then `attributes(n)` and `n` calls to
/// `attribute`. The counts are written before the items, as the layout wants; a wrong
/// count makes a batch the server rejects as malformed, with the event and field named.
pub struct IngestWriter {
    buf: bytes::BytesMut,
    count: u32,
}

impl Default for IngestWriter {
    fn default() -> Self {
        IngestWriter::with_capacity(64 * 1024)
    }
}

impl IngestWriter {
    pub fn with_capacity(bytes: usize) -> IngestWriter {
        let mut buf = bytes::BytesMut::with_capacity(bytes.max(4));
        buf.extend_from_slice(&[0; 4]);
        IngestWriter { buf, count: 0 }
    }

    /// Starts an event with `key_count` keys to follow.
    pub fn event(&mut self, event: &str, channel: &str, timestamp_ms: i64, key_count: u8) {
        use super::Write;
        use bytes::BufMut;
        self.count += 1;
        self.buf.str(event);
        self.buf.str(channel);
        self.buf.put_i64_le(timestamp_ms);
        self.buf.put_u8(key_count);
    }

    pub fn key(&mut self, key: &str) {
        super::Write::str(&mut self.buf, key);
    }

    pub fn properties(&mut self, count: u8) {
        bytes::BufMut::put_u8(&mut self.buf, count);
    }

    pub fn property(&mut self, name: &str, value: ValueRef<'_>) {
        self.named(name, value);
    }

    pub fn attributes(&mut self, count: u8) {
        bytes::BufMut::put_u8(&mut self.buf, count);
    }

    pub fn attribute(&mut self, name: &str, value: ValueRef<'_>) {
        self.named(name, value);
    }

    fn named(&mut self, name: &str, value: ValueRef<'_>) {
        use super::Write;
        use bytes::BufMut;
        self.buf.str(name);
        match value {
            ValueRef::Num(n) => {
                self.buf.put_u8(1);
                self.buf.put_f64_le(n);
            }
            ValueRef::Str(s) => {
                self.buf.put_u8(2);
                self.buf.str(s);
            }
            ValueRef::Bool(b) => {
                self.buf.put_u8(3);
                self.buf.put_u8(b as u8);
            }
        }
    }

    /// Events written so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The finished body.
    pub fn finish(mut self) -> bytes::Bytes {
        self.buf[..4].copy_from_slice(&self.count.to_le_bytes());
        self.buf.freeze()
    }
}

/// Writes one event as a one-event INGEST body: copied as it is when it came in that
/// layout, encoded otherwise.
pub fn encode_one(event: &impl EventView, out: &mut Vec<u8>) {
    out.extend_from_slice(&1u32.to_le_bytes());
    if let Some(bytes) = event.encoded() {
        out.extend_from_slice(bytes);
        return;
    }
    let mut w = IngestWriter::with_capacity(128);
    w.event(
        event.event_type(),
        event.channel(),
        event.timestamp_ms(),
        event.keys().count().min(255) as u8,
    );
    for k in event.keys().take(255) {
        w.key(k);
    }
    w.properties(event.properties().count().min(255) as u8);
    for (name, value) in event.properties().take(255) {
        w.property(name, value);
    }
    w.attributes(event.attributes().count().min(255) as u8);
    for (name, value) in event.attributes().take(255) {
        w.attribute(name, value);
    }
    out.extend_from_slice(&w.finish()[4..]);
}
