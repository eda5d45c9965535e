"""MQTT 5 behaviours exercised with paho-mqtt, one scenario per name.

Usage: v5_features.py PORT USER PASSWORD SCENARIO; prints one JSON object.
"""
import itertools
import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

PORT, USER, PASSWORD = int(sys.argv[1]), sys.argv[2], sys.argv[3]
MARKERS = itertools.count()


class Client:
    """A connected MQTT 5 client that records what it receives."""

    def __init__(self, client_id="", clean_start=True, expiry=None, props=None, will=None,
                 keepalive=60, threaded=True):
        self.messages = []
        self.props = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present = None
        self.connack = None
        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                             client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(USER, PASSWORD)
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        if will:
            self.c.will_set(will["topic"], will["payload"], qos=1, properties=will.get("props"))
        connect_props = props or Properties(PacketTypes.CONNECT)
        if expiry is not None:
            connect_props.SessionExpiryInterval = expiry
        self.c.connect("127.0.0.1", PORT, keepalive=keepalive, clean_start=clean_start,
                       properties=connect_props)
        if threaded:
            self.c.loop_start()
        else:
            # No network thread yet: what the caller sends next is written
            # by the calling thread, before the call returns.
            deadline = time.monotonic() + 10
            while not self.connected.is_set() and time.monotonic() < deadline:
                self.c.loop(0.1)
        assert self.connected.wait(10), "no CONNACK"

    def _on_connect(self, _c, _u, flags, rc, props):
        self.session_present = bool(flags.session_present)
        self.connack = props
        self.connected.set()

    def _on_message(self, _c, _u, msg):
        props = msg.properties
        with self.lock:
            self.messages.append({
                "topic": msg.topic,
                "payload": msg.payload.decode("utf-8", "replace"),
                "retain": bool(msg.retain),
                "qos": msg.qos,
                "sub_ids": list(getattr(props, "SubscriptionIdentifier", []) or []),
                "expiry": getattr(props, "MessageExpiryInterval", None),
                "alias": getattr(props, "TopicAlias", None),
            })
            self.props.append(props)
            self.arrived.notify_all()

    def subscribe(self, topic, qos=1, sub_id=None, **options):
        self.subscribed.clear()
        props = None
        if sub_id:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
        self.c.subscribe(topic, options=SubscribeOptions(qos=qos, **options), properties=props)
        assert self.subscribed.wait(10), "no SUBACK"

    def publish(self, topic, payload, qos=1, retain=False, props=None):
        self.c.publish(topic, payload, qos=qos, retain=retain, properties=props).wait_for_publish(10)

    def wait_for(self, count, timeout=10):
        """The first `count` messages, once they are in."""
        with self.lock:
            self.arrived.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def settled(self, topic):
        """Everything routed to this client so far: a marker published now
        to `topic` (which this client must match) arrives after all of it,
        so what came before the marker is all there is, with no waiting for
        nothing to happen. Markers are left out."""
        marker = "settle-%d" % next(MARKERS)
        Client().publish(topic, marker)
        with self.lock:
            arrived = self.arrived.wait_for(
                lambda: any(m["payload"] == marker for m in self.messages), 10)
            assert arrived, "marker on %s never arrived" % topic
            before = self.messages[:[m["payload"] for m in self.messages].index(marker)]
            return [m for m in before if not m["payload"].startswith("settle-")]

    def got_after(self, seconds):
        """What arrived within `seconds`: for timing checks only (will delay,
        expiry), where when a message arrives is the thing checked."""
        time.sleep(seconds)
        with self.lock:
            return list(self.messages)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def shared():
    a, b = Client("worker-a"), Client("worker-b")
    a.subscribe("$share/workers/jobs/+")
    b.subscribe("$share/workers/jobs/+")
    p = Client()
    for i in range(20):
        p.publish("jobs/%d" % i, "job%d" % i)
    deadline = time.monotonic() + 10
    while len(a.messages) + len(b.messages) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    got_a, got_b = list(a.messages), list(b.messages)
    return {"a": len(got_a), "b": len(got_b),
            "distinct": len({m["payload"] for m in got_a + got_b})}


def topic_alias():
    s = Client()
    s.subscribe("zigbee2mqtt/#")
    p = Client()
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = 1
    p.publish("zigbee2mqtt/living_room/lamp", "first", props=props)
    for payload in ("second", "third"):
        props = Properties(PacketTypes.PUBLISH)
        props.TopicAlias = 1
        p.publish("", payload, props=props)
    return {"messages": [(m["topic"], m["payload"]) for m in s.wait_for(3)]}


def no_local():
    c = Client("echo")
    c.subscribe("chat", noLocal=True)
    c.publish("chat", "mine")
    Client().publish("chat", "theirs")
    return {"payloads": [m["payload"] for m in c.settled("chat")]}


def retain_handling():
    Client().publish("rh/state", "on", retain=True)
    results = {}
    for name, rh in (("never", 2), ("always", 0)):
        c = Client()
        c.subscribe("rh/#", retainHandling=rh)
        results[name] = len(c.settled("rh/settle"))
    c = Client()
    c.subscribe("rh/#", retainHandling=1)
    first = len(c.settled("rh/settle"))
    c.subscribe("rh/#", retainHandling=1)
    results["if_new_first"], results["if_new_again"] = first, len(c.settled("rh/settle")) - first
    return results


def retain_as_published():
    keep, clear = Client(), Client()
    keep.subscribe("rap/#", retainAsPublished=True)
    clear.subscribe("rap/#", retainAsPublished=False)
    Client().publish("rap/x", "v", retain=True)
    return {"keep": [m["retain"] for m in keep.settled("rap/settle")],
            "clear": [m["retain"] for m in clear.settled("rap/settle")]}


def subscription_ids():
    c = Client()
    c.subscribe("ids/#", sub_id=7)
    Client().publish("ids/a", "x")
    return {"sub_ids": [m["sub_ids"] for m in c.settled("ids/settle") if m["topic"] == "ids/a"]}


def message_expiry():
    offline = Client("sleeper", clean_start=True, expiry=300)
    offline.subscribe("exp/#")
    offline.close()
    p = Client()
    short = Properties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 1
    p.publish("exp/short", "gone", props=short)
    long = Properties(PacketTypes.PUBLISH)
    long.MessageExpiryInterval = 600
    p.publish("exp/long", "kept", props=long)
    time.sleep(2.2)  # past the short message's 1 s expiry: the thing tested
    back = Client("sleeper", clean_start=False, expiry=300)
    got = back.settled("exp/settle")
    return {"payloads": [m["payload"] for m in got], "expiry": [m["expiry"] for m in got]}


def session_expiry():
    c = Client("brief", clean_start=True, expiry=1)
    c.subscribe("se/#")
    c.close()
    time.sleep(2.5)  # past the session's 1 s expiry (and a sweep): the thing tested
    later = Client("brief", clean_start=False, expiry=1)
    return {"session_present": later.session_present}


def will_delay(reconnect):
    watcher = Client()
    watcher.subscribe("wd/status")
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = 2
    pid = os.fork()
    if pid == 0:
        Client("delayed", clean_start=True, expiry=60,
               will={"topic": "wd/status", "payload": "offline", "props": props})
        os._exit(0)  # vanish without DISCONNECT
    os.waitpid(pid, 0)
    early = len(watcher.got_after(0.8))
    if reconnect:
        Client("delayed", clean_start=False, expiry=60)
    late = len(watcher.got_after(2.5))
    return {"early": early, "late": late}


def max_packet_size():
    props = Properties(PacketTypes.CONNECT)
    props.MaximumPacketSize = 200
    small = Client(props=props)
    small.subscribe("mps/#")
    p = Client()
    p.publish("mps/big", "x" * 500)
    p.publish("mps/small", "ok")
    return {"payloads": [m["payload"] for m in small.settled("mps/settle")]}


def server_topic_alias():
    """Eclipse Paho's test_server_topic_alias: with Topic Alias Maximum 1 in
    CONNECT, the first delivery binds an alias and the next two use it with
    an empty topic; without one, no alias is used."""
    seen = {}
    for name, maximum in (("allowed", 1), ("not_allowed", None)):
        props = Properties(PacketTypes.CONNECT)
        if maximum is not None:
            props.TopicAliasMaximum = maximum
        c = Client(props=props)
        c.subscribe("alias/topic", qos=2)
        for qos in range(3):
            c.publish("alias/topic", "topic alias %d" % qos, qos=qos)
        seen[name] = [[m["topic"], m["alias"]] for m in c.wait_for(3)]
        c.close()
    return seen


def request_response(rounds=10):
    """Eclipse Paho's test_request_response, repeated: the responder's
    SUBSCRIBE goes out unacknowledged and the request is published right
    after it on another connection; the request arrives with its Response
    Topic, and the response comes back with its Correlation Data."""
    answered = 0
    for i in range(rounds):
        topic = "rr/%d" % i
        a, b = Client(), Client(threaded=False)
        a.subscribe(topic, qos=2, noLocal=True)
        # On the wire before the request below (see Client's `threaded`);
        # its SUBACK is not waited for.
        b.c.subscribe(topic, options=SubscribeOptions(qos=2, noLocal=True))
        b.c.loop_start()
        request = Properties(PacketTypes.PUBLISH)
        request.ResponseTopic = topic
        request.CorrelationData = b"334-%d" % i
        a.publish(topic, "request", props=request)
        got = b.wait_for(1, timeout=3)
        if got and got[0]["payload"] == "request":
            asked = b.props[0]
            response = Properties(PacketTypes.PUBLISH)
            response.CorrelationData = asked.CorrelationData
            b.publish(asked.ResponseTopic, "response", props=response)
            back = a.wait_for(1, timeout=3)
            if back and a.props[0].CorrelationData == request.CorrelationData:
                answered += 1
        a.close()
        b.close()
    return {"rounds": rounds, "answered": answered}


def server_keep_alive():
    """Keep Alive asked for against `max_keepalive`: what CONNACK says back."""
    told = {}
    for asked in (120, 0, 30):
        c = Client(keepalive=asked)
        told[str(asked)] = getattr(c.connack, "ServerKeepAlive", None)
        c.c.disconnect()
    return told


SCENARIOS = {
    "server_keep_alive": server_keep_alive, "server_topic_alias": server_topic_alias,
    "request_response": request_response,
    "shared": shared, "topic_alias": topic_alias, "no_local": no_local,
    "retain_handling": retain_handling, "retain_as_published": retain_as_published,
    "subscription_ids": subscription_ids, "message_expiry": message_expiry,
    "session_expiry": session_expiry, "will_delay": lambda: will_delay(False),
    "will_delay_cancelled": lambda: will_delay(True), "max_packet_size": max_packet_size,
}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[4]]()))
    sys.stdout.flush()
    os._exit(0)
