//! Arbitrary bytes as a `mosquitto.db`: the importer refuses or reads them,
//! never panics, and what it reads holds only valid topics and filters.
#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The magic and a format version up front, so the chunks get explored.
    let mut file = b"\x00\xb5\x00mosquitto db\x00\x00\x00\x00\x00\x00\x00\x06".to_vec();
    file.extend_from_slice(data);
    if let Ok(db) = hass_broker::mosquitto_db::parse(&file, SystemTime::now()) {
        for message in &db.retained {
            assert!(hass_broker::topic::validate_name(&message.topic).is_ok());
        }
        for (_, session) in &db.sessions {
            for subscription in &session.subscriptions {
                assert!(hass_broker::topic::parse_filter(&subscription.filter).is_ok());
            }
        }
    }
});
