//! `hass-serial-bridge`: serves Zigbee/Z-Wave USB sticks over TCP.
