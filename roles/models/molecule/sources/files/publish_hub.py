"""Publish the shipped tiny-deepseek (SOURCE) under HUB in the layout of the Hugging Face hub's API
at revision REVISION: /api/models/<repo>/revision/<rev> lists the files (siblings, with the git
blob id of each and the sha256 of the LFS ones, as the hub gives them), /<repo>/resolve/<rev>/<file>
serves them. A README.md that no catalog pattern matches is published too.

usage: publish_hub.py SOURCE HUB REPO REVISION
"""

import hashlib
import json
import os
import sys

source, hub, repo, revision = sys.argv[1:5]
files_dir = f"{hub}/{repo}/resolve/{revision}"
os.makedirs(files_dir, exist_ok=True)
os.makedirs(f"{hub}/api/models/{repo}/revision", exist_ok=True)
siblings = []
for name in [*sorted(os.listdir(source)), "README.md"]:
    if name == "manifest.json":
        continue
    if name == "README.md":
        data = b"# not fetched\n"
    else:
        with open(f"{source}/{name}", "rb") as fh:
            data = fh.read()
    with open(f"{files_dir}/{name}", "wb") as fh:
        fh.write(data)
    sibling = {"rfilename": name, "size": len(data),
               "blobId": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
    if name.endswith(".safetensors"):
        sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    siblings.append(sibling)
with open(f"{hub}/api/models/{repo}/revision/{revision}", "w") as fh:
    json.dump({"id": repo, "sha": revision, "siblings": siblings}, fh)
for root, dirs, files in os.walk(hub):
    for entry in dirs:
        os.chmod(os.path.join(root, entry), 0o755)
    for entry in files:
        os.chmod(os.path.join(root, entry), 0o644)
