//! Arbitrary bytes through the codec, as a client's stream arrives: version
//! detection, then packet after packet until the bytes run out or are refused.
//! Any panic (including one the codec would catch) is a finding.
#![no_main]

use bytes::BytesMut;
use hass_broker::codec::{self, CodecError, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = codec::detect_version(data, 64 * 1024);
    for version in [Version::V4, Version::V5] {
        let mut buf = BytesMut::from(data);
        loop {
            match codec::read(version, &mut buf, 64 * 1024) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(CodecError::ParserPanicked) => panic!("codec panicked"),
                Err(_) => break,
            }
        }
    }
});
