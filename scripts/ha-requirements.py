"""Prints the Python requirements of the integrations named on the command
line and of their dependencies, as their manifests pin them, so
scripts/ha-rootfs can install them once instead of Home Assistant installing
them when a test first sets one up. Runs with the root filesystem's Python."""

import importlib
import json
import pathlib
import sys

import homeassistant

components = pathlib.Path(homeassistant.__file__).parent / "components"
todo = list(sys.argv[1:])
seen, requirements = set(), set()
while todo:
    name = todo.pop()
    if name in seen:
        continue
    seen.add(name)
    manifest = components / name / "manifest.json"
    if not manifest.exists():
        continue
    data = json.loads(manifest.read_text())
    requirements.update(data.get("requirements", []))
    todo.extend(data.get("dependencies", []))
    todo.extend(data.get("after_dependencies", []))
# Home Assistant installs these on first use too: the auth modules at every
# start, colorlog when `hass --script check_config` runs.
for module in (
    "homeassistant.auth.mfa_modules.totp",
    "homeassistant.auth.mfa_modules.notify",
    "homeassistant.scripts.check_config",
):
    requirements.update(getattr(importlib.import_module(module), "REQUIREMENTS", []))
print("\n".join(sorted(requirements)))
