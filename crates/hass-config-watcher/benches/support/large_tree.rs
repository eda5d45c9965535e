//! The large benchmark tree: `configuration.yaml` with
//! `!include_dir_merge_list automations` (200 files × 5 automations = 1000,
//! each with a `!secret`), `!include_dir_named packages` (50 packages with an
//! input_boolean, a script and a template sensor) and `secrets.yaml`; 252
//! files, 1.1 MB. Shared by `examples/gen_large_config.rs` and
//! `benches/vs_check_config.rs`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

/// Writes the tree into `root` (created if missing).
pub(crate) fn write_large_config(root: &Path) {
    fs::create_dir_all(root.join("automations")).unwrap();
    fs::create_dir_all(root.join("packages")).unwrap();
    fs::write(
        root.join("configuration.yaml"),
        "homeassistant:\n  name: Benchmark\n  latitude: !secret home_latitude\n  longitude: !secret home_longitude\n  packages: !include_dir_named packages\ndefault_config:\nautomation: !include_dir_merge_list automations\nhttp:\n  server_port: 8123\n",
    )
    .unwrap();
    let mut secrets = String::from("home_latitude: 52.37\nhome_longitude: 4.89\n");
    for f in 0..200 {
        let mut text = String::new();
        for a in 0..5 {
            let n = f * 5 + a;
            writeln!(secrets, "notify_target_{n}: \"device_{n}\"").unwrap();
            write!(
                text,
                "- id: \"auto_{n}\"\n  alias: \"Automation {n}\"\n  description: \"Turns light {n} on when motion {n} is seen after sunset\"\n  mode: single\n  trigger:\n    - platform: state\n      entity_id: binary_sensor.motion_{n}\n      to: \"on\"\n  condition:\n    - condition: sun\n      after: sunset\n    - condition: template\n      value_template: \"{{{{ states('sensor.lux_{n}') | float(0) < 20 }}}}\"\n  action:\n    - service: light.turn_on\n      target:\n        entity_id: light.room_{n}\n      data:\n        brightness_pct: 80\n        transition: 2\n    - service: notify.notify\n      data:\n        message: \"Motion {n}\"\n        target: !secret notify_target_{n}\n    - delay: \"00:05:00\"\n    - service: light.turn_off\n      target:\n        entity_id: light.room_{n}\n"
            )
            .unwrap();
        }
        fs::write(root.join(format!("automations/file_{f:03}.yaml")), text).unwrap();
    }
    for p in 0..50 {
        fs::write(
            root.join(format!("packages/pkg_{p:02}.yaml")),
            format!(
                "input_boolean:\n  pkg_{p}_enabled:\n    name: \"Package {p} enabled\"\n    icon: mdi:toggle-switch\nscript:\n  pkg_{p}_run:\n    alias: \"Run package {p}\"\n    sequence:\n      - service: input_boolean.toggle\n        target:\n          entity_id: input_boolean.pkg_{p}_enabled\ntemplate:\n  - sensor:\n      - name: \"Package {p} value\"\n        unique_id: pkg_{p}_value\n        state: \"{{{{ (states('sensor.raw_{p}') | float(0) * 1.5) | round(1) }}}}\"\n        unit_of_measurement: \"W\"\n"
            ),
        )
        .unwrap();
    }
    fs::write(root.join("secrets.yaml"), secrets).unwrap();
}
