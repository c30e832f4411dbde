//! `chorus node --config FILE` (or `CHORUS_CONFIG`): a TOML table of the node's options, keys
//! being the long option names (`listen`, `api`, `heartbeat-ms` or `heartbeat_ms`, …), values a
//! string, an integer, a boolean or an array of them for options that repeat.
//!
//! Precedence: an option given on the command line wins, then its environment variable, then
//! the file, then the default. The file is turned into command-line options inserted after
//! `node` for each key that neither of the first two sets, so clap checks its values exactly as
//! it checks typed ones (an unknown key is refused, naming the known ones).

use std::ffi::OsString;

use anyhow::{Context, Result, anyhow, bail};
use clap::CommandFactory;

/// The arguments with the config file's options inserted (unchanged without `node` or a file).
pub fn with_config_file(mut args: Vec<OsString>) -> Result<Vec<OsString>> {
    let cli = crate::Cli::command();
    // Global options that take a value (`--data-dir DIR`, `--log-format json`) may come before
    // `node`: their values are not the subcommand.
    let valued: Vec<String> = cli
        .get_arguments()
        .filter(|a| a.get_action().takes_values())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let Some(at) = node_position(&args, &valued) else {
        return Ok(args);
    };
    let rest: Vec<String> = args[at + 1..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let path = match option_value(&rest, "config") {
        Some(p) => p,
        None => match std::env::var("CHORUS_CONFIG") {
            Ok(p) if !p.is_empty() => p,
            _ => return Ok(args),
        },
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--config {path}: cannot read it"))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("--config {path}: not a TOML table"))?;
    let node = cli
        .find_subcommand("node")
        .ok_or_else(|| anyhow!("no node subcommand"))?;
    let known: Vec<&str> = node
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| *l != "config" && *l != "help")
        .collect();
    let mut extra: Vec<OsString> = vec![];
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = node
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config" && long != "help")
        else {
            bail!(
                "--config {path}: unknown option {key:?}; the options are {}",
                known.join(", ")
            );
        };
        let given = rest
            .iter()
            .any(|a| *a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
        let in_env = arg
            .get_env()
            .is_some_and(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
        if given || in_env {
            continue;
        }
        let flag = OsString::from(format!("--{long}"));
        // `--name=value`: a value that starts with `-` stays a value.
        let with = |v: String| OsString::from(format!("--{long}={v}"));
        let scalar = |v: &toml::Value| -> Result<String> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                other => bail!("--config {path}: {key} = {other}: give a string or an integer"),
            }
        };
        match value {
            toml::Value::Boolean(true) => extra.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    extra.push(with(scalar(item)?));
                }
            }
            v => extra.push(with(scalar(v)?)),
        }
    }
    args.splice(at + 1..at + 1, extra);
    Ok(args)
}

/// Where `node` is: the first word that is neither an option nor the value of one of the
/// `valued` options before it.
fn node_position(args: &[OsString], valued: &[String]) -> Option<usize> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if valued.iter().any(|v| *v == a) {
            i += 2;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            return (a == "node").then_some(i);
        }
    }
    None
}

/// The value of `--name VALUE` or `--name=VALUE` among `args`.
fn option_value(args: &[String], name: &str) -> Option<String> {
    let flag = format!("--{name}");
    let prefix = format!("--{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&prefix).map(String::from)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn the_file_fills_what_the_command_line_leaves_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "listen = [\"/ip4/0.0.0.0/tcp/4001\", \"/ip6/::/tcp/4001\"]\n\
             api = \"0.0.0.0:8080\"\nheartbeat_ms = 500\nlight = false\nanchor = true\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let out = strings(
            with_config_file(args(&[
                "chorus",
                "--data-dir",
                "d",
                "node",
                "--config",
                f,
                "--api",
                "127.0.0.1:9000",
            ]))
            .unwrap(),
        );
        assert_eq!(&out[..4], ["chorus", "--data-dir", "d", "node"]);
        let inserted = &out[4..out.len() - 4];
        assert!(
            !inserted.contains(&"--api".to_string()),
            "the command line wins: {out:?}"
        );
        assert!(!inserted.contains(&"--light".to_string()));
        assert_eq!(inserted.len(), 4, "{out:?}");
        for arg in [
            "--listen=/ip4/0.0.0.0/tcp/4001",
            "--listen=/ip6/::/tcp/4001",
            "--heartbeat-ms=500",
        ] {
            assert!(inserted.contains(&arg.to_string()), "{arg} in {out:?}");
        }
        assert!(inserted.contains(&"--anchor".to_string()));
        // What clap makes of it.
        let cli = <crate::Cli as clap::Parser>::try_parse_from(&out).unwrap();
        let crate::Command::Node(n) = cli.command else {
            panic!("not node")
        };
        assert_eq!(n.api, "127.0.0.1:9000");
        assert_eq!(n.heartbeat_ms, 500);
        assert_eq!(n.listen.len(), 2);
        assert!(n.anchor && !n.light);

        std::fs::write(&file, "listen_on = \"/ip4/0.0.0.0/tcp/1\"\n").unwrap();
        let err = with_config_file(args(&["chorus", "node", "--config", f])).unwrap_err();
        assert!(
            err.to_string().contains("unknown option \"listen_on\""),
            "{err}"
        );
        assert!(err.to_string().contains("listen, bootstrap"), "{err}");

        let untouched = args(&["chorus", "status"]);
        assert_eq!(with_config_file(untouched.clone()).unwrap(), untouched);
    }

    #[test]
    fn a_global_option_with_a_value_before_node_hides_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "bootstrap = \"-odd-but-a-value\"\n").unwrap();
        let f = file.to_str().unwrap();
        let out = strings(
            with_config_file(args(&[
                "chorus",
                "--log-format",
                "json",
                "node",
                "--config",
                f,
            ]))
            .unwrap(),
        );
        assert!(
            out.contains(&"--bootstrap=-odd-but-a-value".to_string()),
            "{out:?}"
        );
    }
}
