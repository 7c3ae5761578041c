//! How deferred state sections reach the snapshot file: encoded on the snapshot writer thread
//! straight into the file, through a small staging buffer.
//!
//! An encoder (e.g. a keyed table's, see [`crate::state::groups`]) serializes with postcard
//! into a [`Stream`], which stages the bytes in a buffer of [`STAGE`] bytes and hands each full
//! buffer to a [`SectionOut`]: the snapshot file's writer, which checksums the bytes and copies
//! them into the memory-mapped file (`weir_storage::SnapshotWriter`), or a vector in tests.
//! The staging buffer is reused by the thread from one section and checkpoint to the next.
//!
//! Encoding into the file in small pieces, instead of into buffers as large as the snapshot
//! that are then copied into the file, keeps the writer's memory at a few hundred KiB whatever
//! the state's size, and keeps what it writes in its core's own cache: the encoded bytes are
//! checksummed and copied while still there. Large buffers were written once, then read back
//! from memory twice (checksum, copy), and pushed the workers' hot state out of the shared
//! last-level cache on the way (tens of MB per checkpoint for the 1 GB keyed state of the
//! checkpoint benchmark); for state that grows, the buffers grew, and the kernel zeroed their
//! fresh pages at every checkpoint.
//!
//! The encoder is postcard's format written by a serializer of our own ([`Stream`]), not by
//! `postcard::Serializer`: the bytes are the same (a property test checks them against
//! `postcard::to_stdvec` for every kind of value serde has), and restores read them with
//! postcard. Postcard hands every byte and integer to its output through a flavor call (a
//! `[u8; 24]` is 24 pushes, each checking for room; a varint is built in a scratch array,
//! then copied), which cost about 50 ns per entry of the checkpoint benchmark's state. Here
//! each primitive checks for room once, against a buffer with [`SLACK`] bytes to spare, and
//! is written in place: about 30 ns for the same entry.

use std::cell::RefCell;

use serde::ser::{self, Serialize};

/// Bytes staged before they are handed on: a fraction of a core's L2 cache.
const STAGE: usize = if cfg!(test) { 64 } else { 256 << 10 };

/// Room past [`STAGE`] for one primitive written after a single check: the longest is a `u64`
/// varint (10 bytes; a `u128` checks again for each group above 64 bits).
const SLACK: usize = 32;

/// Where a deferred section's bytes go, in order.
pub(crate) trait SectionOut {
    /// Appends `bytes` to the section.
    fn write(&mut self, bytes: &[u8]) -> Result<(), String>;
}

impl SectionOut for Vec<u8> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

impl SectionOut for weir_storage::SnapshotWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        weir_storage::SnapshotWriter::write(self, bytes).map_err(|e| e.to_string())
    }
}

/// A section encoded on the snapshot writer thread: writes its bytes to the output it is given.
pub(crate) type Deferred = Box<dyn FnOnce(&mut dyn SectionOut) -> Result<(), String> + Send>;

/// A staging buffer: [`STAGE`] bytes plus [`SLACK`].
type Buffer = Box<[u8]>;

thread_local! {
    /// The staging buffer this thread used last, kept for the next [`Stream`].
    static KEPT: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// Postcard encoding into a [`SectionOut`] through a staging buffer (see the module docs).
/// [`Stream::finish`] hands on what is still staged.
pub(crate) struct Stream<'o> {
    buf: Buffer,
    /// Bytes staged in `buf`. Invariant: `len <= STAGE + SLACK`.
    len: usize,
    out: &'o mut dyn SectionOut,
    /// Bytes handed to `out` so far.
    handed: u64,
}

/// Why encoding stopped.
#[derive(Debug)]
pub(crate) enum EncodeError {
    /// The output refused bytes: its message.
    Out(String),
    /// The value cannot be encoded (its `Serialize` failed, or a sequence did not know its
    /// length, which postcard writes first).
    Value(String),
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::Out(m) => f.write_str(m),
            EncodeError::Value(m) => write!(f, "cannot encode state: {m}"),
        }
    }
}

impl std::error::Error for EncodeError {}

impl ser::Error for EncodeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        EncodeError::Value(msg.to_string())
    }
}

type Result<T = (), E = EncodeError> = std::result::Result<T, E>;

impl<'o> Stream<'o> {
    pub(crate) fn new(out: &'o mut dyn SectionOut) -> Self {
        let buf = KEPT
            .with(|k| k.borrow_mut().take())
            .unwrap_or_else(|| vec![0u8; STAGE + SLACK].into_boxed_slice());
        Stream {
            buf,
            len: 0,
            out,
            handed: 0,
        }
    }

    /// Bytes encoded so far.
    pub(crate) fn position(&self) -> u64 {
        self.handed + self.len as u64
    }

    /// Appends the postcard encoding of `value` (the same bytes as `postcard::to_stdvec`).
    pub(crate) fn put<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        value.serialize(&mut *self).map_err(|e| e.to_string())
    }

    /// Appends `bytes` as they are.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.extend(bytes).map_err(|e| e.to_string())
    }

    /// Hands on what is staged.
    pub(crate) fn finish(mut self) -> Result<(), String> {
        self.flush().map_err(|e| e.to_string())
    }

    #[cold]
    fn flush(&mut self) -> Result {
        if self.len > 0 {
            self.out
                .write(&self.buf[..self.len])
                .map_err(EncodeError::Out)?;
            self.handed += self.len as u64;
            self.len = 0;
        }
        Ok(())
    }

    /// Makes room for one primitive (at most [`SLACK`] bytes).
    #[inline(always)]
    fn room(&mut self) -> Result {
        if self.len > STAGE {
            self.flush()?;
        }
        Ok(())
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) -> Result {
        self.room()?;
        self.buf[self.len] = b;
        self.len += 1;
        Ok(())
    }

    /// Postcard's varint: 7 bits a byte, least significant first, the high bit set on every
    /// byte but the last.
    #[inline(always)]
    fn varint(&mut self, mut v: u64) -> Result {
        self.room()?;
        let mut at = self.len;
        while v >= 0x80 {
            self.buf[at] = v as u8 | 0x80;
            v >>= 7;
            at += 1;
        }
        self.buf[at] = v as u8;
        self.len = at + 1;
        Ok(())
    }

    /// [`Stream::varint`] of a `u128`: the groups above 64 bits one by one (what is left of
    /// a varint after a group is the varint of what is left of the value), then a `u64`'s.
    #[inline]
    fn varint128(&mut self, mut v: u128) -> Result {
        while v > u64::MAX as u128 {
            self.byte(v as u8 | 0x80)?;
            v >>= 7;
        }
        self.varint(v as u64)
    }

    /// Stages `bytes` (handing them on directly when they are at least a buffer).
    #[inline]
    fn extend(&mut self, bytes: &[u8]) -> Result {
        if self.len + bytes.len() > STAGE {
            self.flush()?;
            if bytes.len() >= STAGE {
                self.out.write(bytes).map_err(EncodeError::Out)?;
                self.handed += bytes.len() as u64;
                return Ok(());
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }

    /// A length, which postcard writes before a sequence's or a map's elements.
    #[inline]
    fn length(&mut self, len: Option<usize>) -> Result {
        let len = len.ok_or_else(|| {
            EncodeError::Value(
                "a sequence or map that does not know its length (the format writes the \
                 length first: its Serialize must give an exact size)"
                    .into(),
            )
        })?;
        self.varint(len as u64)
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        KEPT.with(|k| *k.borrow_mut() = Some(buf));
    }
}

/// Serializer methods that write one primitive: `method(type) => |stream, value| body`.
macro_rules! primitives {
    ($($method:ident($ty:ty) => $body:expr),* $(,)?) => {$(
        #[inline]
        fn $method(self, v: $ty) -> Result {
            let write: fn(&mut Stream<'_>, $ty) -> Result = $body;
            write(self, v)
        }
    )*};
}

/// Postcard's format (postcard 1.x's `Serializer`, byte for byte): integers wider than a byte
/// as varints (signed ones zigzagged first), floats as their little-endian bits, `bool`, `u8`
/// and `i8` as one byte, strings and byte strings as a length then the bytes, options as a
/// 0 or 1 byte then the value, enum variants as their index, sequences and maps as their
/// length then their elements, tuples and structs as their fields in order, units as
/// nothing.
impl ser::Serializer for &mut Stream<'_> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    primitives! {
        serialize_bool(bool) => |s, v| s.byte(v as u8),
        serialize_i8(i8) => |s, v| s.byte(v as u8),
        serialize_u8(u8) => |s, v| s.byte(v),
        // Signed integers are zigzagged: 0, -1, 1, -2, ... become 0, 1, 2, 3, ...
        serialize_i16(i16) => |s, v| s.varint(((v << 1) ^ (v >> 15)) as u16 as u64),
        serialize_i32(i32) => |s, v| s.varint(((v << 1) ^ (v >> 31)) as u32 as u64),
        serialize_i64(i64) => |s, v| s.varint(((v << 1) ^ (v >> 63)) as u64),
        serialize_i128(i128) => |s, v| s.varint128(((v << 1) ^ (v >> 127)) as u128),
        serialize_u16(u16) => |s, v| s.varint(v as u64),
        serialize_u32(u32) => |s, v| s.varint(v as u64),
        serialize_u64(u64) => |s, v| s.varint(v),
        serialize_u128(u128) => |s, v| s.varint128(v),
    }

    #[inline]
    fn serialize_f32(self, v: f32) -> Result {
        self.extend(&v.to_bits().to_le_bytes())
    }

    #[inline]
    fn serialize_f64(self, v: f64) -> Result {
        self.extend(&v.to_bits().to_le_bytes())
    }

    #[inline]
    fn serialize_char(self, v: char) -> Result {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result {
        self.serialize_bytes(v.as_bytes())
    }

    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result {
        self.varint(v.len() as u64)?;
        self.extend(v)
    }

    #[inline]
    fn serialize_none(self) -> Result {
        self.byte(0)
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result {
        self.byte(1)?;
        v.serialize(self)
    }

    #[inline]
    fn serialize_unit(self) -> Result {
        Ok(())
    }

    #[inline]
    fn serialize_unit_struct(self, _: &'static str) -> Result {
        Ok(())
    }

    #[inline]
    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> Result {
        self.varint(index as u64)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result {
        v.serialize(self)
    }

    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        v: &T,
    ) -> Result {
        self.varint(index as u64)?;
        v.serialize(self)
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self> {
        self.length(len)?;
        Ok(self)
    }

    #[inline]
    fn serialize_tuple(self, _: usize) -> Result<Self> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        self.varint(index as u64)?;
        Ok(self)
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self> {
        self.length(len)?;
        Ok(self)
    }

    #[inline]
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        self.varint(index as u64)?;
        Ok(self)
    }
}

/// Compound values: their parts in order, nothing before or after (lengths and variant
/// indexes are written when they start).
macro_rules! parts_in_order {
    ($($trait:ident :: $method:ident ($($name:ty)?)),* $(,)?) => {$(
        impl ser::$trait for &mut Stream<'_> {
            type Ok = ();
            type Error = EncodeError;

            #[inline]
            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $(_: $name,)?
                v: &T,
            ) -> Result {
                v.serialize(&mut **self)
            }

            #[inline]
            fn end(self) -> Result {
                Ok(())
            }
        }
    )*};
}

parts_in_order!(
    SerializeSeq::serialize_element(),
    SerializeTuple::serialize_element(),
    SerializeTupleStruct::serialize_field(),
    SerializeTupleVariant::serialize_field(),
    SerializeStruct::serialize_field(&'static str),
    SerializeStructVariant::serialize_field(&'static str),
);

impl ser::SerializeMap for &mut Stream<'_> {
    type Ok = ();
    type Error = EncodeError;

    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result {
        k.serialize(&mut **self)
    }

    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result {
        v.serialize(&mut **self)
    }

    #[inline]
    fn end(self) -> Result {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails every write after the first `ok` ones.
    struct FailAfter {
        ok: usize,
        bytes: Vec<u8>,
    }

    impl SectionOut for FailAfter {
        fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
            if self.ok == 0 {
                return Err("disk on fire".into());
            }
            self.ok -= 1;
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }
    }

    /// Whatever the split into staged buffers (values smaller and larger than a buffer, raw
    /// bytes between them), the stream's bytes are postcard's bytes of the same values.
    #[test]
    fn a_stream_writes_postcards_bytes() {
        let small = (7u32, u64::MAX, [3u8; 24], "text", Some(-5i64));
        let large: Vec<u32> = (0..100).map(|i| i * 1000).collect();
        let mut want = postcard::to_stdvec(&small).unwrap();
        want.extend_from_slice(&[1, 2, 3]);
        want.extend(postcard::to_stdvec(&large).unwrap());
        want.extend_from_slice(&[9; 200]);
        want.extend(postcard::to_stdvec(&small).unwrap());
        let mut out = Vec::new();
        let mut s = Stream::new(&mut out);
        s.put(&small).unwrap();
        s.raw(&[1, 2, 3]).unwrap();
        assert_eq!(
            s.position(),
            postcard::to_stdvec(&small).unwrap().len() as u64 + 3
        );
        s.put(&large).unwrap();
        s.raw(&[9; 200]).unwrap();
        s.put(&small).unwrap();
        assert_eq!(s.position(), want.len() as u64);
        s.finish().unwrap();
        assert_eq!(out, want);
    }

    /// A failing output's error is what `put` and `raw` return, not postcard's.
    #[test]
    fn a_failing_output_is_reported() {
        let large: Vec<u64> = (0..1000).collect();
        let mut out = FailAfter {
            ok: 2,
            bytes: Vec::new(),
        };
        {
            let mut s = Stream::new(&mut out);
            assert_eq!(s.put(&large).unwrap_err(), "disk on fire");
        }
        // What was handed on before the failure is the start of the value's bytes.
        let want = postcard::to_stdvec(&large).unwrap();
        assert!(out.bytes.len() >= 2 * STAGE && out.bytes.len() <= 2 * (STAGE + SLACK));
        assert_eq!(out.bytes, want[..out.bytes.len()]);
        let mut s = Stream::new(&mut out);
        assert_eq!(s.raw(&[0; 1000]).unwrap_err(), "disk on fire");
    }

    /// A value's own `Serialize` error, and a sequence of unknown length (postcard writes the
    /// length first), are encoding errors that say so.
    #[test]
    fn values_that_cannot_be_encoded_are_errors() {
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: ser::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
                Err(ser::Error::custom("no thanks"))
            }
        }
        struct Unknown;
        impl Serialize for Unknown {
            fn serialize<S: ser::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_seq((0..3u8).filter(|_| true))
            }
        }
        let mut out = Vec::new();
        let mut s = Stream::new(&mut out);
        assert_eq!(
            s.put(&(1u8, Refuses)).unwrap_err(),
            "cannot encode state: no thanks"
        );
        let e = s.put(&Unknown).unwrap_err();
        assert!(e.contains("does not know its length"), "{e}");
        assert!(postcard::to_stdvec(&Unknown).is_err());
    }

    /// A value of any shape serde has, built by the property test below.
    #[derive(Debug, Clone)]
    enum Value {
        Bool(bool),
        I8(i8),
        I16(i16),
        I32(i32),
        I64(i64),
        I128(i128),
        U8(u8),
        U16(u16),
        U32(u32),
        U64(u64),
        U128(u128),
        F32(f32),
        F64(f64),
        Char(char),
        Str(String),
        Bytes(Vec<u8>),
        Display(u64),
        Unit,
        UnitStruct,
        UnitVariant(u32),
        Option(Option<Box<Value>>),
        NewtypeStruct(Box<Value>),
        NewtypeVariant(u32, Box<Value>),
        Seq(Vec<Value>),
        Tuple(Vec<Value>),
        TupleStruct(Vec<Value>),
        TupleVariant(u32, Vec<Value>),
        Map(Vec<(Value, Value)>),
        Struct(Vec<Value>),
        StructVariant(u32, Vec<Value>),
        Array([u8; 24]),
    }

    impl Serialize for Value {
        fn serialize<S: ser::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            use ser::{
                SerializeMap, SerializeStruct, SerializeStructVariant, SerializeTuple,
                SerializeTupleStruct, SerializeTupleVariant,
            };
            const FIELDS: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];
            match self {
                Value::Bool(v) => s.serialize_bool(*v),
                Value::I8(v) => s.serialize_i8(*v),
                Value::I16(v) => s.serialize_i16(*v),
                Value::I32(v) => s.serialize_i32(*v),
                Value::I64(v) => s.serialize_i64(*v),
                Value::I128(v) => s.serialize_i128(*v),
                Value::U8(v) => s.serialize_u8(*v),
                Value::U16(v) => s.serialize_u16(*v),
                Value::U32(v) => s.serialize_u32(*v),
                Value::U64(v) => s.serialize_u64(*v),
                Value::U128(v) => s.serialize_u128(*v),
                Value::F32(v) => s.serialize_f32(*v),
                Value::F64(v) => s.serialize_f64(*v),
                Value::Char(v) => s.serialize_char(*v),
                Value::Str(v) => s.serialize_str(v),
                Value::Bytes(v) => s.serialize_bytes(v),
                Value::Display(v) => s.collect_str(v),
                Value::Unit => s.serialize_unit(),
                Value::UnitStruct => s.serialize_unit_struct("U"),
                Value::UnitVariant(i) => s.serialize_unit_variant("E", *i, "V"),
                Value::Option(None) => s.serialize_none(),
                Value::Option(Some(v)) => s.serialize_some(v),
                Value::NewtypeStruct(v) => s.serialize_newtype_struct("N", v),
                Value::NewtypeVariant(i, v) => s.serialize_newtype_variant("E", *i, "V", v),
                Value::Seq(vs) => s.collect_seq(vs),
                Value::Tuple(vs) => {
                    let mut t = s.serialize_tuple(vs.len())?;
                    vs.iter().try_for_each(|v| t.serialize_element(v))?;
                    t.end()
                }
                Value::TupleStruct(vs) => {
                    let mut t = s.serialize_tuple_struct("T", vs.len())?;
                    vs.iter().try_for_each(|v| t.serialize_field(v))?;
                    t.end()
                }
                Value::TupleVariant(i, vs) => {
                    let mut t = s.serialize_tuple_variant("E", *i, "V", vs.len())?;
                    vs.iter().try_for_each(|v| t.serialize_field(v))?;
                    t.end()
                }
                Value::Map(kvs) => {
                    let mut m = s.serialize_map(Some(kvs.len()))?;
                    for (k, v) in kvs {
                        m.serialize_key(k)?;
                        m.serialize_value(v)?;
                    }
                    m.end()
                }
                Value::Struct(vs) => {
                    let mut t = s.serialize_struct("S", vs.len())?;
                    for (v, name) in vs.iter().zip(FIELDS) {
                        t.serialize_field(name, v)?;
                    }
                    t.end()
                }
                Value::StructVariant(i, vs) => {
                    let mut t = s.serialize_struct_variant("E", *i, "V", vs.len())?;
                    for (v, name) in vs.iter().zip(FIELDS) {
                        t.serialize_field(name, v)?;
                    }
                    t.end()
                }
                Value::Array(a) => a.serialize(s),
            }
        }
    }

    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i8>().prop_map(Value::I8),
            any::<i16>().prop_map(Value::I16),
            any::<i32>().prop_map(Value::I32),
            any::<i64>().prop_map(Value::I64),
            any::<i128>().prop_map(Value::I128),
            any::<u8>().prop_map(Value::U8),
            any::<u16>().prop_map(Value::U16),
            any::<u32>().prop_map(Value::U32),
            any::<u64>().prop_map(Value::U64),
            any::<u128>().prop_map(Value::U128),
            any::<f32>().prop_map(Value::F32),
            any::<f64>().prop_map(Value::F64),
            any::<char>().prop_map(Value::Char),
            ".{0,80}".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..200).prop_map(Value::Bytes),
            any::<u64>().prop_map(Value::Display),
            Just(Value::Unit),
            Just(Value::UnitStruct),
            any::<u32>().prop_map(Value::UnitVariant),
            any::<[u8; 24]>().prop_map(Value::Array),
        ];
        leaf.prop_recursive(4, 96, 8, |inner| {
            let parts = || proptest::collection::vec(inner.clone(), 0..8);
            prop_oneof![
                proptest::option::of(inner.clone().prop_map(Box::new)).prop_map(Value::Option),
                inner
                    .clone()
                    .prop_map(|v| Value::NewtypeStruct(Box::new(v))),
                (any::<u32>(), inner.clone())
                    .prop_map(|(i, v)| Value::NewtypeVariant(i, Box::new(v))),
                parts().prop_map(Value::Seq),
                parts().prop_map(Value::Tuple),
                parts().prop_map(Value::TupleStruct),
                (any::<u32>(), parts()).prop_map(|(i, vs)| Value::TupleVariant(i, vs)),
                proptest::collection::vec((inner.clone(), inner.clone()), 0..6)
                    .prop_map(Value::Map),
                parts().prop_map(Value::Struct),
                (any::<u32>(), parts()).prop_map(|(i, vs)| Value::StructVariant(i, vs)),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The stream's bytes are postcard's, for values of every shape, staged through a
        /// small buffer (so flushes fall anywhere), after any number of bytes already
        /// staged.
        #[test]
        fn every_kind_of_value_is_encoded_as_postcard_encodes_it(
            values in proptest::collection::vec(value(), 1..4),
            before in 0..(STAGE + SLACK + 3),
        ) {
            let mut want = vec![0xAB; before];
            let mut out = Vec::new();
            let mut s = Stream::new(&mut out);
            s.raw(&want).unwrap();
            for v in &values {
                want.extend(postcard::to_stdvec(v).unwrap());
                s.put(v).unwrap();
                prop_assert_eq!(s.position(), want.len() as u64);
            }
            s.finish().unwrap();
            prop_assert_eq!(out, want);
        }
    }
}
