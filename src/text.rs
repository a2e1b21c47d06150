//! Text from rules and cases on its way out: checked before it is sent to the server, and
//! made harmless before it is printed on a terminal; and where in a file a TOML error is.

/// Characters that make text lie about itself on a screen: direction overrides and
/// isolates, and invisible zero-width ones.
fn is_deceptive(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}'
        | '\u{061C}' | '\u{FEFF}')
}

/// Checks text a rule wants sent: at most `max` characters, no control characters (a
/// multi-line text may hold newlines and tabs), nothing deceptive.
pub fn check_text(what: &str, text: &str, max: usize, multiline: bool) -> Result<(), String> {
    let chars = text.chars().count();
    if chars > max {
        return Err(format!(
            "{what} is {chars} characters long; the limit is {max}"
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|&c| is_deceptive(c) || (c.is_control() && !(multiline && (c == '\n' || c == '\t'))))
    {
        return Err(format!(
            "{what} holds the character U+{:04X}, which is not allowed (control, direction or zero-width characters)",
            c as u32
        ));
    }
    Ok(())
}

/// Text for a terminal: control, direction and zero-width characters shown as `\u{..}`
/// escapes (newlines as `\n`), so data cannot rewrite the screen.
pub fn for_terminal(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || is_deceptive(c)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_deceptive(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// toml's message plus the line and column it points at, so the user can jump there.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_checks() {
        assert!(check_text("tag", "vip", 128, false).is_ok());
        assert!(
            check_text("tag", "a\u{202E}b", 128, false)
                .unwrap_err()
                .contains("U+202E")
        );
        assert!(
            check_text("tag", "a\0", 128, false)
                .unwrap_err()
                .contains("U+0000")
        );
        assert!(check_text("tag", "a\nb", 128, false).is_err());
        assert!(check_text("comment", "a\nb\tc", 10, true).is_ok());
        assert!(check_text("comment", "\u{1b}[2K", 10, true).is_err());
        assert!(
            check_text("tag", &"x".repeat(129), 128, false)
                .unwrap_err()
                .contains("limit is 128")
        );
    }

    #[test]
    fn terminal_text_is_escaped() {
        assert_eq!(for_terminal("plain"), "plain");
        assert_eq!(for_terminal("\r\u{1b}[2Kx\0"), "\\u{d}\\u{1b}[2Kx\\u{0}");
        assert_eq!(for_terminal("a\u{202E}b\nc"), "a\\u{202e}b\\nc");
    }
}
