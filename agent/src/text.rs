//! Text from other users made safe to print.
//!
//! Process names, host names, command lines and everything read from a recording come from
//! whoever ran the process or made the file: a process may name itself `\x1b[2J\x1b[H` with
//! `prctl(PR_SET_NAME)` and clear the screen of whoever watches. So every text output (not the
//! JSON ones, where serde escapes what JSON needs and the value stays exact) shows such text
//! through [`escape`]; the HTML report through [`escape_html`], which also escapes HTML's own
//! characters.
//!
//! The style is that of a Rust string literal, so the result is unambiguous and can be read
//! back: `\t`, `\n`, `\r` for those three; `\xHH` (two lowercase hex digits) for every other C0
//! control (U+0000 to U+001F) and DEL (U+007F); `\u{HH}` for the C1 controls (U+0080 to U+009F,
//! which 8-bit terminals act on as ESC sequences); `\\` for the backslash itself. Everything
//! else, including all other non-ASCII text, is kept as it is.
//!
//! JSON keeps every value exact, but JSON itself only escapes the C0 controls: a name holding
//! a C1 control would reach a terminal showing `--json` as a raw control character. So JSON is
//! written through [`write_json`], which also escapes DEL and C1 (`\u009b`): the same value to
//! any JSON reader, inert on a terminal.

use std::{
    borrow::Cow,
    fmt::Write as _,
    io::{self, Write},
};

use serde::Serialize;

/// True for the characters [`escape`] rewrites.
fn needs_escape(c: char) -> bool {
    // `char::is_control` is exactly C0, DEL and C1 (the Unicode category Cc).
    c.is_control() || c == '\\'
}

/// `s` with control characters and backslashes escaped (see the module documentation);
/// borrowed, without copying, when there is nothing to escape, which is the usual case.
pub fn escape(s: &str) -> Cow<'_, str> {
    let Some(first) = s.find(needs_escape) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            // Writing to a String cannot fail.
            c if u32::from(c) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// serde_json's compact output, with DEL and the C1 controls in strings escaped as well.
struct InertControls;

impl serde_json::ser::Formatter for InertControls {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // C1 controls are U+0080..U+009F, encoded C2 80..C2 9F: no 0x7f or 0xc2 byte, nothing
        // to do (the usual case, checked without decoding).
        if !fragment.bytes().any(|b| b == 0x7f || b == 0xc2) {
            return writer.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            // serde_json escaped the C0 controls, and fragments hold none; what is left of the
            // controls is DEL and C1.
            if c.is_control() {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                write!(writer, "\\u{:04x}", u32::from(c))?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// `value` as compact JSON (what `serde_json::to_writer` writes), with no control character
/// left raw in its strings.
pub fn write_json<W: Write, T: Serialize + ?Sized>(out: W, value: &T) -> io::Result<()> {
    let mut ser = serde_json::Serializer::with_formatter(out, InertControls);
    value.serialize(&mut ser).map_err(io::Error::from)
}

/// `s` safe inside HTML text and attribute values: control characters shown as `\xHH` (see
/// above), then `& < > " '` as character references.
pub fn escape_html(s: &str) -> String {
    let shown: Cow<'_, str> = escape(s);
    let mut out = String::with_capacity(shown.len());
    for c in shown.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        for s in [
            "",
            "curl",
            "java-worker 7",
            "naïve café",
            "日本語",
            "(before start)",
        ] {
            assert!(matches!(escape(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
    }

    #[test]
    fn every_c0_control_and_del_is_escaped() {
        for b in (0u8..0x20).chain([0x7f]) {
            let c = char::from(b);
            let want = match b {
                b'\t' => "\\t".to_owned(),
                b'\n' => "\\n".to_owned(),
                b'\r' => "\\r".to_owned(),
                _ => format!("\\x{b:02x}"),
            };
            let got = escape(&format!("a{c}b")).into_owned();
            assert_eq!(got, format!("a{want}b"), "byte {b:#04x}");
            assert!(!got.chars().any(char::is_control), "byte {b:#04x}: {got:?}");
        }
        assert_eq!(escape("\x1b"), "\\x1b");
        assert_eq!(escape("\0"), "\\x00");
        assert_eq!(escape("\x7f"), "\\x7f");
    }

    #[test]
    fn every_c1_control_is_escaped() {
        for cp in 0x80u32..0xa0 {
            let c = char::from_u32(cp).expect("C1 is a valid char");
            let got = escape(&format!("x{c}y")).into_owned();
            assert_eq!(got, format!("x\\u{{{cp:x}}}y"), "U+{cp:04X}");
            assert!(!got.chars().any(char::is_control), "U+{cp:04X}: {got:?}");
        }
        // The 8-bit CSI, which some terminals take as ESC [.
        assert_eq!(escape("\u{9b}2J"), "\\u{9b}2J");
    }

    #[test]
    fn valid_non_ascii_text_is_kept() {
        // U+00A0 (no-break space) is the first character after C1: kept.
        for s in ["\u{a0}", "é", "ß", "€", "日本", "🦀", "\u{fffd}"] {
            assert_eq!(escape(s), s);
        }
        assert_eq!(escape("é\n日"), "é\\n日");
    }

    #[test]
    fn the_backslash_is_escaped_so_the_result_is_unambiguous() {
        assert_eq!(escape("a\\b"), "a\\\\b");
        // A name that spells an escape differs from one that holds the character.
        assert_eq!(escape("\\x1b"), "\\\\x1b");
        assert_ne!(escape("\\x1b"), escape("\x1b"));
        assert_ne!(escape("\\n"), escape("\n"));
    }

    #[test]
    fn json_escapes_every_control_and_keeps_the_value() {
        let all: String = (0u32..0x100).filter_map(char::from_u32).collect();
        let value = serde_json::json!({ "comm": all, "n": 1, "list": ["\u{9b}[2J", "é"] });
        let mut out = Vec::new();
        write_json(&mut out, &value).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(!text.contains(char::is_control), "{text:?}");
        assert!(text.contains(r"\u009b[2J"), "{text}");
        assert!(text.contains(r"\u007f\u0080"), "{text}");
        assert!(text.contains("\u{a0}¡"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(back, value);
        // Without controls, exactly what serde_json writes.
        let plain = serde_json::json!({ "comm": "curl", "x": [1.5, null, "naïve \\ \"q\""] });
        let mut out = Vec::new();
        write_json(&mut out, &plain).expect("write");
        assert_eq!(out, serde_json::to_vec(&plain).expect("json"));
    }

    #[test]
    fn the_hostile_name_of_the_tests() {
        assert_eq!(escape("\x1b[2J\x1b[H\nFAKE\r"), "\\x1b[2J\\x1b[H\\nFAKE\\r");
    }

    #[test]
    fn html_gets_controls_and_its_own_characters_escaped() {
        assert_eq!(
            escape_html("<a href='x' title=\"y\">&\x1b[2J"),
            r"&lt;a href=&#39;x&#39; title=&quot;y&quot;&gt;&amp;\x1b[2J"
        );
        assert_eq!(escape_html("plain"), "plain");
    }
}
