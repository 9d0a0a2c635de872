//! The `MSB_*` boot settings agentd reads from its environment (kernel command line words).
//!
//! Input: lines of `KEY=VALUE`, as the environment agentd gets; a one-digit key stands for the
//! variable of that index in `ALL_ENV_VARS`, so that mutations reach every parser. Each value
//! also goes through every parser on its own. Beyond "no panic", what parses must render and
//! parse back to the same settings (the module's promise), as command line words without white
//! space (the kernel splits on it).
#![no_main]

use std::fmt::Display;

use libfuzzer_sys::fuzz_target;
use msb_protocol::boot::{
    BootEnv, BootEnvError, DirMountSpec, FileMountSpec, Hostname, Ipv4Spec, Ipv6Spec, NetSpec,
    RlimitResource, RlimitSpec, TmpfsSpec, UserSpec, ALL_ENV_VARS,
};

fn key(k: &str) -> &str {
    match k.parse::<usize>() {
        Ok(i) if k.len() == 1 && i < ALL_ENV_VARS.len() => ALL_ENV_VARS[i],
        _ => k,
    }
}

/// A value that parses renders to text that parses to the same value.
fn round_trip<T: Display + PartialEq + std::fmt::Debug>(
    parsed: Result<T, BootEnvError>,
    parse: impl Fn(&str) -> Result<T, BootEnvError>,
) {
    if let Ok(v) = parsed {
        let text = v.to_string();
        assert_eq!(parse(&text).as_ref(), Ok(&v), "{text:?}");
    }
}

/// The same for the `;`-separated lists.
fn list_round_trip<T: PartialEq + std::fmt::Debug>(
    parsed: Result<Vec<T>, BootEnvError>,
    format: impl Fn(&[T]) -> String,
    parse: impl Fn(&str) -> Result<Vec<T>, BootEnvError>,
) {
    if let Ok(v) = parsed {
        let text = format(&v);
        assert_eq!(parse(&text).as_ref(), Ok(&v), "{text:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let vars: Vec<(&str, &str)> = text
        .lines()
        .map(|l| l.split_once('=').unwrap_or((l, "")))
        .map(|(k, v)| (key(k), v))
        .collect();

    for (_, v) in &vars {
        round_trip(Hostname::parse(v), Hostname::parse);
        round_trip(NetSpec::parse(v), NetSpec::parse);
        round_trip(Ipv4Spec::parse(v), Ipv4Spec::parse);
        round_trip(Ipv6Spec::parse(v), Ipv6Spec::parse);
        round_trip(UserSpec::parse(v), UserSpec::parse);
        list_round_trip(
            TmpfsSpec::parse_list(v),
            TmpfsSpec::format_list,
            TmpfsSpec::parse_list,
        );
        list_round_trip(
            RlimitSpec::parse_list(v),
            RlimitSpec::format_list,
            RlimitSpec::parse_list,
        );
        list_round_trip(
            DirMountSpec::parse_list(v),
            DirMountSpec::format_list,
            DirMountSpec::parse_list,
        );
        list_round_trip(
            FileMountSpec::parse_list(v),
            FileMountSpec::format_list,
            FileMountSpec::parse_list,
        );
        if let Some(r) = RlimitResource::from_name(v) {
            assert_eq!(RlimitResource::from_name(r.name()), Some(r));
        }
    }

    if let Ok(env) = BootEnv::from_vars(vars.iter().copied()) {
        assert_eq!(BootEnv::from_vars(env.to_vars()).as_ref(), Ok(&env));
        let words = env.to_cmdline_words();
        for w in &words {
            assert!(!w.contains(char::is_whitespace), "{w:?}");
        }
        let parsed = BootEnv::from_vars(words.iter().filter_map(|w| w.split_once('=')));
        assert_eq!(parsed.as_ref(), Ok(&env));
    }
});
