//! The cases' text as the mirror holds it in memory: the texts of up to a page of cases
//! packed together as one LZ4 block (a page of case JSON repeats its keys and many values,
//! so a block is about a third of its text), unpacked only when a case must be read. A
//! case counted from its verdict is never unpacked. A block lives while any of its cases
//! is the version held; the file stores the same bytes. Each text's hash tells the same
//! version listed again (which keeps its verdict) without unpacking it, and a damaged
//! text when it is unpacked.

use std::collections::HashMap;
use std::sync::Arc;

/// The texts of some cases, packed.
pub struct Block {
    /// The texts one after another, LZ4-compressed, their size first.
    packed: Box<[u8]>,
    /// Where each text ends in the unpacked bytes.
    ends: Box<[u32]>,
    /// Each text's XXH3 hash.
    hashes: Box<[u64]>,
}

/// A case's text: its place in a block, or (while a full listing is under way, its pages
/// coming in creation order) the text itself, packed in `modified_at` order at its end.
#[derive(Clone)]
pub enum Body {
    Packed { block: Arc<Block>, index: u32 },
    Text(Arc<str>),
}

impl Block {
    /// Packs `texts`, one body each, in order.
    pub fn pack<S: AsRef<str>>(texts: &[S]) -> Vec<Body> {
        let size = texts.iter().map(|t| t.as_ref().len()).sum();
        let mut joined = String::with_capacity(size);
        let mut ends = Vec::with_capacity(texts.len());
        let mut hashes = Vec::with_capacity(texts.len());
        for t in texts {
            joined.push_str(t.as_ref());
            ends.push(u32::try_from(joined.len()).expect("a page of cases is under 4 GiB"));
            hashes.push(xxhash_rust::xxh3::xxh3_64(t.as_ref().as_bytes()));
        }
        let block = Block {
            packed: lz4_flex::compress_prepend_size(joined.as_bytes()).into(),
            ends: ends.into(),
            hashes: hashes.into(),
        };
        Block::bodies(Arc::new(block))
    }

    /// A block as the file stored it: its packed bytes and its texts' lengths and hashes.
    /// Err: why they do not agree.
    pub fn stored(packed: &[u8], texts: &[(u32, u64)]) -> Result<Vec<Body>, String> {
        let mut ends = Vec::with_capacity(texts.len());
        let mut end = 0u32;
        for &(len, _) in texts {
            end = end.checked_add(len).ok_or("a block's lengths overflow")?;
            ends.push(end);
        }
        let size = packed.first_chunk::<4>().map(|s| u32::from_le_bytes(*s));
        // LZ4 expands at most 255-fold.
        if size != Some(end) || end as usize > packed.len().saturating_mul(255) {
            return Err("a block's size is damaged".into());
        }
        let block = Block {
            packed: packed.into(),
            ends: ends.into(),
            hashes: texts.iter().map(|&(_, hash)| hash).collect(),
        };
        Ok(Block::bodies(Arc::new(block)))
    }

    /// `bodies` packed in one block; as they were when one cannot be read.
    pub fn repack(bodies: &[Body]) -> Vec<Body> {
        match texts(bodies.iter()) {
            Some(texts) => Block::pack(&texts),
            None => bodies.to_vec(),
        }
    }

    /// The block holding exactly `bodies`, in order: theirs when they are the whole of it,
    /// else packed anew; None when a text cannot be read.
    pub fn holding(bodies: &[&Body]) -> Option<Arc<Block>> {
        let first = bodies.first()?.block();
        let whole = first.is_some_and(|block| {
            bodies.len() == block.len()
                && bodies.iter().enumerate().all(|(i, b)| {
                    matches!(b, Body::Packed { block: b, index } if Arc::ptr_eq(b, block) && *index as usize == i)
                })
        });
        match first {
            Some(block) if whole => Some(block.clone()),
            _ => Block::pack(&texts(bodies.iter().copied())?)[0]
                .block()
                .cloned(),
        }
    }

    fn bodies(block: Arc<Block>) -> Vec<Body> {
        (0..block.ends.len() as u32)
            .map(|index| Body::Packed {
                block: block.clone(),
                index,
            })
            .collect()
    }

    /// The packed bytes, as the file stores them.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// Each text's length and hash, in order.
    pub fn texts(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        let lengths = self.ends.iter().zip(starts).map(|(end, start)| end - start);
        lengths.zip(self.hashes.iter().copied())
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    fn unpack(&self) -> Unpacked {
        lz4_flex::decompress_size_prepended(&self.packed)
            .map_err(|e| format!("a block of the mirror does not unpack ({e})"))
    }

    /// The text at `index`, checked against its hash (a damaged file's block loads
    /// without being unpacked).
    fn text<'a>(&self, unpacked: &'a [u8], index: u32) -> Result<&'a str, String> {
        let i = index as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let bytes = unpacked
            .get(start..self.ends[i] as usize)
            .ok_or("a block of the mirror is cut short")?;
        if xxhash_rust::xxh3::xxh3_64(bytes) != self.hashes[i] {
            return Err("a case of the mirror is damaged".into());
        }
        std::str::from_utf8(bytes).map_err(|_| "a case of the mirror is not UTF-8".into())
    }
}

impl Body {
    /// A text as listed, packed later.
    pub fn text(text: String) -> Body {
        Body::Text(text.into())
    }

    fn hash(&self) -> u64 {
        match self {
            Body::Packed { block, index } => block.hashes[*index as usize],
            Body::Text(text) => xxhash_rust::xxh3::xxh3_64(text.as_bytes()),
        }
    }

    /// Whether both are the same text (by their hashes).
    pub fn same_text(&self, other: &Body) -> bool {
        self.hash() == other.hash()
    }

    /// The block it is packed in.
    fn block(&self) -> Option<&Arc<Block>> {
        match self {
            Body::Packed { block, .. } => Some(block),
            Body::Text(_) => None,
        }
    }

    pub fn in_block_of(&self, other: &Body) -> bool {
        matches!((self.block(), other.block()), (Some(a), Some(b)) if Arc::ptr_eq(a, b))
    }

    /// Its text, from its block unpacked (when packed).
    fn read<'a>(&'a self, unpacked: Option<&'a Unpacked>) -> Result<&'a str, String> {
        match (self, unpacked) {
            (Body::Packed { block, index }, Some(bytes)) => {
                block.text(bytes.as_ref().map_err(Clone::clone)?, *index)
            }
            (Body::Text(text), _) => Ok(text),
            (Body::Packed { .. }, None) => Err("a block of the mirror was not unpacked".into()),
        }
    }
}

/// `items` packed `per` a block by `pack`, on all cores, off the async threads.
pub async fn pack<T: Send + Sync + 'static>(
    items: Vec<T>,
    per: usize,
    pack: fn(&[T]) -> Vec<Body>,
) -> Vec<Body> {
    use rayon::prelude::*;
    let packed =
        tokio::task::spawn_blocking(move || (items.par_chunks(per)).flat_map_iter(pack).collect());
    packed.await.expect("packing does not panic")
}

/// The texts of `bodies`; None when one cannot be read.
fn texts<'a>(bodies: impl Iterator<Item = &'a Body>) -> Option<Vec<String>> {
    let mut unpacker = Unpacker::default();
    bodies
        .map(|body| unpacker.text(body).ok().map(str::to_string))
        .collect()
}

/// A block's texts unpacked, or why they cannot be.
type Unpacked = Result<Vec<u8>, String>;

/// Reads bodies one after another, keeping the last few blocks unpacked (a pass's own
/// writes and the changes of others in the same minutes alternate in `modified_at` order).
#[derive(Default)]
pub struct Unpacker {
    recent: Vec<(Arc<Block>, Unpacked)>,
}

impl Unpacker {
    const KEPT: usize = 4;

    pub fn text<'a>(&'a mut self, body: &'a Body) -> Result<&'a str, String> {
        let Some(block) = body.block() else {
            return body.read(None);
        };
        let at = match self.recent.iter().position(|(b, _)| Arc::ptr_eq(b, block)) {
            Some(at) => at,
            None => {
                if self.recent.len() == Self::KEPT {
                    self.recent.drain(..1);
                }
                self.recent.push((block.clone(), block.unpack()));
                self.recent.len() - 1
            }
        };
        body.read(Some(&self.recent[at].1))
    }
}

/// Bodies with their blocks unpacked, each once (on all cores), to read their texts in any
/// order.
pub struct Opened {
    bodies: Vec<Body>,
    /// Each body's block, unpacked: an index into `unpacked`.
    of: Vec<usize>,
    unpacked: Vec<Unpacked>,
}

impl Opened {
    pub fn open(bodies: Vec<Body>) -> Opened {
        use rayon::prelude::*;
        let mut blocks: Vec<&Block> = Vec::new();
        let mut seen: HashMap<*const Block, usize> = HashMap::new();
        let mut of = Vec::with_capacity(bodies.len());
        for body in &bodies {
            of.push(body.block().map_or(usize::MAX, |block| {
                *seen.entry(Arc::as_ptr(block)).or_insert_with(|| {
                    blocks.push(block);
                    blocks.len() - 1
                })
            }));
        }
        let unpacked = blocks.par_iter().map(|b| b.unpack()).collect();
        Opened {
            bodies,
            of,
            unpacked,
        }
    }

    /// How many bodies it holds.
    pub fn count(&self) -> usize {
        self.bodies.len()
    }

    /// The text of the `i`th body.
    pub fn text(&self, i: usize) -> Result<&str, String> {
        self.bodies[i].read(self.unpacked.get(self.of[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_gives_back_each_text_as_packed_and_as_stored() {
        let texts = ["{\"_id\":\"a\"}", "", "{\"_id\":\"b\",\"é\":1}"];
        let bodies = Block::pack(&texts);
        let mut unpacker = Unpacker::default();
        for (body, text) in bodies.iter().zip(texts) {
            assert_eq!(unpacker.text(body).unwrap(), text);
        }
        let block = bodies[0].block().unwrap();
        let stored: Vec<(u32, u64)> = block.texts().collect();
        assert_eq!(stored.iter().map(|t| t.0).collect::<Vec<_>>(), [11, 0, 18]);
        let back = Block::stored(block.packed(), &stored).unwrap();
        assert!(back[2].same_text(&bodies[2]) && !back[2].same_text(&bodies[0]));
        let opened = Opened::open(back);
        let read: Vec<&str> = (0..opened.count())
            .map(|i| opened.text(i).unwrap())
            .collect();
        assert_eq!(read, texts);
        let mut longer = stored.clone();
        longer[2].0 += 1;
        assert!(Block::stored(block.packed(), &longer).is_err());
        assert!(Block::stored(&block.packed()[..3], &stored).is_err());
    }

    #[test]
    fn bodies_of_alternating_blocks_unpack_each_block_once() {
        let (a, b) = (Block::pack(&["a1", "a2"]), Block::pack(&["b1", "b2"]));
        let mixed = vec![a[0].clone(), b[0].clone(), a[1].clone(), b[1].clone()];
        let opened = Opened::open(mixed.clone());
        assert_eq!(opened.unpacked.len(), 2);
        let read: Vec<&str> = (0..opened.count())
            .map(|i| opened.text(i).unwrap())
            .collect();
        assert_eq!(read, ["a1", "b1", "a2", "b2"]);
        let mut unpacker = Unpacker::default();
        for body in &mixed {
            unpacker.text(body).unwrap();
        }
        assert_eq!(unpacker.recent.len(), 2);
    }
}
