//! INGEST bodies read in place: the server validates a batch once and then reads each
//! event's fields straight from the frame body, with no copy and no allocation.
//!
//! Layout, per event: `str event, str channel, i64 timestamp_ms, u8 key_count, str ×
//! key_count, u8 property_count, (str name, value) × property_count, u8
//! attribute_count, (str name, value) × attribute_count`, after a `u32 count`.

use super::codec::{DecodeError, Reader};
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
        }
    }
}

impl EventView for EventRef<'_> {
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
