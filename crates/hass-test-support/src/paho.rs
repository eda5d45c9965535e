//! paho-mqtt, the client Home Assistant uses, as the tests drive it: one
//! script (`clients/paho_client.py`) whose subcommands each do one thing a
//! real client does and print one JSON object saying what it saw.

use std::path::PathBuf;

/// The script, for tests that pass it their own flags.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/paho_client.py")
}

/// The messages of a paho `subscribe` (its JSON `messages`, or that list
/// itself) as (topic, payload, retain), sorted: what a test compares
/// whatever order the broker delivered in.
pub fn received(output: &serde_json::Value) -> Vec<(String, String, bool)> {
    let messages = output.get("messages").unwrap_or(output);
    let mut got: Vec<(String, String, bool)> = messages
        .as_array()
        .unwrap_or_else(|| panic!("no messages in paho output {output}"))
        .iter()
        .map(|m| {
            let text = |key: &str| m[key].as_str().unwrap_or_default().to_owned();
            (
                text("topic"),
                text("payload"),
                m["retain"].as_bool() == Some(true),
            )
        })
        .collect();
    got.sort();
    got
}

/// A paho `subscribe` running in the background, returned once the broker
/// has acknowledged every filter (the script says `subscribed [codes]` on
/// stderr after the last SUBACK): a test publishes only then.
#[derive(Debug)]
pub struct Subscribed {
    child: std::process::Child,
    /// The reason codes the SUBACKs granted, in filter order.
    pub granted: serde_json::Value,
}

impl Subscribed {
    /// Spawns `command` (python3 with the script and a `subscribe` command)
    /// and waits for its SUBACKs.
    pub fn spawn(mut command: std::process::Command) -> Self {
        use std::io::BufRead;
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut said = Vec::new();
        let mut lines = std::io::BufReader::new(stderr).lines();
        let granted = lines.by_ref().map_while(Result::ok).find_map(|line| {
            let granted = line
                .strip_prefix("subscribed ")
                .and_then(|codes| serde_json::from_str(codes).ok());
            if granted.is_none() {
                said.push(line);
            }
            granted
        });
        let Some(granted) = granted else {
            let _ = child.kill();
            let out = child.wait_with_output().expect("paho subscriber output");
            panic!(
                "the paho subscriber never said it was subscribed: {}\n{}",
                said.join("\n"),
                String::from_utf8_lossy(&out.stdout)
            );
        };
        // The rest of stderr is drained so the script never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, granted }
    }

    /// Waits for the script to end and returns the JSON it printed.
    pub fn finish(self) -> serde_json::Value {
        let out = self.child.wait_with_output().expect("paho subscriber");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "paho subscriber failed: {stdout}");
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("paho output {stdout:?}: {e}"))
    }
}
