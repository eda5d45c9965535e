#!/usr/bin/env python3
"""Real peers for images/test's arm64 checks, each step waiting for the
protocol's answer: an MQTT round trip through the broker (paho, SUBACK read
before the PUBLISH), bytes both ways through the serial bridge (TCP on one
side, the pty the bridge holds on the other), and a scrape of the exporter
until it reports the broker and the bridge up. Exits 1 naming what failed.

usage: daemon-peers.py --mqtt PORT --device PORT --pty PATH --exporter PORT
"""
import argparse
import os
import re
import select
import socket
import sys
import time
import urllib.request

import paho.mqtt.client as mqtt

DEADLINE_S = 30


def mqtt_round_trip(port):
    got, subscribed = [], []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="image-test-arm64")
    client.on_subscribe = lambda c, u, mid, codes, props: subscribed.append(mid)
    client.on_message = lambda c, u, msg: got.append(msg.payload)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        _, mid = client.subscribe("image-test/arm64", qos=1)
        until(lambda: mid in subscribed, "SUBACK")
        client.publish("image-test/arm64", b"pong-arm64", qos=1)
        until(lambda: got == [b"pong-arm64"], "the message back")
    finally:
        client.loop_stop()
        client.disconnect()


def read_exactly(read, n, what):
    data = b""
    deadline = time.monotonic() + DEADLINE_S
    while len(data) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"serial bridge: {what}: got {data!r}")
        data += read(n - len(data))
    return data


def bridge_both_ways(port, pty):
    host = os.open(pty, os.O_RDWR | os.O_NOCTTY)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as client:
            client.sendall(b"\x1a\xc0to-stick")
            def read_pty(n):
                ready, _, _ = select.select([host], [], [], 1)
                return os.read(host, n) if ready else b""
            got = read_exactly(read_pty, 10, "client to stick")
            if got != b"\x1a\xc0to-stick":
                raise SystemExit(f"serial bridge: stick got {got!r}")
            os.write(host, b"\x7eto-client")
            def read_client(n):
                try:
                    return client.recv(n)
                except socket.timeout:
                    return b""
            client.settimeout(1)
            got = read_exactly(read_client, 10, "stick to client")
            if got != b"\x7eto-client":
                raise SystemExit(f"serial bridge: client got {got!r}")
    finally:
        os.close(host)


def exporter_sees_both(port):
    wanted = [r"^hass_exporter_broker_up(\{[^}]*\})? 1$", r"^hass_exporter_bridge_up\{[^}]*\} 1$"]
    def scraped():
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return all(re.search(w, text, re.MULTILINE) for w in wanted)
    until(scraped, "exporter: " + " and ".join(wanted))


def until(check, what):
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--mqtt", type=int, required=True)
    args.add_argument("--device", type=int, required=True)
    args.add_argument("--pty", required=True)
    args.add_argument("--exporter", type=int, required=True)
    a = args.parse_args()
    mqtt_round_trip(a.mqtt)
    print("ok: MQTT round trip through the broker")
    bridge_both_ways(a.device, a.pty)
    print("ok: bytes both ways through the serial bridge")
    exporter_sees_both(a.exporter)
    print("ok: the exporter scrapes the broker and the bridge as up")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
