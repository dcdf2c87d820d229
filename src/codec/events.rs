//! The event layouts: how an event is bytes, for the protocol's INGEST bodies and the
//! write-ahead log's EVENT records alike, read in place: the server validates a batch
//! once and then reads each event's fields straight from the frame body, with no copy
//! and no allocation, and an event that arrived this way is logged as the bytes it
//! arrived in.
//!
//! The layouts have versions of their own, apart from the protocol's and the data
//! directory's ([`Layout`]): protocol version 1 carries layout 1 in INGEST, protocol
//! version 2 layout 2; data directory format 4 stores layout 1 in EVENT and
//! EVENT_WITH_ID records (docs/storage.md, section 4.3), the message id in the record's
//! own field.
//!
//! Layout 1, per event: `str event, str channel, i64 timestamp_ms, u8 key_count, str ×
//! key_count, u8 property_count, (str name, value) × property_count, u8
//! attribute_count, (str name, value) × attribute_count`, after a `u32 count`.
//!
//! Layout 2, per event: `str message_id` (0 to [`MAX_MESSAGE_ID`] bytes; empty: the
//! event has none), then the event in layout 1. The id comes first so that the rest is
//! exactly a layout 1 event, which the log stores as it arrived.
//!
//! Invariant: an [`EventRef`]'s `encoded` bytes are always one layout 1 event, whatever
//! layout the batch came in.

use super::{DecodeError, Reader};

use crate::field;
use crate::model::{EventView, RawEvent, ValueRef, MAX_MESSAGE_ID};

/// An event layout version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The event's fields (protocol version 1; the log's records).
    V1 = 1,
    /// A message id, then the event's fields in layout 1 (protocol version 2).
    V2 = 2,
}

impl Layout {
    /// The layout a protocol version's INGEST bodies carry.
    pub fn of_protocol(version: u8) -> Layout {
        if version >= 2 {
            Layout::V2
        } else {
            Layout::V1
        }
    }
}

/// A validated INGEST batch borrowing its frame body.
///
/// A batch of up to [`KEPT_EVENTS`] events keeps the events as validation read them, so
/// that applying them does not parse the body a second time (that second pass was a
/// twentieth of the server's time under ingest); a larger one is read again when it is
/// iterated, so the memory a batch takes beyond its frame stays bounded whatever count
/// a frame declares. A one-event body (every log record's) allocates nothing.
#[derive(Debug, Clone)]
pub struct IngestBatch<'a> {
    events: &'a [u8],
    count: u32,
    layout: Layout,
    /// The events validation read, when `count <= KEPT_EVENTS`: the first, then the rest.
    kept: Option<(EventRef<'a>, Vec<EventRef<'a>>)>,
}

/// The most events a batch keeps from validation (about 600 KiB of [`EventRef`]s).
pub const KEPT_EVENTS: u32 = 4096;

/// One event of a batch, borrowing the body. Keys, properties and attributes are kept
/// as their byte sections and read on demand.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub event: &'a str,
    pub channel: &'a str,
    pub timestamp_ms: i64,
    /// The sender's id for the event (layout 2; `None` when it sent none).
    pub message_id: Option<&'a str>,
    keys: (u8, &'a [u8]),
    properties: (u8, &'a [u8]),
    attributes: (u8, &'a [u8]),
    /// The event's fields as they were on the wire (layout 1, without the message id),
    /// for logging it without re-encoding.
    encoded: &'a [u8],
}

impl<'a> IngestBatch<'a> {
    /// Checks the whole body against `layout`; every error names the event and the
    /// field and the byte offset.
    pub fn decode(body: &'a [u8], layout: Layout) -> Result<IngestBatch<'a>, DecodeError> {
        let mut r = Reader::new(body);
        let count = r.u32(field!("event count"))?;
        let start = r.offset();
        let keep = count <= KEPT_EVENTS;
        let mut first = None;
        let mut rest = Vec::with_capacity(if keep {
            count.saturating_sub(1) as usize
        } else {
            0
        });
        for i in 0..count {
            let event = read_event(&mut r, i, layout)?;
            if !keep {
                continue;
            }
            if first.is_none() {
                first = Some(event);
            } else {
                rest.push(event);
            }
        }
        let events = r.since(start);
        r.finish()?;
        Ok(IngestBatch {
            events,
            count,
            layout,
            kept: first.map(|first| (first, rest)),
        })
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The events, in order.
    pub fn iter(&self) -> Events<'a, '_> {
        Events(match &self.kept {
            Some((first, rest)) => Source::Kept {
                first: Some(*first),
                rest: rest.iter(),
            },
            None => Source::Read {
                r: Reader::new(self.events),
                layout: self.layout,
                next: 0,
                count: self.count,
            },
        })
    }
}

/// The events of an [`IngestBatch`], in order: the kept ones, or read again from the
/// body.
pub struct Events<'a, 'b>(Source<'a, 'b>);

enum Source<'a, 'b> {
    Kept {
        first: Option<EventRef<'a>>,
        rest: std::slice::Iter<'b, EventRef<'a>>,
    },
    Read {
        r: Reader<'a>,
        layout: Layout,
        next: u32,
        count: u32,
    },
}

impl<'a> Iterator for Events<'a, '_> {
    type Item = EventRef<'a>;

    fn next(&mut self) -> Option<EventRef<'a>> {
        match &mut self.0 {
            Source::Kept { first, rest } => first.take().or_else(|| rest.next().copied()),
            Source::Read {
                r,
                layout,
                next,
                count,
            } => {
                if *next >= *count {
                    return None;
                }
                *next += 1;
                // Validated by `decode`: reading again cannot fail.
                read_event(r, *next - 1, *layout).ok()
            }
        }
    }
}

fn read_event<'a>(r: &mut Reader<'a>, i: u32, layout: Layout) -> Result<EventRef<'a>, DecodeError> {
    let message_id = match layout {
        Layout::V1 => None,
        Layout::V2 => {
            let at = r.offset();
            let id = r.str(field!("message id of event {i}"))?;
            if id.len() > MAX_MESSAGE_ID {
                return Err(DecodeError::Invalid {
                    field: format!("message id of event {i}"),
                    offset: at,
                    message: format!(
                        "{} bytes; a message id is at most {MAX_MESSAGE_ID} bytes",
                        id.len()
                    ),
                });
            }
            (!id.is_empty()).then_some(id)
        }
    };
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
        message_id,
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
            message_id: self.message_id.map(str::to_string),
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
    fn message_id(&self) -> Option<&str> {
        self.message_id
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
///
/// The body is in layout 2 (protocol version 2), the newest; [`encode_one`] writes the
/// log's layout 1.
pub struct IngestWriter {
    buf: bytes::BytesMut,
    count: u32,
    layout: Layout,
}

impl Default for IngestWriter {
    fn default() -> Self {
        IngestWriter::with_capacity(64 * 1024)
    }
}

impl IngestWriter {
    pub fn with_capacity(bytes: usize) -> IngestWriter {
        IngestWriter::in_layout(Layout::V2, bytes)
    }

    fn in_layout(layout: Layout, bytes: usize) -> IngestWriter {
        let mut buf = bytes::BytesMut::with_capacity(bytes.max(4));
        buf.extend_from_slice(&[0; 4]);
        IngestWriter {
            buf,
            count: 0,
            layout,
        }
    }

    /// The layout this writer writes.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Starts an event with `key_count` keys to follow, and no message id.
    pub fn event(&mut self, event: &str, channel: &str, timestamp_ms: i64, key_count: u8) {
        self.event_with_id("", event, channel, timestamp_ms, key_count);
    }

    /// Starts an event with a message id (empty: none; at most [`MAX_MESSAGE_ID`] bytes,
    /// or the server refuses the batch) and `key_count` keys to follow.
    pub fn event_with_id(
        &mut self,
        message_id: &str,
        event: &str,
        channel: &str,
        timestamp_ms: i64,
        key_count: u8,
    ) {
        use super::Write;
        use bytes::BufMut;
        self.count += 1;
        if self.layout == Layout::V2 {
            self.buf.str(message_id);
        }
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

/// Writes one event as a one-event body in layout 1, without its message id (the log
/// keeps that in the record): copied as it is when it came in that layout, encoded
/// otherwise.
pub fn encode_one(event: &impl EventView, out: &mut Vec<u8>) {
    out.extend_from_slice(&1u32.to_le_bytes());
    if let Some(bytes) = event.encoded() {
        out.extend_from_slice(bytes);
        return;
    }
    let mut w = IngestWriter::in_layout(Layout::V1, 128);
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
