#!/usr/bin/python
"""Ansible module: put a model's files in place, verified and atomically.

Layout under `dest`: one directory per revision, `current` a symlink to the one in use, and
`.staging-<revision>` while a revision is being fetched. Every revision directory holds
`gpuprov-manifest.json` (path, size, sha256 of each file, plus the stat seen when it was verified).

Sources: `http` (files under a base URL, optionally with a bearer token: a mirror or the Hugging
Face hub's resolve URLs), `dir` (a directory on the host, e.g. files pushed from the controller),
`none` (verify only). Files already verified in another revision or already complete in staging are
not fetched again; a partial staging file is resumed (HTTP Range). A checksum mismatch removes the
bad staging file and fails; `current` is switched only after every file matched, so the previous
model stays in place.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shutil
import stat
import urllib.error
import urllib.parse
import urllib.request

from ansible.module_utils.basic import AnsibleModule

MANIFEST = "gpuprov-manifest.json"
CHUNK = 4 * 1024 * 1024

DOCUMENTATION = r"""
module: gpuprov_model_sync
short_description: Place a model's files under a revision directory, verified by sha256, atomically
options:
  dest: {type: path, required: true}
  revision: {type: str, required: true}
  files: {type: list, elements: dict, required: true, description: "[{path, size, sha256 or git_sha1}]"}
  source: {type: str, choices: [http, dir, none], required: true}
  base_url: {type: str}
  bearer_token: {type: str, no_log: true}
  source_dir: {type: path}
  consume: {type: bool, default: false}
  owner: {type: str, default: root}
  group: {type: str, default: root}
  verify: {type: str, choices: [stat, full], default: stat}
  keep: {type: int, default: 1}
  free_margin_bytes: {type: int, default: 1073741824}
"""


def digest_of(path: str, kind: str = "sha256") -> str:
    """`sha256:<hex>`, or `git:<hex>` (the git blob id the Hugging Face hub gives for small files)."""
    if kind == "git":
        h = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())  # noqa: S324 (git's object id)
    else:
        h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return f"{kind}:{h.hexdigest()}"


def matches(path: str, w: dict) -> bool:
    return os.path.getsize(path) == w["size"] and digest_of(path, w["digest"].split(":")[0]) == w["digest"]


def stat_key(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def read_manifest(rev_dir: str) -> dict | None:
    try:
        with open(os.path.join(rev_dir, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def wanted_map(files: list[dict]) -> dict[str, dict]:
    """{path: {size, digest}} from manifest entries ({path, size, sha256}) or the Hugging Face hub's
    file entries ({rfilename, size, blobId, lfs: {sha256, size}}: LFS files by sha256, the rest by
    their git blob id)."""
    out = {}
    for f in files:
        if "rfilename" in f:
            lfs = f.get("lfs") or {}
            path, size = f["rfilename"], lfs.get("size", f.get("size"))
            digest = f"sha256:{lfs['sha256']}" if lfs.get("sha256") else f"git:{f['blobId']}"
        else:
            path, size = f["path"], f["size"]
            digest = f"sha256:{f['sha256']}" if f.get("sha256") else f"git:{f['git_sha1']}"
        if size is None:
            raise ValueError(f"{path}: no size")
        out[path] = {"size": int(size), "digest": digest.lower()}
    return out


def revision_state(rev_dir: str, want: dict[str, dict], verify: str) -> list[str]:
    """Files of `want` that are not verified in place in rev_dir (empty: the revision is good)."""
    manifest = read_manifest(rev_dir)
    recorded = {f["path"]: f for f in (manifest or {}).get("files", [])}
    bad = []
    for path, w in want.items():
        full = os.path.join(rev_dir, path)
        r = recorded.get(path)
        if r is None or r.get("digest") != w["digest"] or not os.path.isfile(full):
            bad.append(path)
        elif verify == "full" or stat_key(full) != r.get("stat"):
            # `stat`: hashed again only when it changed since it was verified.
            if not matches(full, w):
                bad.append(path)
    return bad


def ownership_drift(rev_dir: str, want: dict, uid: int, gid: int) -> list[str]:
    out = []
    for path in list(want) + [MANIFEST]:
        st = os.stat(os.path.join(rev_dir, path))
        if st.st_uid != uid or st.st_gid != gid or stat.S_IMODE(st.st_mode) != 0o440:
            out.append(path)
    return out


def known_good_copies(dest: str, want: dict) -> dict[str, str]:
    """sha256 -> a verified file in another revision directory (re-used, not fetched again)."""
    found: dict[str, str] = {}
    digests = {w["digest"] for w in want.values()}
    for entry in os.listdir(dest) if os.path.isdir(dest) else []:
        rev_dir = os.path.join(dest, entry)
        if entry.startswith(".") or entry == "current" or not os.path.isdir(rev_dir):
            continue
        for f in (read_manifest(rev_dir) or {}).get("files", []):
            full = os.path.join(rev_dir, f["path"])
            if f.get("digest") in digests and os.path.isfile(full) and stat_key(full) == f.get("stat"):
                found.setdefault(f["digest"], full)
    return found


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def token_allowed(url: str, token_url: str) -> bool:
    """Whether a request to `url` may carry the bearer token given for `token_url`: the same host,
    over https (plain http only on loopback, where the tests' stand-ins listen)."""
    a, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(token_url)
    secure = a.scheme == "https" or (a.scheme == "http" and a.hostname in LOOPBACK)
    return secure and (a.hostname, a.port) == (b.hostname, b.port)


class TokenRedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib copies every header onto a redirect's request, Authorization too: the hub's resolve
    URLs redirect to a CDN on another host. The token goes along only where token_allowed says."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 (urllib's hook)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and not token_allowed(newurl, req.full_url):
            new.remove_header("Authorization")
        return new


class Fetcher:
    def __init__(self, module: AnsibleModule):
        self.m = module
        self.p = module.params
        self.opener = urllib.request.build_opener(TokenRedirectHandler)

    def fetch(self, path: str, target: str, size: int) -> int:
        """Bring `path` to `target` (appending to a partial file). Returns bytes transferred."""
        have = os.path.getsize(target) if os.path.exists(target) else 0
        if have > size:
            os.unlink(target)
            have = 0
        if have == size:
            return 0
        if self.p["source"] == "dir":
            src = os.path.join(self.p["source_dir"], path)
            if not os.path.isfile(src):
                self.m.fail_json(msg=f"{path} is missing from {self.p['source_dir']}")
            if self.p["consume"] and have == 0:
                os.rename(src, target)
                return size
            with open(src, "rb") as s, open(target, "ab") as t:
                s.seek(have)
                shutil.copyfileobj(s, t, CHUNK)
            return size - have
        url = self.p["base_url"].rstrip("/") + "/" + urllib.parse.quote(path)
        req = urllib.request.Request(url)
        if self.p.get("bearer_token"):
            req.add_header("Authorization", "Bearer " + self.p["bearer_token"])
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with self.opener.open(req, timeout=60) as r:
                if have and r.status != 206:  # server ignored the range: start over
                    have = 0
                    mode = "wb"
                else:
                    mode = "ab"
                with open(target, mode) as t:
                    shutil.copyfileobj(r, t, CHUNK)
        except urllib.error.HTTPError as e:
            self.m.fail_json(msg=f"fetching {url}: HTTP {e.code} {e.reason}; the model in place is unchanged")
        except (urllib.error.URLError, OSError) as e:
            self.m.fail_json(msg=f"fetching {url}: {e}; what arrived stays in staging and is resumed next run")
        return os.path.getsize(target) - have


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            revision=dict(type="str", required=True),
            files=dict(type="list", elements="dict", required=True),
            source=dict(type="str", choices=["http", "dir", "none"], required=True),
            base_url=dict(type="str"),
            bearer_token=dict(type="str", no_log=True),
            source_dir=dict(type="path"),
            consume=dict(type="bool", default=False),
            owner=dict(type="str", default="root"),
            group=dict(type="str", default="root"),
            verify=dict(type="str", choices=["stat", "full"], default="stat"),
            keep=dict(type="int", default=1),
            free_margin_bytes=dict(type="int", default=1 << 30),
        ),
        required_if=[("source", "http", ["base_url"]), ("source", "dir", ["source_dir"])],
        supports_check_mode=True,
    )
    p = module.params
    dest, revision = p["dest"], p["revision"]
    if "/" in revision or revision.startswith("."):
        module.fail_json(msg=f"revision {revision!r} is not a plain name")
    if p["source"] == "http" and p.get("bearer_token") and not token_allowed(p["base_url"], p["base_url"]):
        module.fail_json(msg=f"refusing to send the token to {p['base_url']}: only over https (plain http only "
                             "on loopback); nothing was changed")
    try:
        want = wanted_map(p["files"])
    except (KeyError, TypeError, ValueError) as e:
        module.fail_json(msg="files: each entry needs path, size and sha256 "
                             f"(or the hub's rfilename, size, blobId/lfs): {e}")
    for path in want:
        if path.startswith("/") or ".." in path.split("/"):
            module.fail_json(msg=f"files: {path!r} must be a relative path inside the model")
    try:
        uid = pwd.getpwnam(p["owner"]).pw_uid
        gid = grp.getgrnam(p["group"]).gr_gid
    except KeyError as e:
        module.fail_json(msg=f"owner/group: {e}")
    rev_dir = os.path.join(dest, revision)
    current = os.path.join(dest, "current")
    result = dict(changed=False, path=rev_dir, current=current, fetched=[], bytes_fetched=0)

    missing = revision_state(rev_dir, want, p["verify"]) if os.path.isdir(rev_dir) else sorted(want)
    if not missing:
        drift = ownership_drift(rev_dir, want, uid, gid)
        points_here = os.path.islink(current) and os.readlink(current) == revision
        if not drift and points_here:
            module.exit_json(**result)
        result.update(changed=True, fixed_ownership=drift, switched=not points_here)
        if not module.check_mode:
            for path in drift:
                full = os.path.join(rev_dir, path)
                os.chown(full, uid, gid)
                os.chmod(full, 0o440)
            switch(dest, revision)
        module.exit_json(**result)

    result.update(changed=True, missing=missing)
    if p["source"] == "none":
        module.fail_json(msg=f"{len(missing)} file(s) of {rev_dir} are missing or do not match the manifest: "
                             + ", ".join(missing[:10]), **result)
    if module.check_mode:
        module.exit_json(**result)

    staging = os.path.join(dest, f".staging-{revision}")
    os.makedirs(staging, exist_ok=True)
    reuse = known_good_copies(dest, want)
    need = 0
    for path in missing:
        part = os.path.join(staging, path)
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if want[path]["digest"] in reuse or (p["source"] == "dir" and p["consume"]):
            continue  # a hard link or a rename: no new space
        need += max(want[path]["size"] - have, 0)
    free = shutil.disk_usage(staging).free
    if need + p["free_margin_bytes"] > free:
        module.fail_json(msg=(f"not enough free disk in {dest}: {need / 2**30:.2f} GiB to fetch plus "
                              f"{p['free_margin_bytes'] / 2**30:.2f} GiB margin, {free / 2**30:.2f} GiB free; "
                              "nothing was fetched"), **result)

    fetcher = Fetcher(module)
    for path in sorted(want):
        target = os.path.join(staging, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        w = want[path]
        if path not in missing:  # verified in the current revision directory: hard link it
            if not os.path.exists(target):
                os.link(os.path.join(rev_dir, path), target)
            continue
        if os.path.exists(target) and matches(target, w):
            continue
        if w["digest"] in reuse and not os.path.exists(target):
            os.link(reuse[w["digest"]], target)
            continue
        result["bytes_fetched"] += fetcher.fetch(path, target, w["size"])
        result["fetched"].append(path)
        got, size = digest_of(target, w["digest"].split(":")[0]), os.path.getsize(target)
        if got != w["digest"] or size != w["size"]:
            os.unlink(target)
            module.fail_json(msg=(f"checksum mismatch for {path}: expected {w['digest']} ({w['size']} bytes), "
                                  f"got {got} ({size} bytes); the bad file was discarded and {current} "
                                  "is unchanged"), **result)

    entries = []
    for path in sorted(want):
        full = os.path.join(staging, path)
        os.chown(full, uid, gid)
        os.chmod(full, 0o440)
        entries.append({"path": path, "size": want[path]["size"], "digest": want[path]["digest"],
                        "sha256": digest_of(full).split(":")[1], "stat": stat_key(full)})
    for root, dirs, _ in os.walk(staging):
        for d in dirs + [""]:
            full = os.path.join(root, d)
            os.chown(full, 0, gid)
            os.chmod(full, 0o750)
    manifest_path = os.path.join(staging, MANIFEST)
    with open(manifest_path + ".tmp", "w") as f:
        json.dump({"revision": revision, "files": entries}, f, indent=1, sort_keys=True)
    os.replace(manifest_path + ".tmp", manifest_path)
    os.chown(manifest_path, uid, gid)
    os.chmod(manifest_path, 0o440)

    # A revision directory repaired in place (the one `current` may point at) is swapped with its
    # staging copy in one step where the kernel and filesystem can; else moved aside first, which
    # leaves it absent for the instant between the two renames.
    if os.path.isdir(rev_dir) and exchange(staging, rev_dir):
        switch(dest, revision)
        shutil.rmtree(staging)
    else:
        old = rev_dir + ".old"
        if os.path.isdir(rev_dir):
            os.rename(rev_dir, old)
        os.rename(staging, rev_dir)
        switch(dest, revision)
        if os.path.isdir(old):
            shutil.rmtree(old)
    result["pruned"] = prune(dest, revision, p["keep"])
    module.exit_json(**result)


def exchange(a: str, b: str) -> bool:
    """Swap two existing paths atomically (Linux renameat2 with RENAME_EXCHANGE). False, with nothing
    changed, where the C library, the kernel or the filesystem cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def switch(dest: str, revision: str) -> None:
    """Point dest/current at revision with an atomic rename of a new symlink."""
    tmp = os.path.join(dest, ".current.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(revision, tmp)
    os.replace(tmp, os.path.join(dest, "current"))
    os.chmod(dest, 0o750)


def prune(dest: str, revision: str, keep: int) -> list[str]:
    """Remove all but the `keep` most recent other revisions."""
    others = sorted((e for e in os.listdir(dest)
                     if not e.startswith(".") and e not in ("current", revision)
                     and os.path.isdir(os.path.join(dest, e))),
                    key=lambda e: os.stat(os.path.join(dest, e)).st_mtime, reverse=True)
    removed = others[keep:]
    for e in removed:
        shutil.rmtree(os.path.join(dest, e))
    return removed


if __name__ == "__main__":
    main()
