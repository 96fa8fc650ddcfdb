//! Showing text that came from outside (model files, requests) in messages: control characters are
//! escaped, so that a crafted metadata key or template cannot move the cursor, recolour or clear the
//! user's terminal, or forge extra log lines.

/// `s` with every control character (C0, DEL, C1) written as an escape: `\n`, `\r`, `\t`, `\x1b`,
/// `\u{9b}`; everything else as it is.
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn escapes_every_control_character_and_nothing_else() {
        assert_eq!(escape_controls("plain — ünïcode ok"), "plain — ünïcode ok");
        assert_eq!(
            escape_controls("a\x1b[31mred\r\nb\tc\x07\x7f\u{9b}2J"),
            "a\\x1b[31mred\\r\\nb\\tc\\x07\\x7f\\u{9b}2J"
        );
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            assert!(!escape_controls(&c.to_string()).chars().any(char::is_control), "{c:?}");
        }
    }
}
