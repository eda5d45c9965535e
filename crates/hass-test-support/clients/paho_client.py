"""paho-mqtt (the client Home Assistant uses) driven by the tests.

Each subcommand does one thing a real client does and prints one JSON object
on stdout describing what it saw; the Rust test asserts on it.
"""
import argparse
import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def make_client(args, client_id=None, clean=True):
    protocol = mqtt.MQTTv5 if args.protocol == 5 else mqtt.MQTTv311
    kwargs = {}
    if protocol == mqtt.MQTTv311:
        kwargs["clean_session"] = clean
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or "",
        protocol=protocol,
        transport=args.transport,
        **kwargs,
    )
    if args.transport == "websockets":
        client.ws_set_options(path=args.ws_path)
    if args.tls_ca:
        client.tls_set(ca_certs=args.tls_ca)
    if args.user:
        client.username_pw_set(args.user, args.password)
    return client


def connect(client, args, clean=True, expiry=None, keepalive=60):
    """Connects and waits for CONNACK; returns (reason code, session_present)."""
    done = threading.Event()
    result = {}

    def on_connect(_c, _u, flags, reason_code, _props):
        result["rc"] = reason_code.value if hasattr(reason_code, "value") else int(reason_code)
        result["session_present"] = bool(flags.session_present)
        done.set()

    client.on_connect = on_connect
    kwargs = {}
    if args.protocol == 5:
        kwargs["clean_start"] = clean
        if expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = expiry
            kwargs["properties"] = props
    client.connect(args.host, args.port, keepalive=keepalive, **kwargs)
    client.loop_start()
    if not done.wait(10):
        return None, None
    return result["rc"], result["session_present"]


def cmd_connect(args):
    client = make_client(args, args.client_id)
    if args.will_topic:
        client.will_set(args.will_topic, args.will_payload, qos=1, retain=args.will_retain)
    rc, present = connect(client, args, keepalive=args.keepalive)
    time.sleep(args.hold)
    if args.abort:
        # Vanish without DISCONNECT, as a crashed or unplugged client does.
        print(json.dumps({"rc": rc, "session_present": present}), flush=True)
        os._exit(0)
    alive = client.is_connected()
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"rc": rc, "session_present": present, "still_connected": alive}))


def cmd_publish_many(args):
    client = make_client(args, args.client_id)
    rc, _ = connect(client, args)
    if rc != 0:
        print(json.dumps({"rc": rc}))
        return
    infos = []
    for i in range(args.count):
        topic = args.topic.replace("{i}", str(i))
        payload = args.payload.replace("{i}", str(i))
        if args.payload_size:
            payload = counted_payload(args.payload_size)
        infos.append(client.publish(topic, payload, qos=args.qos, retain=args.retain))
    for info in infos:
        info.wait_for_publish(timeout=30)
    acked = sum(1 for info in infos if info.is_published())
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"rc": rc, "acked": acked}))


def counted_payload(size):
    """`size` bytes of 8-digit hex counters: no two chunks of it look alike,
    so a lost, doubled or reordered piece shows."""
    return "".join(f"{k:08x}" for k in range(size // 8 + 1))[:size]


def cmd_subscribe(args):
    """Subscribes and collects messages until `expect` arrive or time runs out."""
    client = make_client(args, args.client_id, clean=not args.persistent)
    got = []
    lock = threading.Lock()
    enough = threading.Event()

    def on_message(_c, _u, msg):
        with lock:
            got.append({"topic": msg.topic, "payload": msg.payload.decode("utf-8", "replace"),
                        "qos": msg.qos, "retain": bool(msg.retain)})
            if len(got) >= args.expect:
                enough.set()

    client.on_message = on_message
    rc, present = connect(client, args, clean=not args.persistent,
                          expiry=0xFFFFFFFF if args.persistent else None)
    if rc != 0:
        print(json.dumps({"rc": rc}))
        return
    suback = threading.Event()
    granted = []

    def on_subscribe(_c, _u, _mid, reason_codes, _props):
        granted.extend(rc.value if hasattr(rc, "value") else int(rc) for rc in reason_codes)
        suback.set()

    client.on_subscribe = on_subscribe
    if not args.no_subscribe:
        for topic_filter in args.filter:
            suback.clear()
            client.subscribe(topic_filter, qos=args.qos)
            suback.wait(10)
    # Said on stderr once every SUBACK is in (or none was asked for): what a
    # test waits for before it publishes (hass_test_support::paho::Subscribed).
    print("subscribed " + json.dumps(granted), file=sys.stderr, flush=True)
    if args.expect > 0:
        enough.wait(args.timeout)
    else:
        time.sleep(args.timeout)
    time.sleep(args.linger)
    with lock:
        messages = list(got)
    still_connected = client.is_connected()
    if args.expiry_on_disconnect is not None:
        # MQTT 5: the DISCONNECT changes the Session Expiry Interval.
        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = args.expiry_on_disconnect
        client.disconnect(properties=props)
    else:
        client.disconnect()
    client.loop_stop()
    summary = {
        "rc": rc,
        "session_present": present,
        "granted": granted,
        "count": len(messages),
        "retained": sum(1 for m in messages if m["retain"]),
        "qos": sorted({m["qos"] for m in messages}),
        "still_connected": still_connected,
    }
    if args.show:
        summary["messages"] = messages
    print(json.dumps(summary))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--protocol", type=int, choices=[4, 5], default=4)
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--client-id")
    parser.add_argument("--transport", choices=["tcp", "websockets"], default="tcp")
    parser.add_argument("--ws-path", default="/mqtt")
    parser.add_argument("--tls-ca")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("connect")
    p.add_argument("--keepalive", type=int, default=60)
    p.add_argument("--hold", type=float, default=0.0)
    p.add_argument("--will-topic")
    p.add_argument("--will-payload", default="offline")
    p.add_argument("--will-retain", action="store_true")
    p.add_argument("--abort", action="store_true")

    p = sub.add_parser("publish-many")
    p.add_argument("--topic", required=True)
    p.add_argument("--payload", default="{i}")
    p.add_argument("--payload-size", type=int, default=0,
                   help="send this many bytes of counted_payload instead")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--qos", type=int, default=1)
    p.add_argument("--retain", action="store_true")

    p = sub.add_parser("subscribe")
    p.add_argument("--filter", action="append", required=True,
                   help="a topic filter; repeat it for more, each waited for its SUBACK")
    p.add_argument("--qos", type=int, default=0)
    p.add_argument("--expect", type=int, default=0,
                   help="return as soon as this many messages arrived")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="the most to wait for --expect; with --expect 0, how long "
                        "nothing must arrive (the one wait on the clock)")
    p.add_argument("--linger", type=float, default=0.0,
                   help="after --expect is met, how long no extra message (a "
                        "duplicate) may arrive: a 'nothing happens' check")
    p.add_argument("--persistent", action="store_true")
    p.add_argument("--expiry-on-disconnect", type=int)
    p.add_argument("--no-subscribe", action="store_true")
    p.add_argument("--show", action="store_true")

    args = parser.parse_args()
    {"connect": cmd_connect, "publish-many": cmd_publish_many,
     "subscribe": cmd_subscribe}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
