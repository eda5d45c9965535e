//! Arbitrary bytes as a Home Assistant config folder, through the loader
//! `check` and `run` use: `configuration.yaml`, and after the first 0xFF byte
//! a second file the first may `!include` (`included.yaml`), `!secret` from
//! (`secrets.yaml` gets the same bytes) or merge as a package. The loader
//! must report, never panic (libFuzzer's panic hook aborts even on a panic
//! the loader would catch), and must stay within its limits.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn folder() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let dir = folder().path();
    let (main, second) = match data.iter().position(|b| *b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    std::fs::write(dir.join("configuration.yaml"), main).expect("write");
    std::fs::write(dir.join("included.yaml"), second).expect("write");
    std::fs::write(dir.join("secrets.yaml"), second).expect("write");
    let checked = hass_config_check::load(dir);
    // `config` is there exactly when nothing is an error.
    assert_eq!(checked.config.is_some(), !checked.has_errors());
});
