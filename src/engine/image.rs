//! Images of the engine for snapshots: each shard as bytes, cut at its own log sequence.
//!
//! Why per shard: a snapshot must not stop ingest. It makes a *cut* of one shard at a
//! time: under the shard's lock, it reads the log sequence and copies the small parts
//! (bitmaps, generations, offer state); rows and keys are then saved chunk by chunk
//! (4,096 customers), each either by the snapshot or, if a change comes first, by the
//! change, just before it (copy on write, see `ShardCut`). So no lock is held for
//! longer than one chunk's copy, and an INGEST batch, which touches every shard, never
//! waits for a whole shard. Every change to a shard is logged while that shard's lock is
//! held (see [`Engine::ingest`]), so the cut splits the log exactly: records up to it
//! that change this shard are in the image, later ones are not. Recovery replays, for
//! each shard, only the records after its cut.
//!
//! One change spans two shards: merging customers of different shards. If a snapshot
//! cut the survivor's shard before a merge and the loser's after it, the loser's
//! profile would be in neither image. So while cuts are being made, a merge first cuts
//! whichever of its two shards is not cut yet: both images then hold the state before
//! the merge, and replaying the merging event merges again.
//!
//! Layout of a shard image (little-endian; `str` is `u16` length + UTF-8):
//!
//! ```text
//! u64 cut, u32 now, u32 stride, u32 slots
//! slots x u32 generation
//! slots x stride x u32 profile rows
//! slots x (u16 key count, key count x (u8 namespace, str key))
//! u32 free slots, that many u32
//! u32 segments, each: u32 length + that many bytes of roaring bitmap (portable format)
//! what the shard's extension writes (see `Extension::encode`; for `decide::Offers`:
//!   u32 customers with offer state, each: u32 slot + offer state,
//!   u32 offers, each: u32 budget period, u32 units spent in it)
//! ```
//!
//! Which customers are live and the timer queue are not stored: they follow from the
//! keys and from each row's next-timer word.

use std::sync::atomic::Ordering;

use roaring::RoaringBitmap;

use super::event::Key;
use super::relayout::LayoutMap;
use super::shard::{ShardCut, ShardParts, ShardState, CHUNK_ROWS};
use super::{CustomerRef, Engine, Extension, Plan};
use bytes::BufMut;

use crate::codec::{named, DecodeError, Reader, Write};

/// A shard copied for a snapshot: its cut and its bytes.
#[derive(Debug, Clone)]
pub struct ShardImage {
    pub cut: u64,
    pub bytes: Vec<u8>,
}

/// Everything a snapshot holds of an engine.
#[derive(Debug, Clone)]
pub struct EngineImage {
    pub shards: Vec<ShardImage>,
    /// The log sequence once every shard was cut: each shard's cut is at or before it.
    pub position: u64,
    /// The message ids remembered once every shard was cut (see `dedup`).
    pub dedup: Vec<super::dedup::Remembered>,
    /// The suppression list's keyed hashes then (see `suppression`).
    pub suppressed: Vec<super::suppression::Hashed>,
    /// The texts of string attribute values, code 1 first: rows hold codes.
    pub strings: Vec<String>,
    /// The longest time one shard was locked for its copy: how long ingest to that
    /// shard waited.
    pub longest_pause: std::time::Duration,
    /// The config the rows are laid out by: its name and text.
    pub config: (String, String),
}

/// Why an image cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("shard {shard}: {error}")]
    Shard { shard: usize, error: DecodeError },
    #[error("{0}")]
    Layout(String),
}

/// Words as little-endian bytes: one copy on little-endian machines, where this is the
/// time a shard stays locked for its snapshot.
pub(super) fn put_words(out: &mut Vec<u8>, words: &[u32]) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(words));
    } else {
        for &w in words {
            out.put_u32_le(w);
        }
    }
}

/// The inverse of [`put_words`]; `bytes` holds exactly `words.len() * 4` bytes.
fn get_words(words: &mut [u32], bytes: &[u8]) {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice_mut::<u32, u8>(words).copy_from_slice(bytes);
    } else {
        for (w, b) in words.iter_mut().zip(bytes.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
}

/// Writes a shard's image from its cut, every chunk saved.
/// The start of a shard's image, up to its rows.
fn write_cut_head<X: Extension>(cut: &ShardCut<X>, plan: &Plan, out: &mut Vec<u8>) {
    let stride = plan.layout.stride;
    out.reserve(cut.slots * (stride * 4 + 8) + 1024);
    out.extend_from_slice(&cut.cut.to_le_bytes());
    out.put_u32_le(cut.now);
    out.put_u32_le(stride as u32);
    out.put_u32_le(cut.slots as u32);
    put_words(out, &cut.gens);
}

/// Slots' keys as the image stores them.
pub(super) fn put_keys(out: &mut Vec<u8>, slots: &[super::shard::Keys]) {
    for keys in slots {
        let n = keys.len().min(u16::MAX as usize);
        out.extend_from_slice(&(n as u16).to_le_bytes());
        for key in keys.iter().take(n) {
            out.push(key.namespace as u8);
            out.str(&key.text);
        }
    }
}

/// The end of a shard's image, after its keys.
fn write_cut_tail<X: Extension>(cut: &ShardCut<X>, out: &mut Vec<u8>) {
    out.put_u32_le(cut.free.len() as u32);
    put_words(out, &cut.free);
    out.put_u32_le(cut.members.len() as u32);
    for bitmap in &cut.members {
        out.put_u32_le(bitmap.serialized_size() as u32);
        // Writing into a Vec cannot fail.
        let _ = bitmap.serialize_into(&mut *out);
    }
    X::encode(&cut.extension, out);
}

/// Reads a shard image written by [`write_shard`] under the same config layout.
///
/// `codes` maps the string codes in the image's rows to this engine's (`codes[old]`), or
/// is empty when they are the same.
pub(crate) fn read_shard<X: Extension>(
    plan: &Plan,
    id_base: u32,
    capacity: u64,
    bytes: &[u8],
    codes: &[u32],
) -> Result<(ShardState<X>, u64), DecodeError> {
    let mut r = Reader::new(bytes);
    let cut = r.u64(&named("cut"))?;
    let now = r.u32(&named("shard time"))?;
    let stride = r.u32(&named("stride"))? as usize;
    if stride != plan.layout.stride {
        return Err(r.invalid(
            "stride",
            format!(
                "rows of {stride} words, this config lays out {}",
                plan.layout.stride
            ),
        ));
    }
    let slots = r.u32(&named("slots"))? as usize;
    if slots as u64 > capacity {
        return Err(r.invalid("slots", format!("{slots} slots, capacity {capacity}")));
    }
    // Read before anything is allocated for them: a damaged count must not allocate
    // gigabytes.
    let gens = r.bytes(slots * 4, &named("generations"))?;
    let gens = {
        let mut words = vec![0; slots];
        get_words(&mut words, gens);
        words
    };
    let mut rows = Vec::with_capacity(slots.div_ceil(CHUNK_ROWS));
    let mut left = slots * stride;
    while left > 0 {
        let mut chunk = vec![0u32; CHUNK_ROWS * stride].into_boxed_slice();
        let used = left.min(chunk.len());
        get_words(
            &mut chunk[..used],
            r.bytes(used * 4, &named("profile rows"))?,
        );
        rows.push(chunk);
        left -= used;
    }
    // `allocate` adds a chunk when the slot count reaches a chunk boundary, so exactly
    // the chunks holding `slots` rows exist, as here.
    if !codes.is_empty() {
        let strings = plan.layout.string_words();
        for local in 0..slots {
            let (chunk, row) = (local / CHUNK_ROWS, local % CHUNK_ROWS * stride);
            for &at in strings {
                let word = &mut rows[chunk][row + at];
                *word = *codes.get(*word as usize).ok_or_else(|| {
                    r.invalid("profile row", format!("string code {} is unknown", *word))
                })?;
            }
        }
    }
    let namespaces = plan.config.namespaces.len();
    // Each slot has at least its key count.
    if r.remaining() < slots * 2 {
        return Err(r.invalid(
            "keys",
            format!("{slots} slots, {} bytes left", r.remaining()),
        ));
    }
    let mut slot_keys = Vec::with_capacity(slots);
    for _ in 0..slots {
        let n = r.u16(&named("key count"))?;
        let mut keys = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let namespace = r.u8(&named("key namespace"))? as usize;
            if namespace >= namespaces {
                return Err(r.invalid(
                    "key namespace",
                    format!("namespace {namespace} of {namespaces}"),
                ));
            }
            keys.push(Key {
                namespace,
                text: r.str(&named("key"))?.into(),
            });
        }
        slot_keys.push(keys.into_boxed_slice());
    }
    let mut free = Vec::new();
    for _ in 0..r.u32(&named("free slots"))? {
        let slot = r.u32(&named("free slot"))?;
        if slot as usize >= slots {
            return Err(r.invalid("free slot", format!("slot {slot} of {slots}")));
        }
        free.push(slot);
    }
    let segments = r.u32(&named("segments"))? as usize;
    if segments != plan.config.segments.len() {
        return Err(r.invalid(
            "segments",
            format!(
                "{segments} segments, this config has {}",
                plan.config.segments.len()
            ),
        ));
    }
    let mut members = Vec::with_capacity(segments);
    for s in 0..segments {
        let len = r.u32(&named("bitmap length"))? as usize;
        let at = r.offset();
        let bitmap_bytes = r.bytes(len, &named("bitmap"))?;
        members.push(RoaringBitmap::deserialize_from(bitmap_bytes).map_err(|e| {
            DecodeError::Invalid {
                field: format!("bitmap of segment `{}`", plan.config.segments[s].name),
                offset: at,
                message: e.to_string(),
            }
        })?);
    }
    let extension = X::decode(&mut r, &plan.config, slots)?;
    let parts = ShardParts {
        now,
        gens,
        rows,
        keys: slot_keys,
        free,
        members,
        extension,
    };
    let state = ShardState::from_parts(plan, id_base, capacity, parts);
    r.finish()?;
    Ok((state, cut))
}

impl<X: Extension> Engine<X> {
    fn log_position(&self) -> u64 {
        self.journal.get().map_or(0, |j| j.last_appended())
    }

    /// Copies every shard, one at a time, each at its own cut (see the module docs).
    pub fn image(&self) -> EngineImage {
        self.image_with(|_| {})
    }

    /// [`Engine::image`], calling `between(shard)` after each shard is cut, with no
    /// lock held: tests use it to change the engine in the middle of a snapshot.
    pub fn image_with(&self, between: impl FnMut(usize)) -> EngineImage {
        let mut shards = Vec::with_capacity(self.shards.len());
        let mut image = self.image_into(between, &mut |cut, bytes| {
            shards.push(ShardImage {
                cut,
                bytes: std::mem::take(bytes),
            })
        });
        image.shards = shards;
        image
    }

    /// Makes an image, handing each shard's encoding to `sink(cut, bytes)` as soon as
    /// it is made instead of keeping them all: a snapshot writes them to its file, and
    /// one buffer serves every shard. The image returned has no shards.
    pub fn image_into(
        &self,
        mut between: impl FnMut(usize),
        sink: &mut dyn FnMut(u64, &mut Vec<u8>),
    ) -> EngineImage {
        let _one_at_a_time = self.imaging.lock();
        let n = self.shards.len();
        *self.cutting.lock() = Some(vec![false; n]);
        self.cutting_active.store(true, Ordering::SeqCst);
        let mut longest_pause = std::time::Duration::ZERO;
        let mut timed = |shard: usize, f: &mut dyn FnMut(&mut ShardState<X>)| {
            let mut state = self.lock(shard);
            let locked = std::time::Instant::now();
            f(&mut state);
            drop(state);
            longest_pause = longest_pause.max(locked.elapsed());
        };
        // One shard at a time: cut it, then encode its chunks, each under the lock for
        // that chunk only, straight from the rows unless a change saved it first. The
        // buffers serve every shard.
        let (mut bytes, mut keys) = (Vec::new(), Vec::new());
        for shard in 0..n {
            bytes.clear();
            keys.clear();
            let mut chunks = 0;
            timed(shard, &mut |state| {
                self.cut_if_uncut(shard, state);
                if let Some(cut) = state.cut.as_deref() {
                    write_cut_head(cut, &self.plan, &mut bytes);
                    chunks = cut.chunks.len();
                }
            });
            between(shard);
            for chunk in 0..chunks {
                timed(shard, &mut |state| {
                    state.encode_chunk(&self.plan, chunk, &mut bytes, &mut keys)
                });
            }
            let mut cut = None;
            timed(shard, &mut |state| cut = state.cut.take());
            bytes.extend_from_slice(&keys);
            let cut = cut.map_or(0, |cut| {
                write_cut_tail(&cut, &mut bytes);
                cut.cut
            });
            sink(cut, &mut bytes);
        }
        // Every shard is cut: merges need not cut any more.
        self.cutting_active.store(false, Ordering::SeqCst);
        *self.cutting.lock() = None;
        // The ids after every shard is cut: every record up to a cut claimed its id
        // before. Then each lock a claim is made under is taken once, so every claim
        // copied has appended its record, and the position read after covers them all:
        // the snapshot never remembers an id whose record the log could still lose.
        let dedup = self.dedup.entries();
        // Forgets append under the identity mutex, as slow-path claims do.
        let suppressed = self.suppression.entries();
        drop(self.identity_writes.lock());
        for shard in self.shards.iter() {
            drop(shard.lock());
        }
        let position = self.log_position();
        EngineImage {
            shards: Vec::new(),
            position,
            dedup,
            suppressed,
            // After every shard: it holds every code their rows use.
            strings: self
                .plan
                .config
                .interner
                .strings()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            longest_pause,
            config: (
                self.plan.config.source_name.clone(),
                self.plan.config.source_text.clone(),
            ),
        }
    }

    /// Cuts a shard for the snapshot being made unless it is cut already. Called with
    /// the shard's lock held, which is what makes the cut and the log sequence agree.
    pub(super) fn cut_if_uncut(&self, shard: usize, state: &mut ShardState<X>) {
        if !self.cutting_active.load(Ordering::SeqCst) {
            return;
        }
        let mut cutting = self.cutting.lock();
        if let Some(cut) = cutting.as_mut().and_then(|c| c.get_mut(shard)) {
            if !*cut {
                *cut = true;
                // Changes noted under this lock go in before the cut, with the state
                // they describe.
                self.record_changes(state);
                state.start_cut(self.log_position());
            }
        }
    }

    /// Loads shard images into this engine, which must be new (no customers yet), and
    /// rebuilds what images do not store: the identity map. The rows must be laid out
    /// by this engine's config. What the layer above keeps beside the shards (the
    /// global budgets) it rebuilds from [`Engine::each_extension`].
    pub fn restore(&self, image: &EngineImage) -> Result<Vec<u64>, RestoreError> {
        self.restore_with(image, None, &|_, _| {})
    }

    /// [`Engine::restore`] of an image whose rows are laid out by `from`'s config,
    /// moved into this engine's layout on the way (see `relayout`). Returns each shard's
    /// cut.
    ///
    /// `progress(done, total)` is called after each shard.
    pub(crate) fn restore_with(
        &self,
        image: &EngineImage,
        from: Option<&Plan>,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<u64>, RestoreError> {
        if image.shards.len() != self.shards.len() {
            return Err(RestoreError::Layout(format!(
                "it has {} shards and the config has {}: engine.shards cannot change while a data directory lives (customer ids hold their shard)",
                image.shards.len(),
                self.shards.len()
            )));
        }
        let map = from
            .map(|from| LayoutMap::<X>::new(from, &self.plan).map(|map| (from, map)))
            .transpose()
            .map_err(RestoreError::Layout)?;
        let capacity = 1u64 << self.local_bits;
        // The image's string codes, as this engine's interner numbers them: the same
        // unless the config's rules mention other strings than the writer's did.
        let interner = &self.plan.config.interner;
        let mut codes = vec![0u32];
        codes.extend(image.strings.iter().map(|s| interner.intern(s)));
        if codes.iter().enumerate().all(|(i, &c)| c == i as u32) {
            codes.clear();
        }
        self.dedup.restore(&image.dedup);
        self.suppression.restore(&image.suppressed);
        let recorded = self.recorded_by(image, from);
        let mut cuts = Vec::with_capacity(self.shards.len());
        for (shard, shard_image) in image.shards.iter().enumerate() {
            let base = ((shard as u64) << self.local_bits) as u32;
            let layout = map.as_ref().map_or(&self.plan, |(from, _)| *from);
            let (mut state, cut) = read_shard(layout, base, capacity, &shard_image.bytes, &codes)
                .map_err(|error| RestoreError::Shard { shard, error })?;
            // Before a new layout evaluates the segments again: what the stream held.
            self.view_image(layout, &state, &recorded);
            if let Some((from, map)) = &map {
                state = map.convert(state, from, &self.plan);
            }
            // The interner counts the rows that hold each code (see `Interner`).
            for id in state.live() {
                let row = state.row(&self.plan, id - base);
                for &at in self.plan.layout.string_words() {
                    interner.retain(row[at]);
                }
            }
            for id in state.live() {
                let slot = id - base;
                let r = CustomerRef {
                    id,
                    generation: state.generations()[slot as usize],
                };
                for key in state.keys(slot) {
                    self.identity.insert(key.text.clone(), r.pack());
                }
            }
            // What evaluating segments under a new layout noted is for the store to make
            // good (see `changes`), not for the stream.
            drop(state.take_changes());
            *self.shards[shard].lock() = state;
            cuts.push(cut);
            progress(shard + 1, image.shards.len());
        }
        Ok(cuts)
    }

    /// The segments the config that wrote `image` put on the change stream, by name:
    /// this engine's, `from`'s (compiled from the image's config text) or, when only
    /// the stream changed, the image's config compiled here. One that no longer
    /// compiles recorded nothing the stream can be trusted with: its segments start
    /// over.
    fn recorded_by(
        &self,
        image: &EngineImage,
        from: Option<&Plan>,
    ) -> std::collections::HashSet<String> {
        let names = |config: &crate::config::Config| {
            config
                .segments
                .iter()
                .enumerate()
                .filter(|(s, _)| config.triggers.records(*s))
                .map(|(_, segment)| segment.name.clone())
                .collect()
        };
        let (name, text) = &image.config;
        if *text == self.plan.config.source_text {
            return names(&self.plan.config);
        }
        if let Some(from) = from {
            return names(&from.config);
        }
        let source = crate::config::Source::new(name.clone(), text.clone());
        crate::config::Config::from_source(&source)
            .map(|config| names(&config))
            .unwrap_or_default()
    }

    /// Calls `f` with each shard's extension in turn, under that shard's lock: how the
    /// layer above totals what it keeps per shard (budget spending) after a restore.
    pub fn each_extension(&self, mut f: impl FnMut(&X)) {
        for shard in self.shards.iter() {
            f(shard.lock().extension());
        }
    }

    /// [`Engine::each_extension`], with a way to name each slot's customer: its primary
    /// key (how the layer above indexes what it keeps per customer after a restore).
    pub fn each_extension_keyed(&self, mut f: impl FnMut(&X, &dyn Fn(u32) -> String)) {
        for shard in self.shards.iter() {
            let state = shard.lock();
            let primary = |local: u32| crate::engine::view::primary_key(state.keys(local));
            f(state.extension(), &primary);
        }
    }
}
