//! The output contract of an emissary: a JSON array of command strings.
//!
//! Servers are asked for it with a JSON schema ([`json_schema`]); the embedded model is held to
//! it by a grammar ([`GBNF`]), whose bounds also make every grammar-complete answer fit in
//! [`MAX_COMMAND_TOKENS`]; whatever a backend returns is checked by [`parse`].

use serde_json::{Value, json};

/// Commands in one answer (grammar and schema bound).
pub const MAX_COMMANDS: usize = 3;
/// Characters in one command (grammar and schema bound).
pub const MAX_COMMAND_CHARS: usize = 48;
/// Tokens a command answer may take. Every token of the grammar's language is at least one
/// character, and the longest sentence it accepts is `2 + 3·(48 + 2) + 2·2` = 156 characters,
/// so generation always ends inside this budget with a complete array.
pub const MAX_COMMAND_TOKENS: u32 = 192;
/// Bytes of text [`parse`] looks at.
pub const MAX_PARSE_BYTES: usize = 16 * 1024;

/// GBNF (llama.cpp grammar) of a JSON array of 1..=3 command strings of 1..=48 printable
/// ASCII characters other than `"`, `\`, brackets, braces and backquote (so no escapes, no
/// JSON-looking noise inside a command, and every token is ≥ 1 character of the answer: the
/// token bound above holds).
pub const GBNF: &str = r#"root ::= "[" cmd ( ", " cmd ){0,2} "]"
cmd ::= "\"" ch{1,48} "\""
ch ::= [\x20\x21\x23-\x5a\x5e\x5f\x61-\x7a\x7c\x7e]
"#;

/// The JSON schema of the same contract (OpenAI `response_format`, Ollama `format`).
pub fn json_schema() -> Value {
    json!({
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": MAX_COMMAND_CHARS},
        "minItems": 1,
        "maxItems": MAX_COMMANDS,
    })
}

/// Why a text is not a command array.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no JSON array in the answer")]
    NoArray,
    #[error("the array is not a list of strings: {0}")]
    NotStrings(String),
    #[error("the array is empty")]
    Empty,
    #[error("the answer is longer than {MAX_PARSE_BYTES} bytes")]
    TooLong,
}

/// Extracts the first JSON array of strings from a model's text: the whole text, or the first
/// `[` … matching `]` inside it (models wrap answers in prose and code fences). Commands are
/// trimmed; empty ones dropped.
pub fn parse(text: &str) -> Result<Vec<String>, ParseError> {
    if text.len() > MAX_PARSE_BYTES {
        return Err(ParseError::TooLong);
    }
    let candidate = match serde_json::from_str::<Value>(text.trim()) {
        Ok(v @ Value::Array(_)) => v,
        _ => first_array(text).ok_or(ParseError::NoArray)?,
    };
    let Value::Array(items) = candidate else {
        return Err(ParseError::NoArray);
    };
    let mut out = vec![];
    for i in items {
        match i {
            Value::String(s) if !s.trim().is_empty() => out.push(s.trim().to_string()),
            Value::String(_) => {}
            other => return Err(ParseError::NotStrings(other.to_string())),
        }
    }
    if out.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(out)
}

/// The first balanced `[…]` that parses as JSON, scanning string literals correctly.
fn first_array(text: &str) -> Option<Value> {
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(off) = text[start..].find('[') {
        let open = start + off;
        let (mut depth, mut in_str, mut esc) = (0usize, false, false);
        for (i, &b) in bytes.iter().enumerate().skip(open) {
            if in_str {
                match (esc, b) {
                    (true, _) => esc = false,
                    (false, b'\\') => esc = true,
                    (false, b'"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'[' => depth += 1,
                b']' => {
                    depth -= 1;
                    if depth == 0 {
                        if let Ok(v) = serde_json::from_str::<Value>(&text[open..=i]) {
                            return Some(v);
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
        start = open + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bare_wrapped_and_fenced_arrays() {
        assert_eq!(parse(r#"["say hi", "look"]"#).unwrap(), ["say hi", "look"]);
        assert_eq!(
            parse("Sure! ```json\n[\"go north\"]\n``` done").unwrap(),
            ["go north"]
        );
        assert_eq!(
            parse(r#"x ["b]"] y ["c"]"#).unwrap(),
            ["b]"],
            "brackets in strings"
        );
        assert_eq!(
            parse(r#"[oops ["d"]"#).unwrap(),
            ["d"],
            "first array that is JSON"
        );
    }

    #[test]
    fn rejects_what_is_not_a_command_array() {
        assert_eq!(parse("no array here"), Err(ParseError::NoArray));
        assert_eq!(parse(r#"[1, 2]"#), Err(ParseError::NotStrings("1".into())));
        assert_eq!(parse(r#"["  "]"#), Err(ParseError::Empty));
        assert_eq!(parse(r#"{"a": ["x"]}"#).unwrap(), ["x"]);
        assert_eq!(parse(&"[".repeat(20_000)), Err(ParseError::TooLong));
        assert_eq!(parse("[[[["), Err(ParseError::NoArray));
    }

    #[test]
    fn the_token_budget_covers_the_longest_sentence_of_the_grammar() {
        let longest = 2 + MAX_COMMANDS * (MAX_COMMAND_CHARS + 2) + (MAX_COMMANDS - 1) * 2;
        assert!(longest as u32 <= MAX_COMMAND_TOKENS, "{longest}");
    }
}
