"""Writes a one-package index in PEP 503's simple layout: DIR/simple/NAME/
with a pure-Python wheel whose module NAME (dashes as underscores) holds
ANSWER = 42. What a package registry gives Home Assistant when an
integration asks for a package, without the network.

usage: wheel_index.py DIR NAME VERSION
"""

import base64
import hashlib
import pathlib
import sys
import zipfile

root, name, version = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
module = name.replace("-", "_")
dist_info = f"{module}-{version}.dist-info"
files = {
    f"{module}/__init__.py": "ANSWER = 42\n",
    f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hass-sidecars tests\n"
    "Root-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for path, text in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest())
    record.append(f"{path},sha256={digest.rstrip(b'=').decode()},{len(text.encode())}")
record.append(f"{dist_info}/RECORD,,")
files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"

project = root / "simple" / name
project.mkdir(parents=True, exist_ok=True)
wheel = f"{module}-{version}-py3-none-any.whl"
with zipfile.ZipFile(project / wheel, "w") as archive:
    for path, text in files.items():
        archive.writestr(path, text)
(project / "index.html").write_text(f'<html><body><a href="{wheel}">{wheel}</a></body></html>\n')
