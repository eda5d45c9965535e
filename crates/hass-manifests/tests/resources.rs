//! Home Assistant's resource presets: the table documented on
//! `home_assistant.preset` (schema and defaults file) is what the container
//! gets, and an explicit `resources` replaces the preset.

// Helpers outside #[test] fns panic on setup failures too (clippy.toml only
// exempts test fns).
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ResourceRequirements;

/// `[cpu request, memory request, cpu limit, memory limit]`.
type Sizes = [String; 4];

fn preset_description() -> String {
    let schema = hass_manifests::schema();
    schema["$defs"]["HomeAssistant"]["properties"]["preset"]["description"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The table rows of the description: `| small | … | 100m, 384Mi | 1, 1Gi |`.
fn documented_presets() -> Vec<(String, Sizes)> {
    preset_description()
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            let [preset, _home, requests, limits] = cells.as_slice() else {
                return None;
            };
            let pair = |cell: &str| -> Option<(String, String)> {
                let (cpu, memory) = cell.trim().split_once(", ")?;
                Some((cpu.to_owned(), memory.to_owned()))
            };
            let ((cpu_req, mem_req), (cpu_lim, mem_lim)) = (pair(requests)?, pair(limits)?);
            Some((
                preset.trim().to_owned(),
                [cpu_req, mem_req, cpu_lim, mem_lim],
            ))
        })
        .collect()
}

fn home_assistant_resources(values_text: &str) -> ResourceRequirements {
    let values = hass_manifests::values::parse(values_text).unwrap();
    let manifests = hass_manifests::render(&values).unwrap();
    let sts = manifests
        .iter()
        .find(|m| m.kind == "StatefulSet" && m.name == values.name)
        .unwrap();
    let sts: StatefulSet = serde_saphyr::from_str(&sts.yaml).unwrap();
    let pod = sts.spec.unwrap().template.spec.unwrap();
    pod.containers
        .into_iter()
        .find(|c| c.name == "home-assistant")
        .unwrap()
        .resources
        .unwrap()
}

fn sizes(r: &ResourceRequirements) -> Sizes {
    let get = |list: &Option<std::collections::BTreeMap<_, _>>, key: &str| -> String {
        let list: &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        > = list.as_ref().unwrap();
        assert_eq!(list.len(), 2, "only cpu and memory: {list:?}");
        list[key].0.clone()
    };
    [
        get(&r.requests, "cpu"),
        get(&r.requests, "memory"),
        get(&r.limits, "cpu"),
        get(&r.limits, "memory"),
    ]
}

#[test]
fn the_table_lists_every_preset_and_the_defaults_file_shows_it() {
    let documented: Vec<String> = documented_presets().into_iter().map(|(p, _)| p).collect();
    let schema = hass_manifests::schema();
    let variants: Vec<&str> = schema["$defs"]["Preset"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["const"].as_str().unwrap())
        .collect();
    assert_eq!(documented, variants, "{}", preset_description());
    assert_eq!(variants, ["small", "medium", "large"]);

    let defaults = hass_manifests::defaults_file().unwrap();
    for line in preset_description().lines().filter(|l| l.starts_with('|')) {
        assert!(
            defaults.contains(&format!("  # {line}\n")),
            "{line}\n{defaults}"
        );
    }
}

#[test]
fn each_preset_renders_its_documented_requests_and_limits() {
    let documented = documented_presets();
    assert_eq!(documented.len(), 3);
    for (preset, want) in &documented {
        let got = sizes(&home_assistant_resources(&format!(
            "home_assistant:\n  preset: {preset}\n"
        )));
        assert_eq!(&got, want, "preset {preset}");
    }
    // Without a preset: the first row, small.
    assert_eq!(sizes(&home_assistant_resources("")), documented[0].1);
}

#[test]
fn explicit_resources_replace_any_preset() {
    let want = ["300m", "900Mi", "3", "3Gi"].map(str::to_owned);
    for preset in ["small", "medium", "large"] {
        let text = format!(
            "home_assistant:\n  preset: {preset}\n  resources:\n    cpu_request: 300m\n    \
             memory_request: 900Mi\n    cpu_limit: \"3\"\n    memory_limit: 3Gi\n"
        );
        assert_eq!(sizes(&home_assistant_resources(&text)), want, "{preset}");
    }
    // A partial override is an error, not a mix of the preset and the override.
    let e = hass_manifests::values::parse("home_assistant:\n  resources:\n    cpu_limit: \"3\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("home_assistant.resources"), "{e}");
    assert!(e.contains("missing field `cpu_request`"), "{e}");
}
