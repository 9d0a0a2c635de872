//! The envelope `{ "v": uint, "t": text, "p": bytes }`, read and written with ciborium's
//! low-level API.
//!
//! The envelope sits on the stdout path of every exec, so it is handled without serde: writing
//! emits the three headers around the payload in one pass, and reading hands `p` back as a
//! zero-copy slice of the frame body. Only definite-length items are accepted, each key exactly
//! once, with nothing after the map.

use bytes::Bytes;
use ciborium_ll::{Decoder, Encoder, Header};

/// Appends the envelope to `out`, an in-memory buffer.
pub(crate) fn encode<W: ciborium_io::Write>(version: u32, kind: &str, payload: &[u8], out: W) {
    let mut enc = Encoder::from(out);
    // Only in-memory buffers are passed here (`Vec<u8>`, [`BytesMutWriter`]): writes cannot fail.
    let _ = enc.push(Header::Map(Some(3)));
    let _ = enc.text("v", None);
    let _ = enc.push(Header::Positive(u64::from(version)));
    let _ = enc.text("t", None);
    let _ = enc.text(kind, None);
    let _ = enc.text("p", None);
    let _ = enc.bytes(payload, None);
}

/// Lets the encoder append straight into a codec's output buffer.
pub(crate) struct BytesMutWriter<'a>(pub &'a mut bytes::BytesMut);

impl ciborium_io::Write for BytesMutWriter<'_> {
    type Error = std::convert::Infallible;

    fn write_all(&mut self, data: &[u8]) -> Result<(), Self::Error> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A decoded envelope; `payload` shares the frame body's memory.
pub(crate) struct Envelope {
    pub version: u32,
    pub kind: String,
    pub payload: Bytes,
}

/// Reads the envelope from a frame body. The error text says what was found instead.
pub(crate) fn decode(body: &Bytes) -> Result<Envelope, String> {
    let mut cursor = Cursor { body, base: 0 };
    match cursor.header()? {
        Header::Map(Some(3)) => {}
        other => {
            return Err(format!(
                "expected a map of 3 entries, found {}",
                describe(other)
            ))
        }
    }
    let (mut version, mut kind, mut payload) = (None, None, None);
    for _ in 0..3 {
        let key = cursor.short_text()?;
        let duplicate = match key.as_str() {
            "v" => version.replace(cursor.version()?).is_some(),
            "t" => kind.replace(cursor.text()?).is_some(),
            "p" => payload.replace(cursor.bytes()?).is_some(),
            other => return Err(format!("unexpected key {other:?} (expected v, t, p)")),
        };
        if duplicate {
            return Err(format!("key {key:?} appears twice"));
        }
    }
    if cursor.base != body.len() {
        return Err(format!(
            "{} trailing bytes after the map",
            body.len() - cursor.base
        ));
    }
    match (version, kind, payload) {
        (Some(version), Some(kind), Some(payload)) => Ok(Envelope {
            version,
            kind,
            payload,
        }),
        _ => Err("missing one of the keys v, t, p".to_owned()),
    }
}

/// A position in the body; a fresh ciborium decoder is made at each step so that byte strings
/// can be skipped without copying.
struct Cursor<'a> {
    body: &'a Bytes,
    base: usize,
}

impl Cursor<'_> {
    fn header(&mut self) -> Result<Header, String> {
        let mut dec = Decoder::from(&self.body[self.base..]);
        let header = dec
            .pull()
            .map_err(|_| "truncated or invalid CBOR item".to_owned())?;
        self.base += dec.offset();
        Ok(header)
    }

    /// A definite-length byte or text item of `len` bytes starting here.
    fn span(&mut self, len: usize) -> Result<std::ops::Range<usize>, String> {
        let start = self.base;
        let end = start
            .checked_add(len)
            .filter(|end| *end <= self.body.len())
            .ok_or_else(|| format!("item of {len} bytes runs past the end of the body"))?;
        self.base = end;
        Ok(start..end)
    }

    fn text(&mut self) -> Result<String, String> {
        match self.header()? {
            Header::Text(Some(len)) => {
                let range = self.span(len)?;
                String::from_utf8(self.body[range].to_vec())
                    .map_err(|_| "text is not UTF-8".to_owned())
            }
            other => Err(format!("expected a text string, found {}", describe(other))),
        }
    }

    fn short_text(&mut self) -> Result<String, String> {
        let start = self.base;
        let text = self.text()?;
        if self.base - start > 16 {
            return Err("map key longer than expected".to_owned());
        }
        Ok(text)
    }

    fn bytes(&mut self) -> Result<Bytes, String> {
        match self.header()? {
            Header::Bytes(Some(len)) => {
                let range = self.span(len)?;
                Ok(self.body.slice(range))
            }
            other => Err(format!(
                "\"p\" must be a byte string, found {}",
                describe(other)
            )),
        }
    }

    fn version(&mut self) -> Result<u32, String> {
        match self.header()? {
            Header::Positive(v) => {
                u32::try_from(v).map_err(|_| format!("\"v\" {v} is out of range"))
            }
            other => Err(format!(
                "\"v\" must be an unsigned integer, found {}",
                describe(other)
            )),
        }
    }
}

fn describe(h: Header) -> String {
    match h {
        Header::Positive(n) => format!("the integer {n}"),
        Header::Negative(_) => "a negative integer".to_owned(),
        Header::Float(_) => "a float".to_owned(),
        Header::Simple(_) => "a simple value (bool/null)".to_owned(),
        Header::Tag(_) => "a tag".to_owned(),
        Header::Break => "a break".to_owned(),
        Header::Bytes(_) => "a byte string".to_owned(),
        Header::Text(_) => "a text string".to_owned(),
        Header::Array(_) => "an array".to_owned(),
        Header::Map(Some(n)) => format!("a map of {n} entries"),
        Header::Map(None) => "an indefinite-length map".to_owned(),
    }
}
