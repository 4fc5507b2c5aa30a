//! Which character encoding an HTML body is read in, as a browser decides
//! it (WHATWG HTML §13.2.3.2, "Determining the character encoding", and
//! the Encoding Standard's "decode"): a byte-order mark wins, then the
//! `charset` of the `Content-Type`, then a `<meta charset>` in the page
//! (which `lol_html` follows itself), then UTF-8.
//!
//! `lol_html` reads ASCII-compatible encodings only. A body in UTF-16 (the
//! BOM, or `charset=utf-16le`), or ISO-2022-JP, is decoded to UTF-8 by
//! `encoding_rs` first, chunk by chunk as it streams in.

use encoding_rs::{CoderResult, Decoder, Encoding};
use lol_html::AsciiCompatibleEncoding;

/// How a body's bytes reach `lol_html`.
pub enum Reading {
    /// As they are, which `lol_html` decodes in this encoding; with
    /// `adjust`, it switches to the encoding of a `<meta charset>` in the
    /// page (only when the transport named none, as HTML says).
    Direct { encoding: AsciiCompatibleEncoding, adjust: bool },
    /// Decoded to UTF-8 first.
    Transcoded(Decoder),
    /// Not at all: the encoding is one whose content browsers do not show
    /// (the Encoding Standard's `replacement`, for labels such as
    /// `iso-2022-kr`, which decode to a single U+FFFD). `label` is the
    /// declared charset.
    Refused { label: String },
}

/// The longest byte-order mark (UTF-8's): how much of a body's start is
/// needed to tell one.
pub const BOM_BYTES: usize = 3;

/// How to read a body that starts with `head` (at least [`BOM_BYTES`] of
/// it, unless the body is shorter), served as `content_type`. Returns the
/// reading and the length of the byte-order mark to skip.
pub fn reading(head: &[u8], content_type: Option<&str>) -> (Reading, usize) {
    let (encoding, bom, declared) = match Encoding::for_bom(head) {
        Some((encoding, bom)) => (Some(encoding), bom, true),
        None => match charset(content_type) {
            Some(label) => match Encoding::for_label(label.as_bytes()) {
                Some(encoding) if encoding == encoding_rs::REPLACEMENT => {
                    return (Reading::Refused { label }, 0);
                }
                // An unknown label is ignored, as a browser ignores it.
                found => (found, 0, found.is_some()),
            },
            None => (None, 0, false),
        },
    };
    let encoding = encoding.unwrap_or(encoding_rs::UTF_8);
    let reading = match AsciiCompatibleEncoding::new(encoding) {
        Some(encoding) => Reading::Direct { encoding, adjust: !declared },
        None => Reading::Transcoded(encoding.new_decoder_without_bom_handling()),
    };
    (reading, bom)
}

/// The `charset` parameter of a `Content-Type` value, if any.
fn charset(content_type: Option<&str>) -> Option<String> {
    let parsed: mime::Mime = content_type?.trim().parse().ok()?;
    parsed.get_param(mime::CHARSET).map(|c| c.as_str().trim().to_owned())
}

/// `bytes` decoded to UTF-8 by `decoder` (malformed sequences become
/// U+FFFD), with `last` on the body's last chunk.
pub fn transcode(decoder: &mut Decoder, bytes: &[u8], last: bool) -> String {
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 2 + 16);
    let mut input = bytes;
    loop {
        let (result, read, _) = decoder.decode_to_string(input, &mut out, last);
        input = &input[read..];
        match result {
            CoderResult::InputEmpty => return out,
            CoderResult::OutputFull => out.reserve(input.len() * 3 + 16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(reading: &Reading) -> String {
        match reading {
            Reading::Direct { encoding, adjust } => {
                format!("{} adjust={adjust}", <&Encoding>::from(*encoding).name())
            }
            Reading::Transcoded(decoder) => format!("{} transcoded", decoder.encoding().name()),
            Reading::Refused { label } => format!("refused {label}"),
        }
    }

    #[test]
    fn a_byte_order_mark_wins_over_the_declared_charset() {
        let cases: [(&[u8], Option<&str>, &str, usize); 7] = [
            (b"\xFF\xFE<\0", Some("text/html; charset=utf-16"), "UTF-16LE transcoded", 2),
            (b"\xFE\xFF\0<", Some("text/html; charset=utf-16"), "UTF-16BE transcoded", 2),
            (b"\xEF\xBB\xBF<a", Some("text/html; charset=utf-16"), "UTF-8 adjust=false", 3),
            (b"<a ", Some("text/html; charset=utf-16le"), "UTF-16LE transcoded", 0),
            (b"<a ", Some("text/html; charset=\"Windows-1252\""), "windows-1252 adjust=false", 0),
            (b"<a ", Some("text/html"), "UTF-8 adjust=true", 0),
            (b"<a ", Some("text/html; charset=no-such-charset"), "UTF-8 adjust=true", 0),
        ];
        for (head, content_type, expected, bom) in cases {
            let (reading, skip) = reading(head, content_type);
            assert_eq!((name(&reading).as_str(), skip), (expected, bom), "{content_type:?}");
        }
        let (refused, _) = reading(b"<a ", Some("text/html; charset=ISO-2022-KR"));
        assert_eq!(name(&refused), "refused iso-2022-kr", "the label as mime gives it");
    }

    #[test]
    fn utf_16_is_decoded_across_chunks_even_mid_character() {
        let text = "<a href=\"/é\">ü</a>";
        let bytes: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let (Reading::Transcoded(mut decoder), _) = reading(b"<\0a\0", Some("text/html; charset=utf-16le"))
        else {
            panic!("UTF-16 is transcoded")
        };
        let mut out = String::new();
        let chunks: Vec<&[u8]> = bytes.chunks(3).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            out.push_str(&transcode(&mut decoder, chunk, i + 1 == chunks.len()));
        }
        assert_eq!(out, text);
    }
}
