//! The command ward and the validity rule of intents.
//!
//! The original's ward (ai_parser.py:128) drops a command that starts with `py ` / `@py `, is
//! `py` / `@py`, or contains `evennia.` or `caller.`. Chorus applies it everywhere commands
//! appear: emissaries strip refused commands before publishing, and the election treats an
//! intent that still carries one as invalid.

use ipld_core::ipld::Ipld;

/// Whether the ward refuses a command.
pub fn refused(command: &str) -> bool {
    let c = command.trim().to_ascii_lowercase();
    c == "py"
        || c == "@py"
        || c.starts_with("py ")
        || c.starts_with("@py ")
        || c.contains("evennia.")
        || c.contains("caller.")
}

/// The commands of an intent body if it is valid for the election: `commands` is a list of
/// strings, or (without `commands`) `text` is a JSON array of strings; and no command is
/// refused by the ward.
pub fn valid_commands(body: &Ipld) -> Option<Vec<String>> {
    let Ipld::Map(m) = body else { return None };
    let commands: Vec<String> = match m.get("commands") {
        Some(Ipld::List(items)) => items
            .iter()
            .map(|i| match i {
                Ipld::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
        None => match m.get("text") {
            Some(Ipld::String(t)) => serde_json::from_str::<Vec<String>>(t.trim()).ok()?,
            _ => return None,
        },
    };
    if commands.iter().any(|c| refused(c)) {
        return None;
    }
    Some(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ward_matches_the_original() {
        for bad in [
            "py",
            "@py",
            "py import os",
            "@py self.delete()",
            "say evennia.x",
            "caller.msg",
        ] {
            assert!(refused(bad), "{bad}");
        }
        for ok in ["say hello", "go north", "pyramid", "look at python"] {
            assert!(!refused(ok), "{ok}");
        }
    }

    #[test]
    fn intent_validity() {
        let text = |t: &str| {
            Ipld::Map(
                [("text".to_string(), Ipld::String(t.into()))]
                    .into_iter()
                    .collect(),
            )
        };
        assert_eq!(
            valid_commands(&text(r#"["say hi","go north"]"#))
                .unwrap()
                .len(),
            2
        );
        assert!(valid_commands(&text("say hi")).is_none());
        assert!(valid_commands(&text(r#"["say hi", 3]"#)).is_none());
        assert!(valid_commands(&text(r#"["@py evil()"]"#)).is_none());
    }
}
