//! Bytes from the data directory, which a damaged disk or a careless copy can make
//! anything: a snapshot file, a shard image inside one (past its checksum, as if the
//! damage had been written before the checksum was computed), and a log record's action
//! (format 3's ACTION, decoded and replayed, and format 2's OFFER_ACTION). Damage may be
//! refused; it must never panic or allocate without bound.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use omnia::clock::ManualClock;
use omnia::config::Config;
use omnia::decide::record::{ActionRecord, OfferAction};
use omnia::node::{Node, NodeImage};
use omnia::store::snapshot;

fn node() -> Node {
    Node::new(
        Config::embedded_default().expect("the default config is valid"),
        Arc::new(ManualClock::new(1_772_445_600_000)),
    )
}

/// The image of an empty node: valid sections to put the fuzzed shard among.
fn empty_image() -> &'static NodeImage {
    static IMAGE: OnceLock<NodeImage> = OnceLock::new();
    IMAGE.get_or_init(|| node().image())
}

fuzz_target!(|data: &[u8]| {
    let _ = OfferAction::decode(data);
    if let Ok(record) = ActionRecord::decode(data) {
        let _ = node().replay_action(&record, 1, &[], 0);
    }
    if let Ok((image, _)) = snapshot::decode(data, Path::new("fuzz.snap")) {
        let _ = node().restore(&image);
    }
    let mut image = empty_image().clone();
    image.engine.shards[0].bytes = data.to_vec();
    let _ = node().restore(&image);
});
