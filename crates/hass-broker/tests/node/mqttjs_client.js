// MQTT.js (Zigbee2MQTT's client) driven by hass-broker's tests.
// Usage: node mqttjs_client.js URL USER PASSWORD VERSION COMMAND ARGS...
//   publish-retained TOPIC_PREFIX COUNT   publish COUNT retained QoS 1 messages
//   count-retained FILTER EXPECT TIMEOUT_MS   subscribe and count retained ones
// Prints one JSON line.
'use strict';
const mqtt = require('mqtt');

const [url, username, password, version, command, ...args] = process.argv.slice(2);
const client = mqtt.connect(url, {
  username,
  password,
  protocolVersion: Number(version),
  reconnectPeriod: 0,
  connectTimeout: 10000,
});

// Once the result is out, the broker may close the socket on our DISCONNECT
// while acks are still being written (EPIPE): that is not a second result.
let finished = false;

function done(result) {
  if (finished) return;
  finished = true;
  console.log(JSON.stringify(result));
  client.end(false, {}, () => process.exit(0));
}

client.on('error', (err) => {
  if (finished) return;
  finished = true;
  console.log(JSON.stringify({ error: String(err.message || err), code: err.code ?? null }));
  process.exit(0);
});

client.on('connect', async () => {
  if (command === 'publish-retained') {
    const [prefix, count] = [args[0], Number(args[1])];
    const sends = [];
    for (let i = 0; i < count; i++) {
      sends.push(client.publishAsync(`${prefix}/${i}`, JSON.stringify({ device: i }), { qos: 1, retain: true }));
    }
    await Promise.all(sends);
    done({ acked: count });
  } else if (command === 'count-retained') {
    const [filter, expect, timeout] = [args[0], Number(args[1]), Number(args[2])];
    let count = 0;
    let retained = 0;
    client.on('message', (_topic, _payload, packet) => {
      count++;
      if (packet.retain) retained++;
      if (count >= expect) done({ count, retained });
    });
    await client.subscribeAsync(filter, { qos: 1 });
    setTimeout(() => done({ count, retained }), timeout);
  } else {
    done({ error: `unknown command ${command}` });
  }
});
