"""paho-mqtt, the client Home Assistant uses, for the end-to-end tests.

pub: publish --message with --qos/--retain, wait for the acknowledgement.
sub: subscribe to every --topic filter, collect messages for --wait seconds,
     print them as JSON: [{"topic", "payload", "retain", "qos"}].
"""
import argparse, json, sys, time
import paho.mqtt.client as mqtt

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["pub", "sub"])
p.add_argument("--port", type=int, required=True)
p.add_argument("--user", required=True)
p.add_argument("--password", required=True)
p.add_argument("--topic", action="append", required=True)
p.add_argument("--message", default="")
p.add_argument("--qos", type=int, default=1)
p.add_argument("--retain", action="store_true")
p.add_argument("--wait", type=float, default=2.0)
a = p.parse_args()

c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"e2e-{a.mode}-{time.time_ns()}")
c.username_pw_set(a.user, a.password)
got = []
c.on_message = lambda _c, _u, m: got.append(
    {"topic": m.topic, "payload": m.payload.decode(), "retain": bool(m.retain), "qos": m.qos})
rc = c.connect("127.0.0.1", a.port, keepalive=30)
c.loop_start()
if a.mode == "pub":
    info = c.publish(a.topic[0], a.message, qos=a.qos, retain=a.retain)
    info.wait_for_publish(timeout=10)
    if not info.is_published():
        sys.exit("not acknowledged")
    print(json.dumps({"published": a.topic[0]}))
else:
    for t in a.topic:
        c.subscribe(t, qos=a.qos)
    time.sleep(a.wait)
    print(json.dumps(got))
c.loop_stop()
c.disconnect()
