#!/usr/bin/env python3
"""ENTRYPOINT of the gateway image: `vgs-entrypoint COMMAND...`.

Compose mounts secrets with their owner and mode on the host (often root and 0600), which the gateway's user
cannot read. Started as root (the compose file does so), this copies each file named by a VGS_*_FILE variable
(VGS_API_KEYS_FILE) into a directory only the app user reads, points the variable at the copy, drops to that
user and runs the command. Started as any other user (the image's default, Kubernetes) it runs the command as
it is.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from pathlib import Path

APP_USER = "app"
PRIVATE_DIR = Path("/run/vgs-secrets")


def copy_secret_files(uid: int, gid: int) -> None:
    """Copies of the VGS_*_FILE files, owned by uid:gid and readable only by it; missing ones are left alone
    for the service to report."""
    for name, value in sorted(os.environ.items()):
        if not (name.startswith("VGS_") and name.endswith("_FILE") and value and os.path.isfile(value)):
            continue
        PRIVATE_DIR.mkdir(mode=0o700, exist_ok=True)
        os.chown(PRIVATE_DIR, uid, gid)
        copy = PRIVATE_DIR / name.removeprefix("VGS_").removesuffix("_FILE").lower()
        shutil.copyfile(value, copy)
        os.chown(copy, uid, gid)
        copy.chmod(0o400)
        os.environ[name] = str(copy)


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: vgs-entrypoint COMMAND [ARG...]")
    if os.getuid() == 0:
        app = pwd.getpwnam(APP_USER)
        copy_secret_files(app.pw_uid, app.pw_gid)
        os.setgroups([])
        os.setgid(app.pw_gid)
        os.setuid(app.pw_uid)
        os.environ.update(HOME=app.pw_dir, USER=APP_USER, LOGNAME=APP_USER)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
