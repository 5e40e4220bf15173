"""gpuprov-gateway serve | hash-key | audit-verify | audit-prune."""

from __future__ import annotations

import argparse
import logging
import sys

from gpuprov_gateway import audit
from gpuprov_gateway.config import ConfigError, load
from gpuprov_gateway.keys import generate_key, hash_key


def _serve(args: argparse.Namespace) -> int:
    from gpuprov_gateway.gateway import Gateway
    from gpuprov_gateway.server import serve

    try:
        cfg = load(args.config)
        Gateway(cfg, args.config)  # checks model dir, audit dir and key files up front
    except ConfigError as e:
        print(f"gpuprov-gateway: invalid configuration: {e}", file=sys.stderr)
        return 2
    if args.check:
        print("configuration is valid")
        return 0
    try:
        serve(cfg, args.config)
    except OSError as e:
        print(f"gpuprov-gateway: cannot listen: {e}", file=sys.stderr)
        return 1
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    if args.generate:
        key = generate_key()
        print(f"key:  {key}")
        print(f"hash: {hash_key(key)}")
        return 0
    key = sys.stdin.readline().strip()
    if not key:
        print("gpuprov-gateway: no key on standard input", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    res = audit.verify(args.dir)
    if res.ok:
        print(f"audit log OK: {res.lines} lines in {res.files} files")
        return 0
    print(f"audit log BROKEN at {res.problem}", file=sys.stderr)
    return 1


def _audit_prune(args: argparse.Namespace) -> int:
    removed = audit.prune(args.dir, args.retention_days)
    for name in removed:
        print(f"removed {name}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpuprov-gateway", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", required=True, help="YAML or JSON config file")
    s.add_argument("--check", action="store_true", help="only validate the config")
    s.set_defaults(fn=_serve)
    h = sub.add_parser("hash-key", help="read a key on stdin, print its sha256: hash")
    h.add_argument("--generate", action="store_true", help="make a new random key and its hash")
    h.set_defaults(fn=_hash_key)
    v = sub.add_parser("audit-verify", help="check the audit log's hash chain")
    v.add_argument("dir")
    v.set_defaults(fn=_audit_verify)
    r = sub.add_parser("audit-prune", help="delete audit files past the retention period")
    r.add_argument("dir")
    r.add_argument("--retention-days", type=int, default=180)
    r.set_defaults(fn=_audit_prune)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    args = parser().parse_args(argv)
    return int(args.fn(args))
